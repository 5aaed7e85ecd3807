"""Restored folders for study tests: real face photos (skimage's astronaut, matplotlib's Grace Hopper) as the ground
truth, and per "method" a different, deterministic loss of quality (blur, noise, blocky), so that the images look
like a study's and differ between methods."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from portraitisr.utils.image_io import write_image

#: Method names the page must never show (distinctive, so that a search for them cannot hit other words).
METHODS = ('osediffzz', 'pisasrzz', 'headsupzz')


def face_photos() -> list:
    """Whole photos with one face each, float RGB in [0, 1]."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    with Image.open(cbook.get_sample_data('grace_hopper.jpg')) as im:
        grace = np.asarray(im.convert('RGB'), dtype=np.float32) / 255
    return [data.astronaut().astype(np.float32) / 255, grace]


#: Square face regions (x, y, side) of the two photos, for small items that still show a face.
_FACES = [(150, 20, 200), (130, 60, 260)]


def _degrade(gt: np.ndarray, method: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if method % 3 == 0:
        out = cv2.GaussianBlur(gt, (0, 0), 1.5)
    elif method % 3 == 1:
        out = gt + rng.normal(0, 0.04, gt.shape).astype(np.float32)
    else:
        h, w = gt.shape[:2]
        out = cv2.resize(cv2.resize(gt, (w // 4, h // 4), interpolation=cv2.INTER_AREA), (w, h),
                         interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0, 1)


def make_restored_folders(root: Path, count: int = 6, size: int = 96, methods: Sequence[str] = METHODS,
                          whole_photos: bool = False) -> Tuple[Dict[str, Path], Path]:
    """``count`` items (faces cut from the photos at shifted positions, ``size`` px) written to ``root/gt`` and
    ``root/<method>``; returns ``({method: folder}, gt folder)``. ``whole_photos``: the two uncropped photos."""
    photos = face_photos()
    gt_dir = root / 'gt'
    folders = {m: root / m for m in methods}
    items = []
    if whole_photos:
        items = [(f'photo{i}', photo) for i, photo in enumerate(photos)]
    else:
        for i in range(count):
            x, y, side = _FACES[i % 2]
            shift = 6 * (i // 2)
            crop = photos[i % 2][y + shift:y + shift + side, x + shift:x + shift + side]
            items.append((f'{i:04d}', cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)))
    for index, (name, gt) in enumerate(items):
        write_image(gt_dir / f'{name}.png', gt)
        for k, m in enumerate(methods):
            write_image(folders[m] / f'{name}.png', _degrade(gt, k, seed=index * 31 + k))
    return folders, gt_dir
