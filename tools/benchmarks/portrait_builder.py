"""Throughput and peak memory of the PortraitSR-4K builder's scan (stage 1) on generated 4K photos.

Each photo is 3840 x 2880 (aspect 1.33, inside the paper's 0.6-1.6): a smooth random background with one or two
real faces pasted at a size that passes the 64 px eye-distance rule (skimage's astronaut, matplotlib's Grace
Hopper). It reports photos per second per worker and the peak resident memory of the main process and of the
largest worker (``ru_maxrss``), for each worker count:

    python tools/benchmarks/portrait_builder.py --images 1000 --workers 1 2 4
    python tools/benchmarks/portrait_builder.py --images 40 --workers 1 2      # a quick look
"""
import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from portraitisr.datasets.builder import ScanConfig, load_records, scan_images  # noqa: E402

WIDTH, HEIGHT = 3840, 2880


def _faces() -> list:
    import cv2
    import skimage.data
    from matplotlib import cbook

    astronaut = skimage.data.astronaut()[0:300, 120:360]
    with cbook.get_sample_data('grace_hopper.jpg') as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return [astronaut, hopper[40:440, 60:460]]


def generate(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEG photos of 3840 x 2880 with one or two pasted faces each."""
    import cv2

    rng = np.random.default_rng(seed)
    faces = _faces()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        low = rng.uniform(40, 215, size=(9, 12, 3)).astype(np.float32)
        photo = cv2.resize(low, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        for k in range(1 + index % 2):
            face = faces[(index + k) % len(faces)]
            scale = rng.uniform(2.0, 3.0)
            face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            y = int(rng.integers(0, HEIGHT - face.shape[0]))
            x = int(k * WIDTH // 2 + rng.integers(0, WIDTH // 2 - face.shape[1]))
            photo[y:y + face.shape[0], x:x + face.shape[1]] = face
        cv2.imwrite(str(folder / f'{index:05d}.jpg'), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1000)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--work-dir', help='keep the photos and outputs here (default: a temporary folder)')
    args = parser.parse_args()

    root = Path(args.work_dir or tempfile.mkdtemp(prefix='builder_bench_'))
    photos = root / 'photos'
    if len(list(photos.glob('*.jpg'))) < args.images:
        start = time.perf_counter()
        generate(photos, args.images)
        print(f'generated {args.images} photos of {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f} s')
    print(f'{"workers":>7}  {"photos/s":>9}  {"per worker":>10}  {"faces":>6}  {"main RSS MiB":>12}  '
          f'{"worker RSS MiB":>14}')
    for workers in args.workers:
        out = root / f'out_w{workers}'
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        records = scan_images(photos, out, ScanConfig(), workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        faces = sum(len(r.get('faces') or []) for r in load_records(records))
        main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rate = args.images / elapsed
        print(f'{workers:>7}  {rate:>9.2f}  {rate / workers:>10.2f}  {faces:>6}  {main_rss:>12.0f}  '
              f'{child_rss if workers > 1 else main_rss:>14.0f}')
    if not args.work_dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
