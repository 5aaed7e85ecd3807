"""Restore one photo with a one-step SD model without ever holding it whole in float32 at the output size.

``OneStepRestorer.restore`` takes the LQ already upscaled to the output size and returns the whole restoration:
for a 6000 x 4000 photo at x4 that is a 24000 x 16000 float32 image (4.6 GB) before the model even starts, and
several more of its size in padding, ``2x - 1``, the blended decoder output, the colour fix and the conversions to
numpy (15.6 GB measured, see ``docs/command_line.md``). Here the same computation runs with the full-size
images replaced by what the tiles need:

* the input is a :class:`UpscaledImage`: each encoder tile is upscaled from its part of the small LQ (plus the
  bicubic kernel's reach), giving the values of the whole-image upscale up to float rounding;
* the VAE decoder's output arrives in rows (:func:`~portraitisr.models.backbones.latent_tiling.tiled_vae_decode_rows`)
  that a :class:`RowSink` stores straight away in the caller's output array (uint16 for files, float32 in memory);
* the colour fix (OSEDiff's AdaIN, :mod:`portraitisr.models.algorithms.color_fix`) needs the mean and standard
  deviation of the whole restoration and of the upscaled LQ: the sink accumulates the first while rows arrive, the
  second is summed over :class:`UpscaledImage` rows, and the fix, a per-channel affine map, is applied to the stored
  rows at the end.

Only the latents (``4 x H/8 x W/8``) and one tile row of activations exist whole. The maths is the one of
``OneStepSD.forward`` (encode, ``unet_input``, ``predict_eps``, ``one_step``, decode) and
``OneStepRestorer.restore`` (reflect padding, prompt, colour fix); ``tests/test_apis/test_streamed_restore.py``
checks the result against ``model.restore`` with the same tiling. Models whose conditions need the whole upscaled image
(HeadsUp with a reference face: face detection and the reference placed at the LQ size) use ``model.restore``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.models.backbones.latent_tiling import LatentTiling, tiled_vae_decode_rows, tiled_vae_encode
from portraitisr.models.backbones.one_step_sd import frozen_dtype_autocast
from portraitisr.models.prompters.constant_prompters import FixedPrompter, NullPrompter

__all__ = ['UpscaledImage', 'RowSink', 'restore_streamed', 'can_stream', 'adain_affine', 'channel_sums', 'ADAIN_EPS']

#: The epsilon AdaIN adds to each variance (StableSR / OSEDiff ``calc_mean_std``, as ``color_fix.adain_color_fix``).
ADAIN_EPS = 1e-5
#: Rows per band when the upscaled LQ is summed for the colour fix and the stored output is converted.
BAND_ROWS = 256


class UpscaledImage:
    """The bicubic x``scale`` upscale of ``lq`` (``1 x C x h x w`` in [0, 1]), clamped to [0, 1] and
    reflect-padded at the bottom and right to ``padded_size``, made crop by crop.

    A crop upscales only the LQ rows and columns its pixels depend on (the bicubic kernel reaches 2 LQ pixels each
    way, one more is taken for safety), so its values are those of ``F.interpolate(lq, scale_factor=scale,
    mode='bicubic', align_corners=False)`` up to float rounding; the padding repeats the rows that ``F.pad(...,
    mode='reflect')`` repeats. ``transform`` maps each crop (e.g. to [-1, 1] for the VAE).
    """

    def __init__(self, lq: Tensor, scale: int, padded_size: Optional[Tuple[int, int]] = None,
                 transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        if lq.dim() != 4:
            raise ValueError(f'lq must be B x C x h x w, got {tuple(lq.shape)}')
        self.lq, self.scale, self.transform = lq, int(scale), transform
        self.size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        padded_size = padded_size or self.size
        pad = (padded_size[0] - self.size[0], padded_size[1] - self.size[1])
        if min(pad) < 0 or pad[0] >= max(self.size[0], 2) or pad[1] >= max(self.size[1], 2):
            raise ValueError(f'cannot reflect-pad {self.size} to {padded_size}')
        self.shape = (lq.shape[0], lq.shape[1], padded_size[0], padded_size[1])
        self.device = lq.device

    def with_transform(self, transform: Callable[[Tensor], Tensor]) -> 'UpscaledImage':
        return UpscaledImage(self.lq, self.scale, self.shape[-2:], transform)

    def _source_range(self, first: int, last: int, length: int) -> Tuple[int, int]:
        """LQ indices ``[a, b)`` whose upscale covers output indices ``first..last`` (inclusive) exactly."""
        lo = int(np.floor((first + 0.5) / self.scale - 0.5)) - 2
        hi = int(np.floor((last + 0.5) / self.scale - 0.5)) + 3
        return max(lo, 0), min(hi, length)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """``B x C x (y1 - y0) x (x1 - x0)`` of the padded upscale (then ``transform``), on ``lq``'s device."""
        height, width = self.size
        rows = torch.arange(y0, y1, device=self.device)
        cols = torch.arange(x0, x1, device=self.device)
        rows = torch.where(rows < height, rows, 2 * (height - 1) - rows)  # F.pad's 'reflect'
        cols = torch.where(cols < width, cols, 2 * (width - 1) - cols)
        ya, yb = self._source_range(int(rows.min()), int(rows.max()), self.lq.shape[-2])
        xa, xb = self._source_range(int(cols.min()), int(cols.max()), self.lq.shape[-1])
        part = F.interpolate(self.lq[..., ya:yb, xa:xb], size=((yb - ya) * self.scale, (xb - xa) * self.scale),
                             mode='bicubic', align_corners=False).clamp_(0, 1)
        part = part.index_select(-2, rows - ya * self.scale).index_select(-1, cols - xa * self.scale)
        return self.transform(part) if self.transform is not None else part

    def channel_moments(self) -> Tuple[Tensor, Tensor, int]:
        """Per-channel ``(sum, sum of squares, count)`` in float64 over the unpadded upscale (before
        ``transform``), summed in bands of rows."""
        plain = UpscaledImage(self.lq, self.scale)
        total = torch.zeros(self.shape[1], dtype=torch.float64)
        squares = torch.zeros(self.shape[1], dtype=torch.float64)
        height, width = self.size
        for top in range(0, height, BAND_ROWS):
            band_total, band_squares = channel_sums(plain.crop(top, min(top + BAND_ROWS, height), 0, width))
            total += band_total
            squares += band_squares
        return total, squares, height * width * self.shape[0]


