"""Whole-image GroupNorm statistics for networks run tile by tile (the VAE encoder and decoder of SD).

A GroupNorm normalises with the mean and variance of each (sample, group) over the whole feature map. Run on a
tile, it uses the tile's own statistics instead, so tiles of a sky and of a face come out with shifted tones: the
tile seams of tiled SD VAEs. cswry/OSEDiff's tiled VAE (``my_utils/vaehook.py``, from pkuliyi2015's "Tiled VAE")
avoids this by running all tiles layer by layer and pooling the statistics at every GroupNorm, with the waiting
tiles' activations moved to the CPU. :func:`run_tiles_in_step` does the same over a chain of stages
(:mod:`.vae_stages`): before a stage runs, one short recording run per GroupNorm in it pools that GroupNorm's
statistics over the part of each tile the tile *owns* (the owned parts partition the image: overlaps are split in
the middle), the earlier GroupNorms already normalising with theirs. :class:`GroupNormStatistics` swaps the
GroupNorms' forward to record and to apply the pooled statistics.
"""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .vae_stages import Stage

__all__ = ['GroupNormStatistics', 'StopTile', 'owned_spans', 'run_tiles_in_step']


class StopTile(Exception):
    """Raised by a recorded GroupNorm to end a tile's run early (see ``GroupNormStatistics.recording``)."""


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

    Run that way, deep GroupNorms record inputs normalised with per-tile statistics of the earlier ones; pooling
    them one at a time in call order (``only=``, as :func:`run_tiles_in_step` does) makes every one exact.

    ``owned`` is in the units of the tile input; a GroupNorm whose feature map is ``k`` times the tile's size
    counts the ``k``-times scaled box (so the decoder's upsampled layers and the encoder's downsampled ones are both
    counted over the same image region).
    """

    def __init__(self, module: Union[nn.Module, Sequence[nn.GroupNorm]]):
        modules = module.modules() if isinstance(module, nn.Module) else module
        self.norms = [m for m in modules if isinstance(m, nn.GroupNorm)]
        self.pooled: Dict[nn.GroupNorm, Tuple[Tensor, Tensor]] = {}
        self._sums: Dict[nn.GroupNorm, Tuple[int, Tensor, Tensor]] = {}  # count, mean, M2
        self._owned: Optional[Tuple[int, int, int, int]] = None
        self._tile_size: Optional[Tuple[int, int]] = None
        self._only: Optional[nn.GroupNorm] = None

    def __bool__(self) -> bool:
        return bool(self.norms)

    # ------------------------------------------------------------------ recording and applying
    @contextlib.contextmanager
    def recording(self, owned: Tuple[int, int, int, int], tile_size: Tuple[int, int],
                  only: Optional[nn.GroupNorm] = None) -> Iterator[None]:
        """Run one tile, adding its owned part to the sums (GroupNorms with pooled statistics normalise with them).

        With ``only``, just that GroupNorm is recorded and the tile stops right after it (:class:`StopTile`, which
        this context swallows): what follows it is not needed.
        """
        self._owned, self._tile_size, self._only = owned, tile_size, only
        try:
            with self._patched():
                yield
        except StopTile:
            pass
        finally:
            self._owned = self._tile_size = self._only = None

    def pool(self) -> None:
        """Turn the recorded sums into per-(sample, group) mean and variance (replacing earlier ones of the same
        GroupNorms); clears the sums."""
        for norm, (count, mean, m2) in self._sums.items():
            self.pooled[norm] = (mean.float(), (m2 / count).float())
        self._sums = {}

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Every GroupNorm of the module normalises with the pooled statistics."""
        missing = [n for n in self.norms if n not in self.pooled]
        if missing:
            raise RuntimeError(f'{len(missing)} of {len(self.norms)} GroupNorms have no pooled statistics: record '
                               'every tile and call pool() first')
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
        if self._owned is not None and self._only in (None, norm):
            self._record(norm, x)
            if self._only is norm:
                raise StopTile
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


def run_tiles_in_step(stages: Sequence['Stage'], tiles: List[Tensor], owned: List[Tuple[int, int, int, int]],
                      tile_size: Tuple[int, int], device: torch.device, store: torch.device) -> List[Tensor]:
    """Run all ``tiles`` through a chain of ``stages`` (:mod:`.vae_stages`) together, each GroupNorm normalising with
    the statistics of all tiles' owned parts.

    Before a stage runs for real, one recording run per GroupNorm in it pools that GroupNorm's statistics over all
    tiles, the earlier ones already normalising with theirs; each recording run stops right after its GroupNorm.
    So every GroupNorm sees the untiled statistics wherever the owned parts see their whole receptive field. The
    recording runs add about half a ResNet block's convolutions per block (about 1.5x a tiled run's work; the tiny
    CPU decoder of ``tools/experiments/tiled_group_norm.py`` takes 2.1-2.2x the time). Tiles wait between stages on
    ``store`` and run on ``device``. ``store`` holds one stage's activations of all tiles, overlaps included: about
    1.6x the untiled activation for OSEDiff-sized tiles (27 GB in float32, 13 GB in bf16 at the 256-channel
    full-resolution layer of a 4096 x 4096 decode); on a GPU run it is the CPU, so GPU memory stays bounded by one
    tile, at the cost of moving every tile's activations to the device and back at each stage.

    Args:
        tiles: stage-0 inputs ``B x C x th x tw``, in any order; ``owned``: each tile's owned box ``(y0, y1, x0,
            x1)`` relative to it, in the same units as ``tile_size`` (``th``, ``tw``).
    Returns:
        The last stage's outputs, on ``store``, in the order of ``tiles``.
    """
    tiles = [t.to(store) for t in tiles]  # a new list: the caller's tiles are not replaced
    for stage in stages:
        stats = GroupNormStatistics(stage.norms)
        for norm in stats.norms:
            for tile, box in zip(tiles, owned):
                with stats.recording(box, tile_size, only=norm):
                    stage.fn(tile.to(device))
            stats.pool()
        with stats.applied() if stats else contextlib.nullcontext():
            for index, tile in enumerate(tiles):
                tiles[index] = stage.fn(tile.to(device)).to(store)  # frees the input: at most one stage in memory
                del tile
    return tiles
