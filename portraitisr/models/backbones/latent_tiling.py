"""Tiled VAE encode, UNet pass and VAE decode of the one-step SD backbone, for 4K outputs in bounded memory.

A 4096 x 4096 output is a 512 x 512 latent: the SD 2.1 VAE decoder alone would hold several 128-channel
4096 x 4096 activations (tens of GB), and OSEDiff users report OOM at 24 GB (shared/reference/osediff.md,
section 6, #69 and #32). Every stage therefore runs on overlapping tiles whose results are blended with the
feathered ramps of :mod:`portraitisr.models.restorers.tiling`: weight 0 on the outer ``margin`` of each side that
has a neighbour (where the tile's context is cut off), rising linearly to 1 across the rest of the overlap.

* UNet: the whole ``unet_input`` (LQ latent and, for HeadsUp, the reference latent and the face mask) is cut
  into the same tiles, so the extra channels always stay aligned with the LQ latent they belong to.
* VAE decoder: :func:`tiled_forward` with ``scale = 8``.
* VAE encoder: tiles in pixels, blended on the latent grid; the blended *moments* (mean, log-variance) form one
  posterior, so ``sample()`` draws the same noise as an untiled encode.

Why not diffusers' ``AutoencoderKL.enable_tiling``: it lays tiles on a fixed stride, so the last row and column
can be slivers (a 4096 image with its 768-pixel SD 2.1 tiles ends in a 64-pixel tile) whose GroupNorm statistics
come from a few pixels and shift the tone there; and it blends from the very tile edge, where the convolutions saw
zero padding. :func:`tile_starts` keeps every tile full-size (the last one flush with the border) and the margin
drops the padded edge. The encoder's GroupNorm statistics are pooled over the whole image by one recording pass
(:mod:`.tiled_group_norm`); the decoder's stay per tile by default (see :class:`LatentTiling`), and the blend hides
what remains (measured by :func:`tile_seam_score` in ``tests/test_latent_tiling.py``). OSEDiff's own defaults
(encoder tile 1024 px, latent tile 96 with overlap 32; reference section 1, "Tiling") set the sizes below.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tiled_group_norm import GroupNormStatistics, record_tiles

__all__ = ['LatentTiling', 'tiled_unet', 'tiled_vae_encode', 'tiled_vae_decode', 'tile_borders',
           'tile_border_mask', 'tile_seam_score']


@dataclass
class LatentTiling:
    """Tile sizes of the three stages; an image that fits in one tile of a stage runs untiled there.

    Args:
        unet_tile / unet_overlap: UNet tile side and overlap in latent pixels (OSEDiff: 96 and 32).
        encode_tile / encode_overlap: VAE-encoder tile side and overlap in image pixels (OSEDiff: 1024 px);
            multiples of the VAE factor 8.
        decode_tile / decode_overlap: VAE-decoder tile side and overlap in latent pixels (128 latent = 1024 px:
            about 3 GB of bf16 activations for SD 2.1; OSEDiff uses 224).
        margin_fraction: share of each overlap given weight 0 at an inner tile side (``margin = overlap *
            margin_fraction``), as ``tiled_forward``'s default 1/4.
        encode_group_norm_passes / decode_group_norm_passes: recording passes that pool the VAE encoder's /
            decoder's GroupNorm statistics over the whole image (:mod:`.tiled_group_norm`; each pass is one more
            run of that tiled stage); 0 lets every tile normalise with its own statistics, as diffusers' tiling
            does. Defaults from trained tiny VAEs (``tools/experiments/tiled_group_norm.py``, 3 seeds): one pass
            brings the tiled encoder 1.7-4.5x closer to the untiled one. For the decoder one pass ranges from
            1.7x closer to 2.5x further, because it records deep layers under per-tile statistics of the earlier
            ones, so it stays per tile; the exact statistics would be 4-10x closer but need every tile's
            activations in step (as cswry/OSEDiff's ``vaehook``). The UNet keeps per-tile statistics, as OSEDiff's
            latent tiling does.
    """

    unet_tile: int = 96
    unet_overlap: int = 32
    encode_tile: int = 1024
    encode_overlap: int = 128
    decode_tile: int = 128
    decode_overlap: int = 32
    margin_fraction: float = 0.25
    encode_group_norm_passes: int = 1
    decode_group_norm_passes: int = 0

    def margin(self, overlap: int) -> int:
        return int(overlap * self.margin_fraction)


def unet_downscale(unet: nn.Module) -> int:
    """How much the UNet downsamples its latent (8 for SD 2.1): UNet tiles must be multiples of it."""
    return 2**(len(unet.config.block_out_channels) - 1)


def tiled_unet(unet: nn.Module, unet_in: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
               tile: int, overlap: int, margin: Optional[int] = None) -> Tensor:
    """``eps`` of ``unet(unet_in, timesteps, prompt_embeds)`` computed on overlapping latent tiles.

    Args:
        unet_in: ``B x C x h x w`` UNet input (``C`` = 4, or 9 with reference latent and mask).
        timesteps: ``(B,)``; prompt_embeds: ``B x L x D``.
        tile / overlap / margin: in latent pixels; rounded to the UNet's downscale factor.

    Returns:
        ``B x 4 x h x w`` in the UNet's output dtype. Sizes that are not a multiple of the UNet's downscale are
        reflect-padded for tiling and cropped back.
    """
    from portraitisr.models.restorers.tiling import tiled_forward  # lazy: the restorers package imports models

    align = unet_downscale(unet)

    def run(x: Tensor) -> Tensor:
        return unet(x, timesteps, encoder_hidden_states=prompt_embeds).sample

    h, w = unet_in.shape[-2:]
    if h <= tile and w <= tile:
        return run(unet_in)
    pad_h, pad_w = (-h) % align, (-w) % align
    padded = F.pad(unet_in, (0, pad_w, 0, pad_h), mode='reflect') if pad_h or pad_w else unet_in
    eps = tiled_forward(run, padded, 1, tile, overlap, align=align, margin=margin, progress=False)
    return eps[..., :h, :w]


def tiled_vae_decode(vae: nn.Module, latents: Tensor, tile: int, overlap: int, margin: Optional[int] = None,
                     group_norm_passes: int = 0) -> Tensor:
    """``vae.decode(latents).sample`` (unscaled latents ``B x 4 x h x w`` -> ``B x 3 x 8h x 8w`` in about
    [-1, 1]) on overlapping latent tiles, GroupNorm statistics pooled over ``group_norm_passes`` recording passes."""
    from portraitisr.models.restorers.tiling import tiled_forward, tile_starts

    factor = 2**(len(vae.config.block_out_channels) - 1)
    height, width = latents.shape[-2:]
    pooled = group_norm_passes > 0 and not (height <= tile and width <= tile)
    decoder = getattr(vae.decoder, '_orig_mod', vae.decoder) if pooled else vae.decoder  # see tiled_vae_encode

    def run(z: Tensor) -> Tensor:
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return decoder(z)

    stats = GroupNormStatistics(decoder)
    if not (pooled and stats):
        return tiled_forward(run, latents, factor, tile, overlap, margin=margin, progress=False)
    tile_h, tile_w = min(tile, height), min(tile, width)
    record_tiles(stats, run, latents, tile_h, tile_w, tile_starts(height, tile_h, overlap),
                 tile_starts(width, tile_w, overlap), group_norm_passes)
    with stats.applied():
        return tiled_forward(run, latents, factor, tile, overlap, margin=margin, progress=False)


def tiled_vae_encode(vae: nn.Module, images: Tensor, tile: int, overlap: int, margin: Optional[int] = None,
                     group_norm_passes: int = 1) -> Tensor:
    """Posterior moments of ``vae.encode`` (``B x 2C x H/8 x W/8``, mean and log-variance) from overlapping
    image tiles ``images`` ``B x 3 x H x W`` in [-1, 1]; ``H``, ``W``, ``tile`` and ``overlap`` multiples of 8.

    Tiles are cut in pixels and blended on the latent grid with the same ramps as :func:`tiled_forward`; the
    encoder's GroupNorm statistics are pooled over ``group_norm_passes`` recording passes.
    """
    from portraitisr.models.restorers.tiling import ramp_weights, tile_starts

    factor = 2**(len(vae.config.block_out_channels) - 1)
    height, width = images.shape[-2:]
    if height % factor or width % factor or tile % factor or overlap % factor:
        raise ValueError(f'image {height}x{width}, tile {tile} and overlap {overlap} must be multiples of the '
                         f'VAE factor {factor}')

    pooled = group_norm_passes > 0 and not (height <= tile and width <= tile)
    # Pooling swaps the GroupNorms' forward per tile: run the eager encoder under a torch.compile'd one, which would
    # otherwise recompile for every tile's owned box.
    encoder = getattr(vae.encoder, '_orig_mod', vae.encoder) if pooled else vae.encoder

    def run(x: Tensor) -> Tensor:
        moments = encoder(x)
        return vae.quant_conv(moments) if vae.quant_conv is not None else moments

    if height <= tile and width <= tile:
        return run(images)
    margin = overlap // 4 if margin is None else int(margin)
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap, factor), tile_starts(width, tile_w, overlap, factor)
    lat = lambda v: v // factor  # noqa: E731 - pixel -> latent units
    device = images.device
    wy = [ramp_weights(lat(y), lat(tile_h), lat(height), lat(overlap), lat(margin), 1, device) for y in ys]
    wx = [ramp_weights(lat(x), lat(tile_w), lat(width), lat(overlap), lat(margin), 1, device) for x in xs]
    stats = GroupNormStatistics(encoder)
    pooled = pooled and bool(stats)
    if pooled:
        record_tiles(stats, run, images, tile_h, tile_w, ys, xs, group_norm_passes)
    out: Optional[Tensor] = None
    total = images.new_zeros(1, 1, lat(height), lat(width), dtype=torch.float32)
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            with stats.applied() if pooled else contextlib.nullcontext():
                moments = run(images[..., y:y + tile_h, x:x + tile_w])
            if out is None:
                out = images.new_zeros(images.shape[0], moments.shape[1], lat(height), lat(width),
                                       dtype=torch.float32)
            weight = (wy[iy][:, None] * wx[ix][None, :])[None, None]
            region = (..., slice(lat(y), lat(y + tile_h)), slice(lat(x), lat(x + tile_w)))
            out[region] += moments.float() * weight
            total[region] += weight
    return (out / total).to(moments.dtype)


# ---------------------------------------------------------------------- seam measurement
def tile_borders(length: int, tile: int, overlap: int, align: int = 1, scale: int = 1) -> List[int]:
    """Output-pixel positions where tiles of :func:`tile_starts` begin or end inside ``[0, length)``
    (``length``, ``tile``, ``overlap`` in input units, positions times ``scale``); empty for one tile."""
    from portraitisr.models.restorers.tiling import tile_starts

    starts = tile_starts(length, tile, overlap, align)
    if len(starts) == 1:
        return []
    lines = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < length}
    return sorted(scale * v for v in lines)


def tile_border_mask(size: Sequence[int], rows: Sequence[int], cols: Sequence[int]) -> Tensor:
    """``1 x 1 x H x W`` mask whose 0.5 level set is exactly the given horizontal (``rows``) and vertical
    (``cols``) lines: a checkerboard that flips at each line, so :func:`seam_score` scores along all of them.
    A line at ``c`` lies between pixel ``c - 1`` and pixel ``c``."""
    h, w = int(size[0]), int(size[1])
    ky = torch.bucketize(torch.arange(h), torch.tensor(sorted(rows), dtype=torch.long), right=True)
    kx = torch.bucketize(torch.arange(w), torch.tensor(sorted(cols), dtype=torch.long), right=True)
    return ((ky[:, None] + kx[None, :]) % 2).double()[None, None]


def tile_seam_score(image: Tensor, rows: Sequence[int], cols: Sequence[int], **kwargs) -> Tensor:
    """Seam score (``docs/seam_score.md``) of ``image`` ``B x 3 x H x W`` in [0, 1] along tile border lines.

    Lines closer than the score's band offset to each other or to the image border would mix bands; choose
    tiles larger than ``2 * offset`` (12 px by default). Returns ``B`` float64 scores (8-bit levels per pixel).
    """
    from portraitisr.evaluation.metrics.seam_score import seam_score

    mask = tile_border_mask(image.shape[-2:], rows, cols).to(image.device).expand(image.shape[0], -1, -1, -1)
    return seam_score(image, mask, **kwargs)
