"""Whole-image GroupNorm statistics for networks run tile by tile (the VAE encoder and decoder of SD).

A GroupNorm normalises with the mean and variance of each (sample, group) over the whole feature map. Run on a
tile, it uses the tile's own statistics instead, so tiles of a sky and of a face come out with shifted tones: the
tile seams of tiled SD VAEs. cswry/OSEDiff's tiled VAE (``my_utils/vaehook.py``, from pkuliyi2015's "Tiled VAE")
avoids this by running all tiles layer by layer and pooling the statistics at every GroupNorm, which keeps every
tile's activations alive at once (moved to the CPU between GroupNorms). We keep memory bounded by one tile
instead, at the price of one extra pass:

1. a recording pass runs every tile and accumulates, at every GroupNorm, the mean and variance of the part of the
   tile it *owns* (the tiles' owned parts partition the image: overlaps are split in the middle);
2. the final pass normalises every tile with the pooled statistics.

The recording pass itself normalises with per-tile statistics, so what it records at a deep layer is off by how
much the earlier layers' statistics moved; ``passes=k`` records again under the previous pass's pooled statistics
and makes the first ``k`` GroupNorms of a chain exact where the owned parts see their whole receptive field
(``tests/test_tiled_group_norm.py``). On trained tiny VAEs
(``tools/experiments/tiled_group_norm.py``) this converges for the encoder but not for the decoder's deeper chain,
which is why ``LatentTiling`` pools the encoder only.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['GroupNormStatistics', 'owned_spans', 'record_tiles']


def owned_spans(starts: List[int], tile: int, length: int) -> List[Tuple[int, int]]:
    """``[begin, end)`` of the part of ``[0, length)`` each tile owns, relative to its start: the overlap of two
    neighbours is split at its middle, so the spans partition the axis."""
    cuts = [0] + [(nxt + start + tile) // 2 for start, nxt in zip(starts, starts[1:])] + [length]
    return [(cuts[i] - start, cuts[i + 1] - start) for i, start in enumerate(starts)]


class GroupNormStatistics:
    """Pools the GroupNorm statistics of a module's tiles and normalises with them.

    Usage (``run`` maps a tile of the input to the module's output)::

        stats = GroupNormStatistics(vae.decoder)
        for y, x in tiles:
            with stats.recording(owned=(y0, y1, x0, x1), tile_size=(th, tw)):
                run(latent[..., y:y + th, x:x + tw])
        stats.pool()
        with stats.applied():
            ...  # every tile now normalises with the pooled statistics

    ``owned`` is in the units of the tile input; a GroupNorm whose feature map is ``k`` times the tile's size
    counts the ``k``-times scaled box (so the decoder's upsampled layers and the encoder's downsampled ones are both
    counted over the same image region).
    """

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.pooled: Dict[nn.GroupNorm, Tuple[Tensor, Tensor]] = {}
        self._sums: Dict[nn.GroupNorm, Tuple[int, Tensor, Tensor]] = {}  # count, mean, M2
        self._owned: Optional[Tuple[int, int, int, int]] = None
        self._tile_size: Optional[Tuple[int, int]] = None

    def __bool__(self) -> bool:
        return bool(self.norms)

    # ------------------------------------------------------------------ passes
    @contextlib.contextmanager
    def recording(self, owned: Tuple[int, int, int, int], tile_size: Tuple[int, int]) -> Iterator[None]:
        """Run one tile, adding its owned part to the sums (normalising with the pooled statistics if any)."""
        self._owned, self._tile_size = owned, tile_size
        try:
            with self._patched():
                yield
        finally:
            self._owned = self._tile_size = None

    def pool(self) -> None:
        """Turn the recorded sums into per-(sample, group) mean and variance; clears the sums."""
        pooled = {}
        for norm, (count, mean, m2) in self._sums.items():
            pooled[norm] = (mean.float(), (m2 / count).float())
        missing = [n for n in self.norms if n not in pooled]
        if missing:
            raise RuntimeError(f'{len(missing)} GroupNorm layers saw no recorded tile; record every tile first')
        self.pooled, self._sums = pooled, {}

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Every GroupNorm of the module normalises with the pooled statistics."""
        if not self.pooled:
            raise RuntimeError('no pooled statistics: record the tiles and call pool() first')
        with self._patched():
            yield

    # ------------------------------------------------------------------ the patched GroupNorm
    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        for norm in self.norms:
            norm.forward = functools.partial(self._forward, norm)
        try:
            yield
        finally:
            for norm in self.norms:
                del norm.forward  # back to nn.GroupNorm.forward

    def _forward(self, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        if self._owned is not None:
            self._record(norm, x)
        if norm not in self.pooled:
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        mean, var = self.pooled[norm]
        if mean.shape[0] != x.shape[0]:
            raise ValueError(f'pooled statistics are for batch {mean.shape[0]}, got a tile of batch {x.shape[0]}')
        b, c = x.shape[:2]
        shape = (b, norm.num_groups) + (1, ) * (x.ndim - 1)
        grouped = x.reshape(b, norm.num_groups, c // norm.num_groups, *x.shape[2:])
        scale = torch.rsqrt(var + norm.eps).reshape(shape).to(x.dtype)
        out = ((grouped - mean.reshape(shape).to(x.dtype)) * scale).reshape(x.shape)
        if norm.affine:
            affine_shape = (1, c) + (1, ) * (x.ndim - 2)
            out = out * norm.weight.reshape(affine_shape) + norm.bias.reshape(affine_shape)
        return out

    def _record(self, norm: nn.GroupNorm, x: Tensor) -> None:
        y0, y1, x0, x1 = self._owned
        tile_h, tile_w = self._tile_size
        if x.ndim == 3:  # diffusers' attention normalises B x C x (h*w) tokens: recover h and w from the tile shape
            h = round((x.shape[-1] * tile_h / tile_w)**0.5)
            if h == 0 or x.shape[-1] % h:
                raise ValueError(f'cannot lay {x.shape[-1]} tokens out as a {tile_h}:{tile_w} feature map')
            x = x.reshape(*x.shape[:2], h, x.shape[-1] // h)
        h, w = x.shape[-2:]
        # the owned box on this feature map's grid (exact: tiles start on multiples of the VAE factor)
        box = x[..., y0 * h // tile_h:y1 * h // tile_h, x0 * w // tile_w:x1 * w // tile_w]
        grouped = box.reshape(box.shape[0], norm.num_groups, -1)
        var, mean = torch.var_mean(grouped.float(), dim=-1, correction=0)
        count, mean, m2 = grouped.shape[-1], mean.double(), var.double() * grouped.shape[-1]
        if norm in self._sums:  # Chan et al.'s pairwise update: no cancellation from E[x^2] - E[x]^2
            count_a, mean_a, m2_a = self._sums[norm]
            total = count_a + count
            delta = mean - mean_a
            mean, m2 = mean_a + delta * (count / total), m2_a + m2 + delta.square() * (count_a * count / total)
            count = total
        self._sums[norm] = (count, mean, m2)


def record_tiles(stats: GroupNormStatistics, run: Callable[[Tensor], object], image: Tensor, tile_h: int,
                 tile_w: int, ys: List[int], xs: List[int], passes: int) -> None:
    """``passes`` recording passes of ``run`` over the tiles at ``ys`` x ``xs`` of ``image``, each pooled."""
    height, width = image.shape[-2:]
    spans_y, spans_x = owned_spans(ys, tile_h, height), owned_spans(xs, tile_w, width)
    for _ in range(passes):
        for y, (y0, y1) in zip(ys, spans_y):
            for x, (x0, x1) in zip(xs, spans_x):
                with stats.recording((y0, y1, x0, x1), (tile_h, tile_w)):
                    run(image[..., y:y + tile_h, x:x + tile_w])
        stats.pool()
