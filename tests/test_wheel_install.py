"""A wheel built from the checkout works where no checkout is: installed into a fresh virtual environment and run in
an empty folder, ``portraitisr`` lists the model zoo, copies a packaged config, trains a debug config by name and
restores the sample portraits with the checkpoint it trained (issue 18, item 6).

Offline: the wheel is built without build isolation and installed without its dependencies, which the virtual
environment sees from this one (``--system-site-packages``). About 70 s on 2 CPU cores: the wheel builds and
installs in about 10 s; most of the rest is starting the tiny OSEDiff config (with LPIPS-VGG) to train it for two
iterations without validation, and again to restore two small photos.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from portraitisr.datasets.sample_images import load_sample_image
from portraitisr.utils.image_io import read_image_size, write_image
from tests.helpers.data_files import REPO_ROOT

#: The photos of ``sample://portraits`` (portraitisr/datasets/manifests/sample_portraits.jsonl), shipped with
#: scikit-image and matplotlib.
SAMPLE_PORTRAITS = ('astronaut', 'grace_hopper')
#: Input width of the restored photos: small, so restoring takes about a second each.
INPUT_WIDTH = 48


def _run(args, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f'{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def _clean_copy(target: Path) -> Path:
    """The files git would commit (tracked and new, without what .gitignore names: no build/, work_dirs/, caches),
    copied into ``target``."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO_ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split('\0')
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_wheel_trains_and_restores_outside_the_checkout(tmp_path):
    if shutil.which('git') is None or not (REPO_ROOT / '.git').exists():
        pytest.fail('the wheel is built from a clean copy of the git checkout; run the tests in one')
    source = _clean_copy(tmp_path / 'source')
    assert not (source / 'portraitisr' / '.mim').exists()
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', '-w',
          tmp_path / 'dist', source], tmp_path, dict(os.environ))
    wheel, = (tmp_path / 'dist').glob('portraitisr-*.whl')
    venv = tmp_path / 'venv'
    _run([sys.executable, '-m', 'venv', '--system-site-packages', venv], tmp_path, dict(os.environ))
    bin_dir = venv / ('Scripts' if os.name == 'nt' else 'bin')
    python, command = bin_dir / 'python', bin_dir / 'portraitisr'
    _run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', wheel], tmp_path, dict(os.environ))

    work = tmp_path / 'empty'  # no configs/ here or above it: only the installed package has them
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(HF_HUB_OFFLINE='1', OMP_NUM_THREADS=env.get('OMP_NUM_THREADS', '2'))

    models = _run([command, 'models'], work, env)
    assert 'osediff_sd21' in models.stdout and 'headsup_sd21' in models.stdout

    assert _run([command, 'config', 'osediff_tiny', '--out', 'tiny.py'], work, env).stdout.strip() == \
        'debug/osediff_tiny.py -> tiny.py'

    # the imported package is the installed one, its configs the wheel's copy; the standalone copy loads to the
    # packaged config, and every model-zoo name has its config in the package
    check = ('import json, portraitisr\n'
             'from mmengine.config import Config\n'
             'from portraitisr.apis import model_zoo\n'
             'from portraitisr.apis.config_location import configs_root, resolve_config\n'
             'packaged = Config.fromfile(str(resolve_config("osediff_tiny"))).to_dict()\n'
             'print(json.dumps(dict(package=portraitisr.__file__, configs=str(configs_root()),\n'
             '    same=Config.fromfile("tiny.py").to_dict() == packaged,\n'
             '    zoo=[str(resolve_config(name)) for name in model_zoo.load_index().models])))\n')
    facts = json.loads(_run([python, '-c', check], work, env).stdout.strip().splitlines()[-1])
    package = Path(facts['package'])
    assert venv.resolve() in package.resolve().parents and REPO_ROOT not in package.resolve().parents, package
    assert Path(facts['configs']) == package.parent / '.mim' / 'configs'
    assert facts['same'] and all(Path(p).is_file() and Path(facts['configs']) in Path(p).parents
                                 for p in facts['zoo'])

    # train the packaged debug config by name: two iterations, a checkpoint at the second, no validation
    _run([command, 'train', 'osediff_tiny', '--work-dir', 'run', '--cfg-options', 'train_cfg.max_iters=2',
          'train_cfg.val_begin=3', 'default_hooks.checkpoint.interval=2'], work, env)
    checkpoint = work / 'run' / 'iter_2.pth'
    assert checkpoint.is_file()

    photos = work / 'photos'
    for name in SAMPLE_PORTRAITS:
        rgb = load_sample_image(f'sample://{name}')
        height = round(rgb.shape[0] * INPUT_WIDTH / rgb.shape[1])
        small = cv2.resize(rgb, (INPUT_WIDTH, height), interpolation=cv2.INTER_AREA)
        write_image(photos / f'{name}.png', np.clip(small, 0, 1))
    restored = _run([command, 'restore', 'photos', '-o', 'out', '--config', 'osediff_tiny', '--checkpoint',
                     checkpoint, '--device', 'cpu'], work, env)
    assert f'{len(SAMPLE_PORTRAITS)} of {len(SAMPLE_PORTRAITS)} images restored' in restored.stdout
    for name in SAMPLE_PORTRAITS:
        width, height = read_image_size(photos / f'{name}.png')
        assert read_image_size(work / 'out' / f'{name}.png') == (4 * width, 4 * height)  # the tiny model's x4
