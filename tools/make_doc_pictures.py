"""The pictures of the docs, made from the tiny debug models and the package photos (nothing drawn by hand).

For each method (the tiny OSEDiff and HeadsUp debug configs with their 40-iteration checkpoints, and the tiny
blending baseline, which needs none) it restores the same two test pairs and writes, under ``--out-dir``:

* ``<method>_grid.jpg``: LQ | bicubic | the method's output | GT, one row per photo;
* ``<method>_faces.jpg``: the same columns cropped to the face (found by dlib's HOG detector on the GT).

The pairs are ``tools/make_test_pairs.py``'s bicubic x4 pairs of skimage's astronaut (512 x 512) and
matplotlib's Grace Hopper (600 x 512). The pictures are small JPEGs (160-pixel panels, quality 70; about 300 KB in all):

    python tools/train.py configs/debug/osediff_tiny.py
    python tools/train.py configs/debug/headsup_tiny.py
    python tools/make_doc_pictures.py            # reads work_dirs/{osediff,headsup}_tiny/iter_40.pth

A method whose checkpoint is missing is skipped with a line saying how to make it.
"""
import argparse
import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.utils.image_io import read_image  # noqa: E402

PHOTOS = ('sample://astronaut', 'sample://grace_hopper')
#: method -> (config, default checkpoint or None, label of its column)
METHODS = {
    'osediff_tiny': ('configs/debug/osediff_tiny.py', 'work_dirs/osediff_tiny/iter_40.pth', 'OSEDiff tiny (40 it)'),
    'headsup_tiny': ('configs/debug/headsup_tiny.py', 'work_dirs/headsup_tiny/iter_40.pth', 'HeadsUp tiny (40 it)'),
    'blending_tiny': ('configs/debug/blending_tiny.py', None, 'bicubic + face paste'),
}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def face_box(gt: np.ndarray, detector) -> Optional[tuple]:
    """A square ``(x0, y0, side)`` around the largest face of ``gt`` (1.6 times its box, inside the image)."""
    faces = detector.detect(gt)[0]
    if not len(faces):
        return None
    x1, y1, x2, y2 = faces.boxes[np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0]))]
    side = int(min(1.6 * max(x2 - x1, y2 - y1), *gt.shape[:2]))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0 = int(np.clip(cx - side / 2, 0, gt.shape[1] - side))
    y0 = int(np.clip(cy - side / 2, 0, gt.shape[0] - side))
    return x0, y0, side


def crop(image: np.ndarray, box: tuple, scale: float = 1.0) -> np.ndarray:
    x0, y0, side = (int(round(v * scale)) for v in box)
    return image[y0:y0 + side, x0:x0 + side]


def save_jpeg(picture, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=quality, optimize=True)
    print(f'{path}: {picture.width}x{picture.height}, {path.stat().st_size / 1024:.0f} KB')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='docs/images', help='where the JPEGs go (default docs/images)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--checkpoint', action='append', default=[], metavar='METHOD=PATH',
                        help='checkpoint of a method instead of work_dirs/<method>/iter_40.pth')
    parser.add_argument('--panel-size', type=int, default=160)
    parser.add_argument('--quality', type=int, default=70)
    args = parser.parse_args()
    checkpoints = dict(item.split('=', 1) for item in args.checkpoint)

    import torch

    from portraitisr.apis.portrait_restorer import PortraitRestorer, UntrainedModelWarning
    from portraitisr.face.detection.dlib_detector import DlibFaceDetector

    torch.manual_seed(0)
    grid_tool, pairs_tool = _load_tool('make_comparison_grid'), _load_tool('make_test_pairs')
    out_dir = Path(args.out_dir)
    detector = DlibFaceDetector(model='hog', upsample_times=1)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / 'pairs'
        if pairs_tool.main(list(PHOTOS) + ['-o', str(pairs)]) != 0:
            return 1
        names = sorted(p.name for p in (pairs / 'gt').iterdir())
        gts = {n: read_image(pairs / 'gt' / n).rgb for n in names}
        lqs = {n: read_image(pairs / 'lq' / n).rgb for n in names}
        boxes = {n: face_box(gts[n], detector) for n in names}
        status = 0
        for method in args.methods:
            config, default_checkpoint, label = METHODS[method]
            checkpoint = checkpoints.get(method, default_checkpoint)
            if checkpoint is not None and not Path(checkpoint).is_file():
                print(f'{method}: skipped, no checkpoint {checkpoint} (python tools/train.py {config})',
                      file=sys.stderr)
                status = 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UntrainedModelWarning)  # the captions say how long they trained
                restorer = PortraitRestorer(str(ROOT / config), checkpoint=checkpoint, device='cpu')
            rows: List[List[np.ndarray]] = []
            face_rows: List[List[np.ndarray]] = []
            for name in names:
                lq, gt = lqs[name], gts[name]
                output = restorer.restore_array(lq).rgb
                bicubic = grid_tool.bicubic_upscale(lq, gt.shape[:2])
                rows.append([lq, bicubic, output, gt])
                if boxes[name] is not None:
                    box = boxes[name]
                    face_rows.append([crop(lq, box, 1 / 4), crop(bicubic, box), crop(output, box), crop(gt, box)])
            labels = ['LQ (x1/4)', 'bicubic x4', label, 'GT']
            save_jpeg(grid_tool.make_grid(rows, labels, panel_size=args.panel_size), out_dir / f'{method}_grid.jpg',
                      args.quality)
            if face_rows:
                save_jpeg(grid_tool.make_grid(face_rows, labels, panel_size=args.panel_size),
                          out_dir / f'{method}_faces.jpg', args.quality)
    total = sum(p.stat().st_size for p in out_dir.glob('*.jpg'))
    print(f'{out_dir}: {total / 1024:.0f} KB of JPEG pictures')
    return status


if __name__ == '__main__':
    sys.exit(main())
