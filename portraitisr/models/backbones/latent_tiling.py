"""Tiled VAE encode, UNet pass and VAE decode of the one-step SD backbone, for 4K outputs in bounded memory.

A 4096 x 4096 output is a 512 x 512 latent: the SD 2.1 VAE decoder alone would hold several 128-channel
4096 x 4096 activations (tens of GB), and OSEDiff users report OOM at 24 GB (cswry/OSEDiff issues
#69 and #32). Every stage therefore runs on overlapping tiles whose results are blended with the
feathered ramps of :mod:`portraitisr.utils.tiling`: weight 0 on the outer ``margin`` of each side that
has a neighbour (where the tile's context is cut off), rising linearly to 1 across the rest of the overlap.

* UNet: the whole ``unet_input`` (LQ latent and, for HeadsUp, the reference latent and the face mask) is cut
  into the same tiles, so the extra channels always stay aligned with the LQ latent they belong to.
* VAE decoder: :func:`tiled_forward` with ``scale = 8``.
* VAE encoder: tiles in pixels, blended on the latent grid; the blended *moments* (mean, log-variance) form one
  posterior, so ``sample()`` draws the same noise as an untiled encode. The image may be a :class:`PixelSource`
  that makes each tile on demand (``portraitisr restore`` upscales the small input tile by tile), so the
  full-size input never exists.
* VAE decoder by rows (:func:`tiled_vae_decode_rows`): finished output rows are handed out while the tiles below
  are still to come, so the full-size output need not exist in float32 either.

Why not diffusers' ``AutoencoderKL.enable_tiling``: it lays tiles on a fixed stride, so the last row and column
can be slivers (a 4096 image with its 768-pixel SD 2.1 tiles ends in a 64-pixel tile) whose GroupNorm statistics
come from a few pixels and shift the tone there; and it blends from the very tile edge, where the convolutions saw
zero padding. :func:`tile_starts` keeps every tile full-size (the last one flush with the border) and the margin
drops the padded edge. On a GPU the VAE's tiles run stage by stage by default, so that every GroupNorm normalises
with the whole image's statistics (:mod:`.tiled_group_norm`, as OSEDiff's tiled VAE does), and the blend hides what
remains (measured by :func:`tile_seam_score` in ``tests/test_models/test_backbones/test_latent_tiling.py``).
OSEDiff's own defaults (cswry/OSEDiff ``test_osediff.py``: encoder tile 1024 px, latent tile 96 with overlap 32) set
the sizes below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.utils.seam_geometry import seam_score
from portraitisr.utils.tiling import blend_rows, blend_tiles, tile_done, tile_starts, tiled_forward
from .tiled_group_norm import owned_spans, run_tiles_in_step
from .vae_stages import Stage, decoder_stages, encoder_stages

#: How a tiled VAE stage's GroupNorms get their statistics: see :class:`LatentTiling`.
GROUP_NORM_MODES = ('auto', 'exact', 'tile')

__all__ = ['LatentTiling', 'PixelSource', 'tiled_unet', 'tiled_vae_encode', 'tiled_vae_decode',
           'tiled_vae_decode_rows', 'stage_tile_counts', 'tile_borders', 'tile_border_mask', 'tile_seam_score']


class PixelSource(Protocol):
    """An image that exists only as crops: ``shape`` ``(B, C, H, W)``, ``device``, and ``crop(y0, y1, x0, x1)``
    returning ``B x C x (y1 - y0) x (x1 - x0)`` on ``device``."""

    shape: Tuple[int, int, int, int]
    device: torch.device

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        ...


def _crop(image: Union[Tensor, PixelSource], y0: int, y1: int, x0: int, x1: int) -> Tensor:
    return image[..., y0:y1, x0:x1] if isinstance(image, Tensor) else image.crop(y0, y1, x0, x1)


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
        encode_group_norm / decode_group_norm: where the VAE encoder's / decoder's GroupNorms take their
            statistics from. ``'exact'``: all tiles run stage by stage (:mod:`.tiled_group_norm`), so every
            GroupNorm normalises with the whole image's statistics, as cswry/OSEDiff's tiled VAE does. It costs
            about 1.5x the convolutions of per-tile runs and keeps one stage's activations of all tiles (about 1.6x
            the untiled ones: 13 GB in bf16 for a 4096 x 4096 decode), on the CPU when the VAE runs on a GPU. On
            trained tiny VAEs (``tools/experiments/tiled_group_norm.py``, 3 seeds) the tiled encoder comes 13-18x
            and the decoder 3.5-8x closer to the untiled one than with ``'tile'``: each tile its own statistics,
            as diffusers' tiling does, memory bounded by one tile. ``'auto'``: ``'exact'`` on a GPU (host memory
            holds the waiting tiles, GPU memory stays bounded), ``'tile'`` on the CPU (where the waiting tiles
            would take the RAM that tiling is meant to save). The UNet keeps per-tile statistics, as OSEDiff's
            latent tiling does.
    """
    unet_tile: int = 96
    unet_overlap: int = 32
    encode_tile: int = 1024
    encode_overlap: int = 128
    decode_tile: int = 128
    decode_overlap: int = 32
    margin_fraction: float = 0.25
    encode_group_norm: str = 'auto'
    decode_group_norm: str = 'auto'

    def __post_init__(self):
        for name in ('encode_group_norm', 'decode_group_norm'):
            if getattr(self, name) not in GROUP_NORM_MODES:
                raise ValueError(f'{name} must be one of {GROUP_NORM_MODES}, got {getattr(self, name)!r}')

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
    align = unet_downscale(unet)

    def run(x: Tensor) -> Tensor:
        return unet(x, timesteps, encoder_hidden_states=prompt_embeds).sample

    h, w = unet_in.shape[-2:]
    if h <= tile and w <= tile:
        eps = run(unet_in)
        tile_done()
        return eps
    pad_h, pad_w = (-h) % align, (-w) % align
    padded = F.pad(unet_in, (0, pad_w, 0, pad_h), mode='reflect') if pad_h or pad_w else unet_in
    eps = tiled_forward(run, padded, 1, tile, overlap, align=align, margin=margin, progress=False)
    return eps[..., :h, :w]


