"""Labelled before/after grids: one row per image, columns ``LQ | bicubic | restored | GT``.

The images come from folders or single files (``sample://NAME`` package photos work too) and are matched by file
stem, so the folder that ``tools/test.py --save-dir`` writes can be put next to its inputs directly::

    python tools/test.py configs/debug/blending_tiny.py --save-dir results/blending_tiny
    python tools/make_comparison_grid.py --restored results/blending_tiny \\
        --gt sample://astronaut sample://grace_hopper --gt-crop 384 --scale 4 \\
        --label 'bicubic + identity face restorer' --out grid.jpg

Without ``--lq`` the LQ is made from the GT by antialiased bicubic downscaling by ``--scale``, as
``BlendingDataPreprocessor`` does for GT-only test sets. The LQ column is enlarged with nearest neighbour (its pixels
stay visible); the bicubic column is the LQ upscaled by ``--scale`` with bicubic interpolation
(``align_corners=False``, as ``BicubicRestorer``), the naive baseline every restorer has to beat.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.datasets.image_folder_dataset import crop_flip_geometry, read_rgb  # noqa: E402
from portraitisr.datasets.sample_images import is_sample  # noqa: E402
from portraitisr.utils.image_io import list_images  # noqa: E402

HEADER_HEIGHT = 28  # pixels of the label strip above each column
GAP = 4  # white pixels between panels, so that neighbouring crops do not read as one picture


def collect_images(specs: Optional[Sequence[str]]) -> Dict[str, str]:
    """Folders, files and ``sample://NAME`` -> ``{file stem: path}`` (a folder contributes every image in it)."""
    found: Dict[str, str] = {}
    for spec in specs or []:
        if is_sample(spec):
            found[spec.split('://', 1)[1]] = spec
        elif osp.isdir(spec):
            found.update({path.stem: str(path) for path in list_images(spec)})
        elif osp.isfile(spec):
            found[osp.splitext(osp.basename(spec))[0]] = spec
        else:
            raise FileNotFoundError(f'{spec} is neither an image, a folder nor a sample://NAME photo')
    return found


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def _to_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].clamp(0, 1).permute(1, 2, 0).numpy()


def bicubic_downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """``H x W x 3`` in [0, 1] -> ``H/scale x W/scale x 3``, antialiased bicubic (``BlendingDataPreprocessor``)."""
    height, width = image.shape[:2]
    if height % scale or width % scale:
        raise ValueError(f'GT size {height}x{width} is not a multiple of --scale {scale}; use --gt-crop')
    lq = F.interpolate(_to_tensor(image), size=(height // scale, width // scale), mode='bicubic',
                       align_corners=False, antialias=True)
    return _to_array(lq)


def bicubic_upscale(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``h x w x 3`` in [0, 1] -> ``size[0] x size[1] x 3`` with bicubic interpolation, clamped to [0, 1]."""
    return _to_array(F.interpolate(_to_tensor(image), size=tuple(size), mode='bicubic', align_corners=False))


def _panel(image: np.ndarray, size: int, nearest: bool = False) -> Image.Image:
    """An ``H x W x 3`` float image as a PIL image ``size`` pixels high (aspect ratio kept)."""
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    width = max(1, round(pil.width * size / pil.height))
    return pil.resize((width, size), Image.NEAREST if nearest else Image.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def make_grid(rows: List[List[Optional[np.ndarray]]], labels: Sequence[str], panel_size: int = 256,
              nearest_columns: Sequence[int] = (0,)) -> Image.Image:
    """Paste ``rows`` (lists of ``H x W x 3`` float images in [0, 1], ``None`` for a missing cell) under ``labels``.

    Every panel is scaled to ``panel_size`` pixels high; columns in ``nearest_columns`` are enlarged with nearest
    neighbour (the LQ). Returns an RGB image of ``len(rows)`` rows plus a header strip with the column labels.
    """
    panels = [[None if image is None else _panel(image, panel_size, column in nearest_columns)
               for column, image in enumerate(row)] for row in rows]
    widths = [max((row[c].width for row in panels if row[c] is not None), default=panel_size)
              for c in range(len(labels))]
    grid = Image.new('RGB', (sum(widths) + GAP * (len(widths) - 1),
                             HEADER_HEIGHT + len(rows) * panel_size + GAP * (len(rows) - 1)), 'white')
    draw, font = ImageDraw.Draw(grid), _font(HEADER_HEIGHT - 10)
    x = 0
    for column, (label, width) in enumerate(zip(labels, widths)):
        text_width = draw.textlength(label, font=font)
        draw.text((x + max(0.0, (width - text_width) / 2), 4), label, fill='black', font=font)
        for r, row in enumerate(panels):
            if row[column] is not None:
                grid.paste(row[column], (x, HEADER_HEIGHT + r * (panel_size + GAP)))
        x += width + GAP
    return grid


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Labelled LQ | bicubic | restored | GT comparison grid')
    parser.add_argument('--restored', nargs='+', required=True, help='restored images or folders (one row each)')
    parser.add_argument('--gt', nargs='*', help='ground-truth images, folders or sample://NAME photos')
    parser.add_argument('--lq', nargs='*', help='LQ images or folders (default: made from the GT, see --scale)')
    parser.add_argument('--scale', type=int, default=4, help='restored size / LQ size')
    parser.add_argument('--gt-crop', type=int, help='centre-crop the GT to this square size first, as a test '
                        "dataset with crop_mode='center' does")
    parser.add_argument('--label', default='restored', help='label of the restored column (say what made it)')
    parser.add_argument('--panel-size', type=int, default=256, help='height of every panel in pixels')
    parser.add_argument('--out', required=True, help='output file (.jpg or .png)')
    parser.add_argument('--quality', type=int, default=85, help='JPEG quality')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    restored, gts, lqs = collect_images(args.restored), collect_images(args.gt), collect_images(args.lq)
    if not restored:
        raise SystemExit('no restored images found')
    rows = []
    for stem in sorted(restored):
        sr = read_rgb(restored[stem])
        gt = read_rgb(gts[stem]) if stem in gts else None
        if gt is not None and args.gt_crop:
            gt = crop_flip_geometry(gt, args.gt_crop, flip=False, crop_mode='center')[0]
        if stem in lqs:
            lq = read_rgb(lqs[stem])
        elif gt is not None:
            lq = bicubic_downscale(gt, args.scale)
        else:
            raise SystemExit(f'{stem}: no LQ (--lq) and no GT (--gt) to make one from')
        bicubic = bicubic_upscale(lq, (lq.shape[0] * args.scale, lq.shape[1] * args.scale))
        rows.append([lq, bicubic, sr, gt])
    labels = [f'LQ (x1/{args.scale})', f'bicubic x{args.scale}', args.label, 'GT']
    if all(row[3] is None for row in rows):
        rows, labels = [row[:3] for row in rows], labels[:3]
    grid = make_grid(rows, labels, panel_size=args.panel_size)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    if args.out.lower().endswith(('.jpg', '.jpeg')):
        grid.save(args.out, quality=args.quality, optimize=True)
    else:
        grid.save(args.out, optimize=True)
    print(f'{args.out}: {len(rows)} rows, {grid.width}x{grid.height}, {osp.getsize(args.out) / 1024:.0f} KB')


if __name__ == '__main__':
    main()
