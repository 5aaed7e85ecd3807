"""Peak memory and time of ``portraitisr restore`` by image size and tile, next to the memory plan's estimate.

Each measurement restores one photo (skimage's astronaut resized to the size, saved as JPEG) in a fresh
subprocess, ``python -m portraitisr restore``, and reads that subprocess's peak resident memory from
``getrusage(RUSAGE_CHILDREN)`` in a wrapper process of its own; the estimate is the line the command prints for a
tiled image (``memory_plan.estimate_restore_memory``). This is where the constants of
``portraitisr/apis/memory_plan.py`` were fitted, and how the big-photo check of the docs is run:

    python tools/benchmarks/restore_memory.py --sizes 256x192 512x384 1000x750 --tiles auto 512
    python tools/benchmarks/restore_memory.py --sizes 6000x4000 --tiles auto --max-memory 8G     # minutes
    python tools/benchmarks/restore_memory.py --speed 256 512 768                 # CPU-seconds per megapixel

Options: ``--config`` (default the tiny OSEDiff debug config, random weights unless ``--checkpoint``),
``--scale`` (4), ``--threads`` (torch threads of the restore, default 2), ``--python`` (another checkout's
interpreter and ``PYTHONPATH`` to compare a before/after: ``--root /path/to/old/checkout``).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'configs' / 'debug' / 'osediff_tiny.py'
#: The wrapper: runs the command and prints the peak RSS of the child (kB on Linux) on its last stderr line.
_WRAPPER = ('import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); '
            'usage = resource.getrusage(resource.RUSAGE_CHILDREN); '
            'print("PEAK_RSS_KB", usage.ru_maxrss, "CPU_S", usage.ru_utime + usage.ru_stime, file=sys.stderr); '
            'sys.exit(code)')


def make_photo(path: Path, width: int, height: int) -> Path:
    """skimage's astronaut resized to ``width x height`` (bicubic), JPEG quality 95."""
    import cv2
    import skimage.data

    photo = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def measure(photo: Path, out: Path, args: argparse.Namespace, tile: str) -> dict:
    """Restore ``photo`` once in a subprocess: peak RSS (bytes), wall and CPU seconds (model building included),
    the printed estimate, the status."""
    root = Path(args.root).resolve() if args.root else ROOT
    command = [sys.executable, '-c', _WRAPPER, sys.executable, '-m', 'portraitisr', 'restore', str(photo), '-o',
               str(out), '--config', str(args.config), '--device', 'cpu', '--scale', str(args.scale)]
    if args.checkpoint:
        command += ['--checkpoint', str(args.checkpoint)]
    if tile != 'auto':
        command += ['--tile', tile]
    if args.max_memory:
        command += ['--max-memory', args.max_memory]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    start = time.time()
    if args.log:  # the command's progress bars and plan line, to watch a long run
        with open(args.log, 'a') as log:
            status = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True).returncode
        result = subprocess.CompletedProcess(command, status, '', Path(args.log).read_text())
    else:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    peak = re.search(r'PEAK_RSS_KB (\d+) CPU_S ([0-9.]+)', result.stderr)
    estimate = re.search(r'about ([0-9.]+) (GiB|MiB)', result.stderr)
    estimated = None
    if estimate:
        estimated = float(estimate.group(1)) * (2**30 if estimate.group(2) == 'GiB' else 2**20)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return dict(peak=int(peak.group(1)) * 1024 if peak else None, wall=wall, estimate=estimated,
                cpu=float(peak.group(2)) if peak else None, status=result.returncode)


def speed(args: argparse.Namespace) -> None:
    """CPU-seconds per output megapixel of the streamed restore, one thread, untiled and per tile size."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from portraitisr.apis.memory_plan import latent_tiling_for
    from portraitisr.apis.portrait_restorer import PortraitRestorer
    from portraitisr.apis.streamed_restore import RowSink, restore_streamed

    torch.set_num_threads(1)
    restorer = PortraitRestorer(str(args.config), checkpoint=args.checkpoint, device='cpu')

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    side = args.speed_side
    lq = torch.rand(1, 3, side // args.scale, side // args.scale)
    print('| output | tile | CPU-s per output MP |\n|---|---|---|')
    for tile in [None] + list(args.speed):
        sink = RowSink(side, side, np.uint16)
        start = cpu()
        restore_streamed(restorer.model, lq, args.scale, tile and latent_tiling_for(tile), sink)
        print(f'| {side}x{side} | {tile or "untiled"} | {(cpu() - start) / (side * side / 1e6):.2f} |', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', default=['256x192', '512x384'], help='input sizes WIDTHxHEIGHT')
    parser.add_argument('--tiles', nargs='+', default=['auto'], help="'auto' or --tile values (0: untiled)")
    parser.add_argument('--config', default=str(TINY))
    parser.add_argument('--checkpoint')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--max-memory', help='passed to --max-memory')
    parser.add_argument('--root', help='checkout whose portraitisr to run (default: this one)')
    parser.add_argument('--log', help='append each restore\'s stderr (progress, plan) to this file as it runs')
    parser.add_argument('--speed', nargs='*', type=int, help='measure CPU-seconds per MP for these tiles instead')
    parser.add_argument('--speed-side', type=int, default=768, help='output side of the --speed image')
    args = parser.parse_args()
    if args.speed is not None:
        speed(args)
        return
    print('| input | output | tile | peak RSS | estimate | wall s | CPU s | status |')
    print('|---|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split('x'))
            photo = make_photo(Path(tmp) / f'photo_{width}x{height}.jpg', width, height)
            for tile in args.tiles:
                result = measure(photo, Path(tmp) / f'out_{size}_{tile}', args, tile)
                gib = lambda v: f'{v / 2**30:.2f} GiB' if v else '-'  # noqa: E731
                print(f'| {width}x{height} | {width * args.scale}x{height * args.scale} | {tile} | '
                      f'{gib(result["peak"])} | {gib(result["estimate"])} | {result["wall"]:.0f} | '
                      f'{result["cpu"] or 0:.0f} | {result["status"]} |', flush=True)


if __name__ == '__main__':
    main()