def channel_sums(images: Tensor, rows: int = 64) -> Tuple[Tensor, Tensor]:
    """Per-channel sum and sum of squares of ``B x C x H x W`` as float64 CPU tensors, summed ``rows`` rows at a
    time (float32 pairwise sums of at most ``rows x W`` values, added up in float64: no float64 copy of the
    whole band)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for top in range(0, images.shape[-2], rows):
        part = images[..., top:top + rows, :].float()
        total += part.sum(dim=(0, 2, 3)).double().cpu()
        squares += part.square().sum(dim=(0, 2, 3)).double().cpu()
    return total, squares


class RowSink:
    """Where restored rows go: an ``H x W x 3`` numpy array of ``dtype`` (float32 in [0, 1], or uint16 at full
    range, 65535 levels: 8x finer than the 8-bit files it usually becomes), plus float64 per-channel sums of the
    values as they arrived (before storing), for the colour fix."""

    def __init__(self, height: int, width: int, dtype=np.float32) -> None:
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint16)):
            raise ValueError(f'a RowSink stores float32 or uint16, got {np.dtype(dtype)}')
        self.array = np.empty((height, width, 3), dtype=dtype)
        self.total = torch.zeros(3, dtype=torch.float64)
        self.squares = torch.zeros(3, dtype=torch.float64)
        self.filled = 0

    def put(self, top: int, rows: Tensor) -> None:
        """Store ``1 x 3 x n x W`` values in [0, 1] (any device) as output rows ``top .. top + n - 1``; rows must
        arrive in order, each exactly once."""
        if top != self.filled:
            raise ValueError(f'rows must arrive in order: expected row {self.filled}, got {top}')
        rows = rows[0].float()
        total, squares = channel_sums(rows[None])
        self.total += total
        self.squares += squares
        values = rows.permute(1, 2, 0).cpu().numpy()
        if self.array.dtype == np.uint16:
            values = np.rint(values * 65535.0).astype(np.uint16)
        self.array[top:top + values.shape[0]] = values
        self.filled = top + values.shape[0]

    def float_rows(self, top: int, bottom: int) -> np.ndarray:
        """Stored rows ``[top, bottom)`` as float32 in [0, 1]."""
        rows = self.array[top:bottom]
        return rows.astype(np.float32) / 65535.0 if rows.dtype == np.uint16 else rows


def can_stream(model, conditions: dict) -> bool:
    """Whether :func:`restore_streamed` can run ``model`` with these conditions: a one-step restorer (with
    ``inference_backbone``) whose conditions do not need the whole upscaled image (none given)."""
    return hasattr(model, 'inference_backbone') and not any(v is not None for v in conditions.values())


def adain_affine(sink: RowSink, lq_moments: Tuple[Tensor, Tensor, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, b)`` with ``adain(x) = a * x + b``: the restoration's mean and std matched to the LQ's
    (unbiased variance plus :data:`ADAIN_EPS`, as ``adain_color_fix``)."""
    def mean_std(total: Tensor, squares: Tensor, count: int) -> Tuple[Tensor, Tensor]:
        mean = total / count
        var = (squares - total * mean) / max(count - 1, 1)
        return mean, (var.clamp_min(0) + ADAIN_EPS).sqrt()

    count = sink.array.shape[0] * sink.array.shape[1]
    mean, std = mean_std(sink.total, sink.squares, count)
    ref_mean, ref_std = mean_std(*lq_moments)
    scale = ref_std / std
    return scale.numpy().astype(np.float32), (ref_mean - mean * scale).numpy().astype(np.float32)


