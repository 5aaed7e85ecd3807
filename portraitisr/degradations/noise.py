"""Per-sample Gaussian and Poisson noise of the Real-ESRGAN degradation (BasicSR ``degradations.py``).

Both functions take per-sample parameters and a ``torch.Generator`` on the image's device and return the
noisy image, clipped to [0, 1] when ``clip`` (Real-ESRGAN always uses ``clip=True, rounds=False``).

Differences from BasicSR's ``*_pt`` functions, none of which changes a sample's distribution:

* BasicSR draws ONE gray Gaussian pattern ``randn(H, W)`` for the whole batch (only its sigma is per
  sample); here every gray sample gets its own pattern (channel 0 of its own colour draw).
* BasicSR always computes the colour noise, and the gray noise for the whole batch when any sample is gray;
  here each sample only gets the noise it uses.
* ``sizes`` lets the images be a zero-padded canvas of different-size images: the Poisson level count
  then covers each sample's valid area only, as it would for the un-padded image.

Given the same underlying draws the results are bit-identical to BasicSR (tests check all-colour and
all-gray batches).
"""
from typing import Optional

import torch
from torch import Tensor

# torchvision ``rgb_to_grayscale`` weights, which BasicSR's Poisson gray noise uses (not kornia's 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def rgb_to_gray(img: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` luma with torchvision's weights (0.2989, 0.587, 0.114)."""
    r, g, b = img.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def valid_mask(sizes: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """``(B, 1, H, W)`` bool mask of each sample's top-left ``sizes[b] = (h, w)`` area of a canvas."""
    sizes = sizes.to(device)
    rows = torch.arange(height, device=device).view(1, -1, 1) < sizes[:, 0].view(-1, 1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1) < sizes[:, 1].view(-1, 1, 1)
    return (rows & cols).unsqueeze(1)


def _finish(out: Tensor, clip: bool) -> Tensor:
    return torch.clamp(out, 0, 1) if clip else out


def add_gaussian_noise(img: Tensor, sigma: Tensor, gray: Tensor, generator: Optional[torch.Generator] = None,
                       clip: bool = True) -> Tensor:
    """Adds white Gaussian noise with a per-sample standard deviation (BasicSR ``add_gaussian_noise_pt``).

    Args:
        img: ``(B, 3, H, W)`` in [0, 1].
        sigma: ``(B,)`` standard deviations in 8-bit units (the noise is ``N(0, 1) * sigma / 255``).
        gray: ``(B,)`` bool; gray samples get the same noise in all channels.
        generator: on ``img.device``; ``None`` uses the global generator.
        clip: clamp the result to [0, 1].

    Returns:
        ``(B, 3, H, W)``.
    """
    b = img.shape[0]
    std = torch.randn(img.shape, generator=generator, dtype=img.dtype, device=img.device)
    gray = gray.to(img.device).view(b, 1, 1, 1)
    std = torch.where(gray, std[:, :1], std)
    noise = std * sigma.to(device=img.device, dtype=img.dtype).view(b, 1, 1, 1) / 255.
    return _finish(img + noise, clip)


def _poisson_noise(img: Tensor, mask: Optional[Tensor], generator: Optional[torch.Generator]) -> Tensor:
    """Shot noise of one group of images, BasicSR's rule for the photon count.

    The image is rounded to 8-bit levels, the number of distinct levels ``n`` of each sample (over all its
    channels) gives ``vals = 2^ceil(log2 n)``, and the noise is ``Poisson(img * vals) / vals - img``.
    """
    b = img.shape[0]
    quantised = torch.clamp((img * 255.0).round(), 0, 255)
    img = quantised / 255.
    levels = quantised.long()
    if mask is not None:
        levels = torch.where(mask.expand_as(levels), levels, torch.full_like(levels, 256))
    present = torch.zeros(b, 257, dtype=torch.bool, device=img.device)
    present.scatter_(1, levels.view(b, -1), True)
    count = present[:, :256].sum(1).to(torch.float64).clamp(min=1)
    vals = (2 ** torch.ceil(torch.log2(count))).to(img.dtype).view(b, 1, 1, 1)
    return torch.poisson(img * vals, generator=generator) / vals - img


def add_poisson_noise(img: Tensor, scale: Tensor, gray: Tensor, generator: Optional[torch.Generator] = None,
                      clip: bool = True, sizes: Optional[Tensor] = None) -> Tensor:
    """Adds Poisson (shot) noise with a per-sample strength (BasicSR ``add_poisson_noise_pt``).

    Args:
        img: ``(B, 3, H, W)`` in [0, 1].
        scale: ``(B,)`` multiplier of the noise.
        gray: ``(B,)`` bool; gray samples draw the noise on the torchvision luma and add it to all channels.
        generator: on ``img.device``; ``None`` uses the global generator. Gray samples draw first.
        clip: clamp the result to [0, 1].
        sizes: optional ``(B, 2)`` valid sizes when ``img`` is a zero-padded canvas.

    Returns:
        ``(B, 3, H, W)``; the noise is added to the un-rounded ``img``.
    """
    b, _, h, w = img.shape
    mask = None if sizes is None else valid_mask(sizes, h, w, img.device)
    gray = gray.to(torch.bool).cpu()
    noise = torch.empty_like(img)
    for is_gray in (True, False):
        index = torch.nonzero(gray == is_gray).flatten()
        if not index.numel():
            continue
        index = index.to(img.device)
        group = img.index_select(0, index)
        group_mask = None if mask is None else mask.index_select(0, index)
        if is_gray:
            group_noise = _poisson_noise(rgb_to_gray(group), group_mask, generator).expand(-1, 3, h, w)
        else:
            group_noise = _poisson_noise(group, group_mask, generator)
        noise.index_copy_(0, index, group_noise)
    noise = noise * scale.to(device=img.device, dtype=img.dtype).view(b, 1, 1, 1)
    return _finish(img + noise, clip)
