"""Run an image-to-image network tile by tile and blend the tiles with feathered (linear) weights.

Large photos do not fit through a full-resolution SR network at once. :func:`tiled_forward` cuts the input into
overlapping tiles, runs the network on each and blends the overlaps. Each tile's weight is zero on the outer
``margin`` input pixels of every side it shares with a neighbour (where its context is cut off) and rises
linearly across the rest of the overlap, so seams fade out instead of showing. For a network whose receptive
radius is at most ``margin`` input pixels, the result equals the untiled output up to float rounding.

Real-ESRGAN's own ``RealESRGANer.tile_process`` (xinntao/Real-ESRGAN ``realesrgan/utils.py``) pads each tile by
``tile_pad`` and pastes the centres without blending; the feathering here is our choice.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ['tiled_forward', 'tile_starts', 'ramp_weights', 'blend_tiles']

#: Below this many tiles no progress bar is shown even when ``progress=True``.
PROGRESS_MIN_TILES = 8


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    Starts and ``tile`` are multiples of ``align`` (``length`` must be too); the last tile ends at ``length``.
    A ``length`` no larger than ``tile`` gives the single start 0.
    """
    if length <= tile:
        return [0]
    step = (tile - overlap) // align * align
    if step <= 0:
        raise ValueError(f'tile ({tile}) minus overlap ({overlap}) must be at least align ({align})')
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def ramp_weights(start: int, size: int, length: int, overlap: int, margin: int, scale: int,
                 device: torch.device) -> Tensor:
    """1-D blending weights (``scale * size`` output pixels) of a tile at ``start`` on an axis of ``length``.

    Sides on the image border keep weight 1 (no neighbour there). An inner side has weight 0 for the first
    ``margin`` input pixels and rises linearly to 1 over the next ``overlap - 2 * margin`` input pixels.
    Shared with the latent-space tiling of the one-step SD backbone (``models/backbones/latent_tiling.py``).
    """
    # Output pixel centres in input-pixel units, relative to the tile start.
    u = (torch.arange(size * scale, device=device, dtype=torch.float32) + 0.5) / scale
    weight = torch.ones_like(u)
    width = overlap - 2 * margin
    if overlap == 0:
        return weight
    if start > 0:
        weight = weight * ((u - margin) / width).clamp(0, 1)
    if start + size < length:
        weight = weight * ((size - u - margin) / width).clamp(0, 1)
    return weight


def tiled_forward(fn: Callable[[Tensor], Tensor], image: Tensor, scale: int, tile: int, overlap: int = 32, *,
                  align: int = 1, margin: Optional[int] = None, progress: bool = True) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``image`` and blend the results.

    Args:
        fn: ``B x C x h x w`` -> ``B x C' x (scale*h) x (scale*w)`` (an SR network; any value range).
        image: ``B x C x H x W`` input (for the restorers: RGB in [0, 1]).
        scale: output size / input size of ``fn``.
        tile: tile side in input pixels (rounded down to a multiple of ``align``). An image that fits in one
            tile is passed to ``fn`` whole.
        overlap: minimum overlap of neighbouring tiles, input pixels; ``0 <= overlap < tile``.
        align: tile starts and sizes are multiples of this (2 for pixel-unshuffle x2 networks, 4 for x1) so
            every tile sees the same pixel grid as the whole image; ``H`` and ``W`` must be multiples of it.
        margin: input pixels at each inner tile side that get weight 0 (default ``overlap // 4``); must satisfy
            ``2 * margin < overlap``. The result equals ``fn(image)`` when ``fn``'s receptive radius is at most
            ``margin``.
        progress: show a tqdm bar when there are at least ``PROGRESS_MIN_TILES`` tiles.

    Returns:
        ``B x C' x (scale*H) x (scale*W)`` in ``fn``'s output dtype.
    """
    if image.ndim != 4:
        raise ValueError(f'image must be B x C x H x W, got {tuple(image.shape)}')
    tile = int(tile) // align * align
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f'need 0 <= overlap < tile (after rounding to align={align}), got tile={tile}, '
                         f'overlap={overlap}')
    margin = overlap // 4 if margin is None else int(margin)
    if overlap > 0 and not 0 <= 2 * margin < overlap:
        raise ValueError(f'need 0 <= 2 * margin < overlap, got margin={margin}, overlap={overlap}')
    height, width = image.shape[-2:]
    if height % align or width % align:
        raise ValueError(f'image size {height}x{width} must be a multiple of align={align}; pad it first')
    if height <= tile and width <= tile:
        return fn(image)

    tile_h, tile_w = min(tile, height), min(tile, width)
    ys = tile_starts(height, tile_h, overlap, align)
    xs = tile_starts(width, tile_w, overlap, align)

    def results() -> Iterator[Tensor]:
        for y in ys:
            for x in xs:
                result = fn(image[..., y:y + tile_h, x:x + tile_w])
                if result.shape[-2:] != (scale * tile_h, scale * tile_w):
                    raise ValueError(f'fn returned {tuple(result.shape)} for a {tile_h}x{tile_w} tile; expected '
                                     f'spatial size {(scale * tile_h, scale * tile_w)} (scale={scale})')
                yield result
    return blend_tiles(results(), ys, xs, (tile_h, tile_w), (height, width), overlap, margin, scale, progress)


def blend_tiles(results: Iterable[Tensor], ys: Sequence[int], xs: Sequence[int], tile_size: Tuple[int, int],
                size: Tuple[int, int], overlap: int, margin: int, scale: int = 1, progress: bool = False) -> Tensor:
    """Blend tile results with the feathered weights of :func:`ramp_weights`.

    Args:
        results: ``B x C x (scale*th) x (scale*tw)`` per tile, in row-major order (``ys`` outer, ``xs`` inner);
            consumed one at a time, so a generator keeps only one tile's result alive.
        ys / xs: tile starts, ``tile_size`` ``(th, tw)`` and image ``size`` ``(H, W)`` in input units.
    Returns:
        ``B x C x (scale*H) x (scale*W)`` in the results' dtype.
    """
    (tile_h, tile_w), (height, width) = tile_size, size
    out: Optional[Tensor] = None
    total: Optional[Tensor] = None
    wy = wx = None
    bar = tqdm(total=len(ys) * len(xs), desc='tiles', leave=False,
               disable=not progress or len(ys) * len(xs) < PROGRESS_MIN_TILES)
    positions = [(iy, y, ix, x) for iy, y in enumerate(ys) for ix, x in enumerate(xs)]
    count = 0
    for count, result in enumerate(results, 1):
        if count > len(positions):
            raise ValueError(f'more tile results than the {len(positions)} tiles')
        iy, y, ix, x = positions[count - 1]
        if out is None:
            device = result.device
            wy = [ramp_weights(start, tile_h, height, overlap, margin, scale, device) for start in ys]
            wx = [ramp_weights(start, tile_w, width, overlap, margin, scale, device) for start in xs]
            out = torch.zeros(result.shape[0], result.shape[1], scale * height, scale * width, device=device,
                              dtype=torch.float32)
            total = torch.zeros(1, 1, scale * height, scale * width, device=device)
        weight = (wy[iy][:, None] * wx[ix][None, :])[None, None]
        region = (..., slice(scale * y, scale * (y + tile_h)), slice(scale * x, scale * (x + tile_w)))
        out[region] += result.float() * weight
        total[region] += weight
        bar.update(1)
    bar.close()
    if count != len(positions):
        raise ValueError(f'{count} tile results for {len(positions)} tiles')
    return (out / total).to(result.dtype)