@torch.no_grad()
def restore_streamed(model, lq: Tensor, scale: int, tiling: Optional[LatentTiling], sink: RowSink,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Restore ``lq`` (``1 x 3 x h x w`` in [0, 1], on the model's device) at ``scale`` into ``sink``.

    Args:
        model: a one-step restorer (``OSEDiff``, ``HeadsUp`` without a reference), in eval mode, with its
            ``inference_backbone`` on ``lq``'s device.
        tiling: latent tiling of the three stages, or None (untiled: every stage takes the whole image).
        sink: a :class:`RowSink` of ``scale * h`` x ``scale * w`` that receives the restoration before the colour
            fix.
        seed: seeds the VAE posterior sample in a forked random state (``eval_seed``; the caller's state is left
            alone), as ``PortraitRestorer.restore_tensor`` does.

    Returns:
        The colour fix as a per-channel affine map ``(a, b)`` (float32, 3 each) for the stored values: the final
        restoration is ``clip(a * stored + b, 0, 1)``; ``(1, 0)`` when the model has no colour fix.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if lq.dim() != 4 or lq.shape[0] != 1 or lq.shape[1] != 3:
        raise ValueError(f'expected 1 x 3 x h x w, got {tuple(lq.shape)}')
    backbone = model.inference_backbone
    factor = backbone.vae_downscale
    height, width = lq.shape[-2] * scale, lq.shape[-1] * scale
    padded = (height + (-height) % factor, width + (-width) % factor)
    if sink.array.shape[:2] != (height, width):
        raise ValueError(f'sink is {sink.array.shape[:2]}, the restoration {(height, width)}')
    fmt = (lambda x: x.contiguous(memory_format=torch.channels_last)) if backbone.channels_last else (lambda x: x)
    upscaled = UpscaledImage(lq, scale, padded)
    # Constant prompters ignore the pixels; others (taggers) get the whole upscaled LQ, as model.restore gives them.
    prompt_images = lq if isinstance(model.prompter, (NullPrompter, FixedPrompter)) else upscaled.crop(
        0, height, 0, width)
    embeds = model.prompt_embeddings(prompt_images, [{}])
    tiling = tiling or LatentTiling(unet_tile=max(padded) // factor, encode_tile=max(padded),
                                    decode_tile=max(padded) // factor)
    devices = [lq.device] if lq.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices), backbone.tiled(tiling), \
            frozen_dtype_autocast(backbone.frozen_dtype, lq.device):
        torch.manual_seed(seed)
        moments = tiled_vae_encode(backbone.vae, upscaled.with_transform(lambda x: fmt(x * 2 - 1)),
                                   tiling.encode_tile, tiling.encode_overlap, tiling.margin(tiling.encode_overlap),
                                   tiling.encode_group_norm)
        posterior = DiagonalGaussianDistribution(moments)
        latents = (posterior.sample() if backbone.sample_posterior else posterior.mode()) * backbone.scaling_factor
        del moments, posterior
        unet_in = backbone.unet_input(latents, None, None, None)
        timesteps = torch.full((1, ), backbone.timestep, device=lq.device, dtype=torch.long)
        eps = backbone.predict_eps(unet_in, timesteps, embeds)
        del unet_in
        hq = fmt(backbone.one_step(latents, eps) / backbone.scaling_factor)
        del latents, eps
        for top, rows in tiled_vae_decode_rows(backbone.vae, hq, tiling.decode_tile, tiling.decode_overlap,
                                               tiling.margin(tiling.decode_overlap), tiling.decode_group_norm):
            if top >= height:
                continue
            rows = (rows[..., :height - top, :width].float().clamp(-1, 1) + 1) / 2
            sink.put(top, rows)
    if sink.filled != height:
        raise RuntimeError(f'the decoder gave {sink.filled} of {height} rows')
    if model.color_fix is None:
        return np.ones(3, np.float32), np.zeros(3, np.float32)
    if model.color_fix != 'adain':
        raise ValueError(f'streamed restoring knows the adain colour fix, not {model.color_fix!r}')
    return adain_affine(sink, upscaled.channel_moments())