def _vae_tile_results(stages: List[Stage], run: Callable[[Tensor], Tensor], image: Union[Tensor, PixelSource],
                      tile_h: int, tile_w: int, ys: List[int], xs: List[int], group_norm: str) -> Iterator[Tensor]:
    """Each tile's result of a VAE stage, row-major (``ys`` outer): with ``group_norm='tile'`` from ``run`` (possibly
    compiled), with ``'exact'`` from the eager ``stages`` run in step over all tiles (their GroupNorms are swapped
    per tile, which would make a ``torch.compile``'d module recompile for every tile); ``'auto'`` picks by device
    (:class:`LatentTiling`)."""
    if group_norm not in GROUP_NORM_MODES:
        raise ValueError(f'group_norm must be one of {GROUP_NORM_MODES}, got {group_norm!r}')
    if group_norm == 'auto':
        group_norm = 'exact' if image.device.type == 'cuda' else 'tile'
    if group_norm == 'tile':  # one tile at a time: a PixelSource makes each crop only when it is needed
        yield from (run(_crop(image, y, y + tile_h, x, x + tile_w)) for y in ys for x in xs)
        return
    store = torch.device('cpu') if image.device.type == 'cuda' else image.device
    # straight to the store, one at a time: all tiles wait there between stages, never all on the GPU
    crops = [_crop(image, y, y + tile_h, x, x + tile_w).to(store) for y in ys for x in xs]
    height, width = image.shape[-2:]
    spans_y, spans_x = owned_spans(ys, tile_h, height), owned_spans(xs, tile_w, width)
    owned = [(y0, y1, x0, x1) for y0, y1 in spans_y for x0, x1 in spans_x]
    for result in run_tiles_in_step(stages, crops, owned, (tile_h, tile_w), image.device, store):
        yield result.to(image.device)


def tiled_vae_decode_rows(vae: nn.Module, latents: Tensor, tile: int, overlap: int, margin: Optional[int] = None,
                          group_norm: str = 'auto') -> Iterator[Tuple[int, Tensor]]:
    """``vae.decode(latents).sample`` (unscaled latents ``B x 4 x h x w`` -> ``B x 3 x 8h x 8w`` in about
    [-1, 1]) on overlapping latent tiles, yielded as ``(first output row, B x 3 x rows x 8w)`` bands from the top
    (:func:`~portraitisr.utils.tiling.blend_rows`); one band when the latent fits in one tile.
    ``group_norm``: see :class:`LatentTiling`."""
    factor = 2**(len(vae.config.block_out_channels) - 1)

    def run(z: Tensor) -> Tensor:
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z)

    height, width = latents.shape[-2:]
    if height <= tile and width <= tile:
        image = run(latents)
        tile_done()
        yield 0, image
        return
    margin = overlap // 4 if margin is None else int(margin)
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    results = _vae_tile_results(decoder_stages(vae), run, latents, tile_h, tile_w, ys, xs, group_norm)
    yield from blend_rows(results, ys, xs, (tile_h, tile_w), (height, width), overlap, margin, factor)


