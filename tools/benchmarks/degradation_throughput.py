"""Throughput of the Real-ESRGAN degradation (``osediff`` preset, GT -> LQ), in images per second.

Three ways of degrading the same GT crops:

* ``batched``: :class:`RealESRGANDegradation` on a whole batch (every choice drawn per sample);
* ``per-sample``: the same module called with batches of one, in a Python loop;
* ``basicsr``: OSEDiff's ``RealESRGAN_degradation.degrade_process`` style - numpy kernels from
  ``basicsr.data.degradations`` and BasicSR's torch steps, one image at a time (needs
  ``pip install --no-deps basicsr-fixed==1.4.2``; skipped without it).

On the CPU, and on CUDA when available::

    python tools/benchmarks/degradation_throughput.py                  # 512 x 512, batch 16
    python tools/benchmarks/degradation_throughput.py --size 256 --images 64 --devices cpu
"""
import argparse
import math
import os
import random
import sys
import time
from typing import Callable, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from portraitisr.degradations import build_degradation, preset_config  # noqa: E402


def _gt_crops(n: int, size: int) -> torch.Tensor:
    """``n`` random ``size x size`` crops of real photos (skimage samples), else random images."""
    try:
        from skimage import data
        photos = [data.astronaut(), data.coffee(), data.chelsea()]
    except ImportError:
        return torch.rand(n, 3, size, size)
    gen = np.random.default_rng(0)
    crops = []
    for i in range(n):
        photo = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1).float() / 255
        if min(photo.shape[1:]) < size:
            photo = F.interpolate(photo[None], scale_factor=size / min(photo.shape[1:]) + 1e-3,
                                  mode='bicubic', align_corners=False)[0].clamp(0, 1)
        top = int(gen.integers(0, photo.shape[1] - size + 1))
        left = int(gen.integers(0, photo.shape[2] - size + 1))
        crops.append(photo[:, top:top + size, left:left + size])
    return torch.stack(crops)


def basicsr_per_sample(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """OSEDiff's per-image pipeline, written with BasicSR's functions (no USM, LQ resized back)."""
    from basicsr.data.degradations import (circular_lowpass_kernel, random_add_gaussian_noise_pt,
                                           random_add_poisson_noise_pt, random_mixed_kernels)
    from basicsr.utils import DiffJPEG
    from basicsr.utils.img_process_util import filter2D

    opt, scale = preset_config('osediff'), 4
    jpeger = DiffJPEG(differentiable=False).to(device)
    sizes = [2 * v + 1 for v in range(3, 11)]
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    modes = ['area', 'bilinear', 'bicubic']

    def kernel(suffix: str) -> torch.Tensor:
        size = random.choice(sizes)
        if np.random.uniform() < opt['sinc_prob' + suffix]:
            omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
            k = circular_lowpass_kernel(omega, size, pad_to=False)
        else:
            k = random_mixed_kernels(list(opt['kernel_list' + suffix]), list(opt['kernel_prob' + suffix]), size,
                                     opt['blur_sigma' + suffix], opt['blur_sigma' + suffix], [-math.pi, math.pi],
                                     opt['betag_range' + suffix], opt['betap_range' + suffix], noise_range=None)
        pad = (21 - size) // 2
        return torch.FloatTensor(np.pad(k, ((pad, pad), (pad, pad))))[None].to(device)

    def resize_scale(suffix: str) -> float:
        updown = random.choices(['up', 'down', 'keep'], opt['resize_prob' + suffix])[0]
        if updown == 'up':
            return np.random.uniform(1, opt['resize_range' + suffix][1])
        return np.random.uniform(opt['resize_range' + suffix][0], 1) if updown == 'down' else 1

    def noise(out: torch.Tensor, suffix: str) -> torch.Tensor:
        if np.random.uniform() < opt['gaussian_noise_prob' + suffix]:
            return random_add_gaussian_noise_pt(out, sigma_range=opt['noise_range' + suffix], clip=True,
                                                rounds=False, gray_prob=opt['gray_noise_prob' + suffix])
        return random_add_poisson_noise_pt(out, scale_range=opt['poisson_scale_range' + suffix],
                                           gray_prob=opt['gray_noise_prob' + suffix], clip=True, rounds=False)

    def jpeg(out: torch.Tensor, quality_range) -> torch.Tensor:
        return jpeger(torch.clamp(out, 0, 1), quality=out.new_zeros(1).uniform_(*quality_range))

    @torch.no_grad()
    def degrade(gt: torch.Tensor) -> torch.Tensor:
        kernel1, kernel2 = kernel(''), kernel('2')
        if np.random.uniform() < opt['final_sinc_prob']:
            sinc = torch.FloatTensor(circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi),
                                                             random.choice(sizes), pad_to=21))[None].to(device)
        else:
            sinc = pulse[None].to(device)
        h, w = gt.shape[2:]
        out = filter2D(gt, kernel1)
        out = F.interpolate(out, scale_factor=resize_scale(''), mode=random.choice(modes))
        out = jpeg(noise(out, ''), opt['jpeg_range'])
        if np.random.uniform() < opt['second_blur_prob']:
            out = filter2D(out, kernel2)
        s = resize_scale('2')
        out = F.interpolate(out, size=(int(h / scale * s), int(w / scale * s)), mode=random.choice(modes))
        out = noise(out, '2')
        if np.random.uniform() < 0.5:
            out = filter2D(F.interpolate(out, size=(h // scale, w // scale), mode=random.choice(modes)), sinc)
            out = jpeg(out, opt['jpeg_range2'])
        else:
            out = jpeg(out, opt['jpeg_range2'])
            out = filter2D(F.interpolate(out, size=(h // scale, w // scale), mode=random.choice(modes)), sinc)
        out = F.interpolate(out, size=(h, w), mode=random.choice(modes))
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.

    return degrade


def _time(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times: List[float] = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512, help='GT size (square)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--images', type=int, default=32, help='images per timed run (a multiple of the batch)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    gts_cpu = _gt_crops(args.images, args.size)
    rows = []
    for name in args.devices:
        device = torch.device(name)
        gts = gts_cpu.to(device)
        deg = build_degradation('osediff', seed=0).to(device)
        batches = [gts[i:i + args.batch_size] for i in range(0, args.images, args.batch_size)]
        rows.append((name, f'batched (B={args.batch_size})',
                     _time(lambda: [deg(b) for b in batches], device, args.repeats)))
        rows.append((name, 'per-sample (B=1 loop)',
                     _time(lambda: [deg(gts[i:i + 1]) for i in range(args.images)], device, args.repeats)))
        try:
            reference = basicsr_per_sample(device)
        except ImportError:
            print('basicsr not installed: skipping the BasicSR per-sample row')
        else:
            rows.append((name, 'basicsr per-sample (OSEDiff style)',
                         _time(lambda: [reference(gts[i:i + 1]) for i in range(args.images)], device, args.repeats)))
    print(f'\nosediff preset, GT {args.size}x{args.size}, {args.images} images per run, '
          f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads')
    print(f'{"device":<8}{"method":<38}{"images/s":>10}{"ms/image":>10}')
    for device, method, seconds in rows:
        print(f'{device:<8}{method:<38}{args.images / seconds:>10.2f}{1000 * seconds / args.images:>10.1f}')


if __name__ == '__main__':
    main()
