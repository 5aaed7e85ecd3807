"""Run an image-to-image network tile by tile and blend the tiles with feathered (linear) weights.

Large photos do not fit through a full-resolution SR network at once. :func:`tiled_forward` cuts the input into
overlapping tiles, runs the network on each and blends the overlaps. Each tile's weight is zero on the outer
``margin`` input pixels of every side it shares with a neighbour (where its context is cut off) and rises
linearly across the rest of the overlap, so seams fade out instead of showing. For a network whose receptive
radius is at most ``margin`` input pixels, the result equals the untiled output up to float rounding.

The tiles form a full grid, so the sum of the weights at a pixel is the product of a row sum and a column sum:
:func:`blend_rows` keeps no full-size weight image, and hands out finished rows of the result as soon as the tile
row below no longer touches them, so a caller that writes them away (``portraitisr restore`` of a huge photo)
holds one tile row of the output at a time. :func:`report_tiles` lets a progress bar count the tiles of every
tiled stage run inside it.

Real-ESRGAN's own ``RealESRGANer.tile_process`` (xinntao/Real-ESRGAN ``realesrgan/utils.py``) pads each tile by
``tile_pad`` and pastes the centres without blending; the feathering here is our choice.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ['tiled_forward', 'tile_starts', 'ramp_weights', 'blend_tiles', 'blend_rows', 'report_tiles',
           'tile_done']

#: Below this many tiles no progress bar is shown even when ``progress=True``.
PROGRESS_MIN_TILES = 8

_TILE_REPORTER: contextvars.ContextVar[Optional[Callable[[int], None]]] = contextvars.ContextVar(
    'portraitisr_tile_reporter', default=None)


@contextlib.contextmanager
def report_tiles(callback: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, ``callback(n)`` is called whenever a tiled stage finishes ``n`` tiles (every blend of
    :func:`blend_tiles` / :func:`blend_rows`, so the tiled UNet and VAE and ``tiled_forward`` all count)."""
    token = _TILE_REPORTER.set(callback)
    try:
        yield
    finally:
        _TILE_REPORTER.reset(token)


def tile_done(count: int = 1) -> None:
    """Tell the :func:`report_tiles` callback (if any) that ``count`` tiles (or untiled stages) are done."""
    callback = _TILE_REPORTER.get()
    if callback is not None:
        callback(count)


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
        result = fn(image)
        tile_done()
        return result

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


def _axis_weights(starts: Sequence[int], tile: int, length: int, overlap: int, margin: int, scale: int,
                  device: torch.device) -> Tuple[list, Tensor]:
    """Per-tile 1-D ramps along one axis and their sum over the axis (``scale * length`` output pixels)."""
    ramps = [ramp_weights(start, tile, length, overlap, margin, scale, device) for start in starts]
    total = torch.zeros(scale * length, device=device)
    for start, ramp in zip(starts, ramps):
        total[scale * start:scale * (start + tile)] += ramp
    return ramps, total


def blend_rows(results: Iterable[Tensor], ys: Sequence[int], xs: Sequence[int], tile_size: Tuple[int, int],
               size: Tuple[int, int], overlap: int, margin: int, scale: int = 1,
               progress: bool = False) -> Iterator[Tuple[int, Tensor]]:
    """Blend tile results with the feathered weights of :func:`ramp_weights`, yielding finished rows.

    Args:
        results: ``B x C x (scale*th) x (scale*tw)`` per tile, in row-major order (``ys`` outer, ``xs`` inner);
            consumed one at a time, so a generator keeps only one tile's result alive.
        ys / xs: tile starts, ``tile_size`` ``(th, tw)`` and image ``size`` ``(H, W)`` in input units.

    Yields:
        ``(first output row, B x C x rows x (scale*W))`` in the results' dtype, top to bottom, covering all
        ``scale * H`` rows: after each tile row, the rows that the next tile row does not reach. At most one tile
        row of the output (``B x C x (scale*th) x (scale*W)`` float32) is held.
    """
    (tile_h, tile_w), (height, width) = tile_size, size
    positions = len(ys) * len(xs)
    bar = tqdm(total=positions, desc='tiles', leave=False, disable=not progress or positions < PROGRESS_MIN_TILES)
    iterator = iter(results)
    band: Optional[Tensor] = None  # output rows [band_top, band_top + scale * tile_h), float32
    band_top = 0
    count = 0
    try:
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                result = next(iterator, None)
                if result is None:
                    raise ValueError(f'{count} tile results for {positions} tiles')
                count += 1
                if band is None:
                    dtype, device = result.dtype, result.device
                    wy, row_total = _axis_weights(ys, tile_h, height, overlap, margin, scale, device)
                    wx, col_total = _axis_weights(xs, tile_w, width, overlap, margin, scale, device)
                    band = torch.zeros(result.shape[0], result.shape[1], scale * tile_h, scale * width,
                                       device=device, dtype=torch.float32)
                weight = (wy[iy][:, None] * wx[ix][None, :])[None, None]
                top = scale * y - band_top
                band[..., top:top + scale * tile_h, scale * x:scale * (x + tile_w)] += result.float() * weight
                del result
                bar.update(1)
                tile_done()
            done = scale * (ys[iy + 1] if iy + 1 < len(ys) else height)  # rows no later tile touches
            rows = done - band_top
            total = row_total[band_top:done, None] * col_total[None, :]
            yield band_top, (band[..., :rows, :] / total).to(dtype)
            kept = band[..., rows:, :].clone()  # rows the next tile row adds to
            band.zero_()
            band[..., :kept.shape[-2], :] = kept
            band_top = done
    finally:
        bar.close()
    if next(iterator, None) is not None:
        raise ValueError(f'more tile results than the {positions} tiles')


def blend_tiles(results: Iterable[Tensor], ys: Sequence[int], xs: Sequence[int], tile_size: Tuple[int, int],
                size: Tuple[int, int], overlap: int, margin: int, scale: int = 1, progress: bool = False) -> Tensor:
    """Blend tile results with the feathered weights of :func:`ramp_weights` into one tensor.

    Args: as :func:`blend_rows`.
    Returns:
        ``B x C x (scale*H) x (scale*W)`` in the results' dtype.
    """
    out: Optional[Tensor] = None
    for top, rows in blend_rows(results, ys, xs, tile_size, size, overlap, margin, scale, progress):
        if out is None:
            out = rows.new_empty(rows.shape[0], rows.shape[1], scale * size[0], scale * size[1])
        out[..., top:top + rows.shape[-2], :] = rows
    return out