def tiled_vae_decode(vae: nn.Module, latents: Tensor, tile: int, overlap: int, margin: Optional[int] = None,
                     group_norm: str = 'auto') -> Tensor:
    """``vae.decode(latents).sample`` (unscaled latents ``B x 4 x h x w`` -> ``B x 3 x 8h x 8w`` in about
    [-1, 1]) on overlapping latent tiles; ``group_norm``: see :class:`LatentTiling`."""
    out: Optional[Tensor] = None
    for top, rows in tiled_vae_decode_rows(vae, latents, tile, overlap, margin, group_norm):
        if out is None:
            factor = rows.shape[-1] // latents.shape[-1]
            out = rows.new_empty(rows.shape[0], rows.shape[1], factor * latents.shape[-2], rows.shape[-1])
        out[..., top:top + rows.shape[-2], :] = rows
    return out


def tiled_vae_encode(vae: nn.Module, images: Union[Tensor, PixelSource], tile: int, overlap: int,
                     margin: Optional[int] = None, group_norm: str = 'auto') -> Tensor:
    """Posterior moments of ``vae.encode`` (``B x 2C x H/8 x W/8``, mean and log-variance) from overlapping
    image tiles of ``images`` ``B x 3 x H x W`` in [-1, 1] (a tensor, or a :class:`PixelSource` that makes each
    tile on demand); ``H``, ``W``, ``tile`` and ``overlap`` multiples of 8.

    Tiles are cut in pixels and blended on the latent grid with the ramps of :func:`tiled_forward`;
    ``group_norm``: see :class:`LatentTiling`.
    """
    factor = 2**(len(vae.config.block_out_channels) - 1)
    height, width = images.shape[-2:]
    if height % factor or width % factor or tile % factor or overlap % factor:
        raise ValueError(f'image {height}x{width}, tile {tile} and overlap {overlap} must be multiples of the '
                         f'VAE factor {factor}')

    def run(x: Tensor) -> Tensor:
        moments = vae.encoder(x)
        return vae.quant_conv(moments) if vae.quant_conv is not None else moments

    if height <= tile and width <= tile:
        moments = run(_crop(images, 0, height, 0, width))
        tile_done()
        return moments
    margin = overlap // 4 if margin is None else int(margin)
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap, factor), tile_starts(width, tile_w, overlap, factor)
    results = _vae_tile_results(encoder_stages(vae), run, images, tile_h, tile_w, ys, xs, group_norm)
    # blended on the latent grid: every position and size in latent pixels
    lat = lambda values: [v // factor for v in values]  # noqa: E731
    return blend_tiles(results, lat(ys), lat(xs), (tile_h // factor, tile_w // factor),
                       (height // factor, width // factor), overlap // factor, margin // factor)


def stage_tile_counts(tiling: LatentTiling, size: Tuple[int, int], factor: int = 8,
                      unet_align: int = 8) -> Tuple[int, int, int]:
    """How many tiles the encoder, the UNet and the decoder run for a padded image of ``size`` ``(H, W)``
    (multiples of ``factor``) under ``tiling``; a stage that fits in one tile counts 1. For progress bars."""
    height, width = size
    lat_h, lat_w = height // factor, width // factor

    def count(h: int, w: int, tile: int, overlap: int, align: int = 1) -> int:
        if h <= tile and w <= tile:
            return 1
        return len(tile_starts(h, min(tile, h), overlap, align)) * len(tile_starts(w, min(tile, w), overlap, align))

    encode = count(height, width, tiling.encode_tile, tiling.encode_overlap, factor)
    pad = lambda v: v + (-v) % unet_align  # noqa: E731  (tiled_unet reflect-pads to the UNet's factor)
    tile = tiling.unet_tile // unet_align * unet_align
    unet = count(pad(lat_h), pad(lat_w), tile, tiling.unet_overlap, unet_align) \
        if lat_h > tiling.unet_tile or lat_w > tiling.unet_tile else 1
    decode = count(lat_h, lat_w, tiling.decode_tile, tiling.decode_overlap)
    return encode, unet, decode


# ---------------------------------------------------------------------- seam measurement
def tile_borders(length: int, tile: int, overlap: int, align: int = 1, scale: int = 1) -> List[int]:
    """Output-pixel positions where tiles of :func:`tile_starts` begin or end inside ``[0, length)``
    (``length``, ``tile``, ``overlap`` in input units, positions times ``scale``); empty for one tile."""
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
    mask = tile_border_mask(image.shape[-2:], rows, cols).to(image.device).expand(image.shape[0], -1, -1, -1)
    return seam_score(image, mask, **kwargs)
