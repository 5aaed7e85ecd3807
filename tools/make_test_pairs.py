"""Make a test set from any photos: degraded inputs (``lq/``) and their ground truth (``gt/``), by a named preset.

    python tools/make_test_pairs.py PHOTOS_OR_SAMPLES... [-o work_dirs/pairs/NAME] [--preset osediff] [--seed 0]

Inputs are image files, folders, or the photos that ship with scikit-image and matplotlib (``sample://astronaut``,
``sample://grace_hopper``, ``sample://camera``). Each photo is centre-cropped to a multiple of ``--scale`` (and to
``--crop`` pixels square if given) and written as ``gt/NAME.png``; its degradation, ``--scale`` times smaller, as
``lq/NAME.png``: the input ``portraitisr restore`` takes, whose outputs ``tools/eval_folders.py`` scores against
``gt/`` by file name. ``pairs.json`` records the preset, its settings, the seed and the sizes, so the set can be
made again exactly (the degradation draws its random choices from ``--seed``, photo after photo in name order).

Presets (``--preset``):

* ``bicubic``: antialiased bicubic downsampling to 1/scale, rounded to 8-bit levels (the classic SR benchmark
  degradation, and that of the docs' comparison grids);
* ``realesrgan``, ``osediff``, ``seesr``: the Real-ESRGAN second-order pipelines of those papers' training
  recipes (``portraitisr/degradations/presets.py``), with the final resize to 1/scale (``resize_back``
  off) and no sharpening of the GT, so ``gt/`` holds the photo itself;
* ``codeformer_face``, ``codeformer_stage2``: the blind face degradations (blur, down/up-size, noise, JPEG) at the
  photo's size, then bicubic to 1/scale; meant for aligned face crops.

A photo that cannot be read is reported on one line and left out (exit status 1); a setup error (an unknown preset,
a missing input) is one line with exit status 2.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.utils.image_io import ImageReadError, list_images, read_image, write_image  # noqa: E402

BICUBIC = 'bicubic'
#: Presets whose degradation ends at 1/scale (Real-ESRGAN family); the others keep the photo's size.
RESIZING_PRESETS = ('realesrgan', 'osediff', 'seesr')


def parse_args(argv=None) -> argparse.Namespace:
    from portraitisr.degradations.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('inputs', nargs='+', metavar='PHOTO', help='image files, folders, or sample://NAME')
    parser.add_argument('-o', '--output', help='output folder (default: work_dirs/pairs/<preset>_x<scale>)')
    parser.add_argument('--preset', default=BICUBIC, choices=[BICUBIC] + sorted(PRESETS),
                        help='degradation (default: bicubic)')
    parser.add_argument('--scale', type=int, default=4, help='GT size / LQ size (default 4)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the degradation\'s random choices')
    parser.add_argument('--crop', type=int, help='centre-crop each photo to this square size first')
    parser.add_argument('--recursive', action='store_true', help='also take images in sub-folders')
    parser.add_argument('--max-pixels', type=int, help='refuse photos with more pixels than this (0: no limit)')
    return parser.parse_args(argv)


def collect(inputs: List[str], recursive: bool) -> List[Tuple[str, str]]:
    """``(source, output stem)`` per photo, in order; ``FileNotFoundError`` for a missing input."""
    from portraitisr.datasets.sample_images import SAMPLE_IMAGES, is_sample

    found = []
    for text in inputs:
        if is_sample(text):
            name = text.split('://', 1)[1]
            if name not in SAMPLE_IMAGES:
                raise FileNotFoundError(f'unknown sample image {text!r}; available: {sorted(SAMPLE_IMAGES)}')
            found.append((text, name))
        elif os.path.isdir(text):
            found += [(str(p), p.relative_to(text).with_suffix('').as_posix())
                      for p in list_images(text, recursive=recursive)]
        elif os.path.isfile(text):
            found.append((text, Path(text).stem))
        else:
            raise FileNotFoundError(f'input {text} does not exist')
    stems = [stem for _, stem in found]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise FileNotFoundError(f'several inputs would be named {", ".join(duplicates)}: give them separately')
    return found


def read_photo(source: str, max_pixels: Optional[int]) -> np.ndarray:
    from portraitisr.datasets.sample_images import is_sample, load_sample_image

    return load_sample_image(source) if is_sample(source) else read_image(source, max_pixels=max_pixels).rgb


def crop_for(rgb: np.ndarray, scale: int, crop: Optional[int]) -> np.ndarray:
    """Centre crop to ``crop`` square (if given and smaller) and to multiples of ``scale``."""
    h, w = rgb.shape[:2]
    th, tw = (min(crop, h), min(crop, w)) if crop else (h, w)
    th, tw = th // scale * scale, tw // scale * scale
    if th == 0 or tw == 0:
        raise ValueError(f'{w}x{h} is smaller than the scale {scale}')
    top, left = (h - th) // 2, (w - tw) // 2
    return rgb[top:top + th, left:left + tw]


class Degrader:
    """GT ``H x W x 3`` float in [0, 1] -> LQ ``H/scale x W/scale x 3`` on 8-bit levels, by preset."""

    def __init__(self, preset: str, scale: int, seed: int) -> None:
        self.preset, self.scale = preset, scale
        self.settings: dict = dict(preset=preset, scale=scale, seed=seed)
        self.module = None
        if preset != BICUBIC:
            from portraitisr.degradations.presets import build_degradation, preset_config

            overrides = dict(seed=seed)
            if preset in RESIZING_PRESETS:
                overrides.update(scale=scale, resize_back=False, use_usm=False)
            self.module = build_degradation(preset, **overrides)
            self.settings['degradation'] = dict(preset_config(preset), **overrides)

    def __call__(self, gt: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(gt.transpose(2, 0, 1)))[None].float()
        size = (x.shape[-2] // self.scale, x.shape[-1] // self.scale)
        if self.module is not None:
            with torch.no_grad():
                x = self.module(x)['lq'].float()
        if x.shape[-2:] != size:  # bicubic, and the same-size face degradations
            x = F.interpolate(x, size=size, mode='bicubic', align_corners=False, antialias=True)
        return np.round(x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255) / 255


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scale < 1:
        print('make_test_pairs: --scale must be at least 1', file=sys.stderr)
        return 2
    output = Path(args.output or os.path.join('work_dirs', 'pairs', f'{args.preset}_x{args.scale}'))
    try:
        photos = collect(args.inputs, args.recursive)
        degrade = Degrader(args.preset, args.scale, args.seed)
        output.mkdir(parents=True, exist_ok=True)
    except (FileNotFoundError, KeyError, ImportError, OSError) as error:
        print(f'make_test_pairs: {error.args[0] if isinstance(error, KeyError) else error}', file=sys.stderr)
        return 2
    pairs, failed = [], 0
    for source, stem in photos:
        try:
            gt = crop_for(read_photo(source, args.max_pixels), args.scale, args.crop)
            lq = degrade(gt)
            write_image(output / 'gt' / f'{stem}.png', gt)
            write_image(output / 'lq' / f'{stem}.png', lq)
        except (ImageReadError, ValueError, OSError) as error:
            failed += 1
            print(f'skipped {source}: {str(error).splitlines()[0]}', file=sys.stderr)
            continue
        pairs.append(dict(name=f'{stem}.png', source=source, gt_size=list(gt.shape[1::-1]),
                          lq_size=list(lq.shape[1::-1])))
    with open(output / 'pairs.json', 'w') as f:
        json.dump(dict(degradation=degrade.settings, crop=args.crop, pairs=pairs), f, indent=1, default=list)
    print(f'{len(pairs)} of {len(photos)} pairs written to {output}/lq and {output}/gt')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
