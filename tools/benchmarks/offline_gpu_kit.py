"""Pack what ``tools/benchmark.py`` needs on a GPU machine that has PyTorch but no internet and no portraitisr deps.

Typical case: a cluster node (or a lent benchmark machine) whose image has torch, transformers, peft, accelerate,
safetensors and opencv, but no registry access. This writes a folder (default ``offline_gpu_kit/``, git-ignored)
that travels with the checkout:

* ``wheels/``: the packages the benchmark imports beyond such an image (diffusers, mmengine, kornia, lpips, ...),
  at the versions installed here, so the GPU run uses what CI tests;
* ``reference-wheels/`` and ``OSEDiff/`` (with ``--osediff DIR``): the environment of cswry/OSEDiff's inference
  (its pinned diffusers 0.25 and peft 0.9, with a transformers 4.x that has Python 3.12 wheels) and the three
  parts of its checkout that ``OSEDiff_test`` imports (``osediff.py``, ``models/``, ``my_utils/``), for the
  side-by-side comparison. They are copied for the run only and are never committed;
* ``run.sh``: installs the wheels with ``--no-index`` and runs one stage, writing its table and JSON to a folder.

Here (with network)::

    python tools/benchmarks/offline_gpu_kit.py --osediff ../OSEDiff

On the GPU machine, from the repository root (one stage per call keeps each under ten minutes)::

    bash offline_gpu_kit/run.sh benchmark OUT      # 512 / 1024 / 4096 restores + a training step
    bash offline_gpu_kit/run.sh reference OUT      # against cswry/OSEDiff at 512
    bash offline_gpu_kit/run.sh compile OUT        # the torch.compile rows

Extra arguments after ``OUT`` go to ``tools/benchmark.py`` (``--tiny --sizes 128`` checks the kit on a CPU).
"""
import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from typing import List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Imported by tools/benchmark.py (checked with sys.modules after a --tiny run) and missing from a stock PyTorch
# image; open_clip_torch only ships the CLIP BPE table the tokenizer is built from.
BENCHMARK_PACKAGES = ('diffusers', 'mmengine', 'addict', 'yapf', 'termcolor', 'platformdirs', 'kornia', 'kornia_rs',
                      'lpips', 'open_clip_torch')

# cswry/OSEDiff requirements.txt pins diffusers 0.25.0, peft 0.9.0 and transformers 4.28.1. transformers 4.28 needs
# tokenizers 0.13, which has no Python 3.12 wheels; 4.40.2 (tokenizers 0.19, abi3 wheels) gives the same CLIP text
# model. diffusers 0.25 imports huggingface_hub.cached_download, which hub 0.26 removed.
REFERENCE_REQUIREMENTS = ('diffusers==0.25.0', 'peft==0.9.0', 'transformers==4.40.2', 'tokenizers==0.19.1',
                          'huggingface_hub==0.25.2')

# What OSEDiff_test imports from its checkout (osediff.py: models.autoencoder_kl, models.unet_2d_condition,
# my_utils.vaehook -> my_utils.devices).
OSEDIFF_PARTS = ('osediff.py', 'models', 'my_utils')

RUN_SH = r'''#!/usr/bin/env bash
# Written by tools/benchmarks/offline_gpu_kit.py. From the repository root:
#   bash offline_gpu_kit/run.sh benchmark|reference|compile OUT [tools/benchmark.py arguments...]
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
stage=${1:?stage: benchmark, reference or compile}
out=${2:?output folder}
shift 2
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps "$kit"/wheels/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  python3 -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.version.cuda,
                                             "diffusers", diffusers.__version__)'
} > "$out/device_$stage.txt"
case "$stage" in
  benchmark)
    python3 tools/benchmark.py --json "$out/benchmark.json" "$@" 2>&1 | tee "$out/benchmark.md" ;;
  compile)
    python3 tools/benchmark.py --compile --sizes 512 1024 --train-size 0 --json "$out/compile.json" "$@" 2>&1 \
      | tee "$out/compile.md" ;;
  reference)
    # OSEDiff's pinned packages go first on its own PYTHONPATH only; torch, accelerate and safetensors come from
    # the machine's python. Our package is not on that path: the worker imports nothing of ours.
    rm -rf "$kit/reference-site"
    python3 -m pip install --quiet --no-index --no-deps --target "$kit/reference-site" "$kit"/reference-wheels/*.whl
    printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 "$@"\n' "$kit/reference-site" > "$kit/reference-python"
    chmod +x "$kit/reference-python"
    python3 tools/benchmark.py --sizes 512 --train-size 0 --osediff-reference "$kit/OSEDiff" \
      --reference-python "$kit/reference-python" --json "$out/reference.json" "$@" 2>&1 | tee "$out/reference.md" ;;
  *) echo "unknown stage $stage (benchmark, reference or compile)" >&2; exit 2 ;;
esac
'''


def pip_download(requirements: List[str], dest: str, python_version: str, platforms: List[str]) -> None:
    """Binary wheels only, no dependencies (the list is complete on purpose), for the target interpreter."""
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:', '--dest', dest,
           '--python-version', python_version, *(f'--platform={tag}' for tag in platforms), *requirements]
    subprocess.run(cmd, check=True)


def installed_pins(names) -> List[str]:
    pins = []
    for name in names:
        try:
            pins.append(f'{name}=={importlib.metadata.version(name)}')
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f'{name} is not installed here: install the project first (pip install -e .[dev]), '
                             'so the kit carries the versions CI tests') from None
    return pins


def copy_osediff(checkout: str, dest: str) -> None:
    missing = [part for part in OSEDIFF_PARTS if not os.path.exists(os.path.join(checkout, part))]
    if missing:
        raise SystemExit(f'{checkout} is not a cswry/OSEDiff checkout: {", ".join(missing)} missing')
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for part in OSEDIFF_PARTS:
        source = os.path.join(checkout, part)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(dest, part), ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(source, os.path.join(dest, part))


def folder_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.path.join(REPO_ROOT, 'offline_gpu_kit'), help='kit folder')
    parser.add_argument('--osediff', metavar='DIR', help='a cswry/OSEDiff checkout, for the reference stage')
    parser.add_argument('--python-version', default='3.12', help="the GPU machine's python (major.minor)")
    # pip does not widen an explicit platform to older manylinux tags: list every tag the machine accepts
    parser.add_argument('--platform', nargs='+', default=['manylinux_2_28_x86_64', 'manylinux_2_17_x86_64',
                                                         'manylinux2014_x86_64'], help='its wheel platform tags')
    args = parser.parse_args(argv)

    shutil.rmtree(os.path.join(args.out, 'wheels'), ignore_errors=True)
    pip_download(installed_pins(BENCHMARK_PACKAGES), os.path.join(args.out, 'wheels'), args.python_version,
                 args.platform)
    if args.osediff:
        shutil.rmtree(os.path.join(args.out, 'reference-wheels'), ignore_errors=True)
        pip_download(list(REFERENCE_REQUIREMENTS), os.path.join(args.out, 'reference-wheels'), args.python_version,
                     args.platform)
        copy_osediff(args.osediff, os.path.join(args.out, 'OSEDiff'))
    with open(os.path.join(args.out, 'run.sh'), 'w', encoding='utf-8') as f:
        f.write(RUN_SH)
    print(f'{args.out}: {folder_mib(args.out):.1f} MiB'
          + ('' if args.osediff else ' (no --osediff: the reference stage will not run)'))


if __name__ == '__main__':
    main()
