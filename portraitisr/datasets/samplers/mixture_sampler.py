"""Infinite sampler over a :class:`MixedDataset` that draws its sub-datasets in per-stage ratios.

HeadsUp (appendix B) trains 150k steps in two stages with different data mixtures:
PortraitSR-4K : FFHQ : LSDIR : DIV2K = 0.15 : 0.05 : 1.7 : 0.3 for the first 40k steps, then
1.5 : 0.5 : 1.7 : 0.3. The paper does not say whether a ratio is a sampling probability per dataset or a
repeat factor per sample; ``ratio_mode`` offers both (``'dataset'`` is the default).
"""
import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler

from portraitisr.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class MixtureSampler(Sampler):
    """Endless stream of indices of a mixture: pick a sub-dataset by the stage's ratios, then its next sample.

    Within each sub-dataset the samples come in shuffled epochs (a fresh permutation each time it is used
    up), so every sample of a sub-dataset is seen before any repeats, however rarely it is drawn.

    Args:
        dataset: a :class:`~portraitisr.datasets.MixedDataset` (anything with torch's ``cumulative_sizes``);
            mmengine passes it.
        ratios: one non-negative ratio per sub-dataset (a single stage), or
        stages: ``[dict(iters=40000, ratios=[...]), dict(ratios=[...])]``: each stage lasts ``iters``
            iterations; the last one goes on for ever (its ``iters``, if given, is ignored).
        batch_size: the per-rank batch size of the dataloader. It turns the number of indices drawn into the
            iteration number (``iteration = drawn // batch_size``); needed when there are several stages.
        seed: the base seed (mmengine passes the runner's); None draws one shared by all ranks
            (``sync_random_seed``). Rank ``r`` seeds its generators with ``(seed, r)`` (a numpy
            ``SeedSequence``; unlike ``seed + r``, seed 0 on rank 1 and seed 1 on rank 0 do not collide),
            so ranks see different streams.
        ratio_mode: ``'dataset'``: the probability of a sub-dataset is its ratio (normalised);
            ``'sample'``: it is ratio x its length (a ratio is then a per-sample repeat factor).

    The stream depends only on the seed, the rank, the sizes and the stages. mmengine's
    ``IterBasedTrainLoop`` resumes by replaying the dataloader from its start, so a resumed run draws exactly
    the same indices, and the stage switch falls on the same iteration.
    """

    def __init__(self,
                 dataset,
                 ratios: Optional[Sequence[float]] = None,
                 stages: Optional[Sequence[dict]] = None,
                 batch_size: Optional[int] = None,
                 seed: Optional[int] = None,
                 ratio_mode: str = 'dataset',
                 chunk_size: int = 1024) -> None:
        if not hasattr(dataset, 'cumulative_sizes'):
            raise TypeError(f'MixtureSampler needs a MixedDataset (with cumulative_sizes), got '
                            f'{type(dataset).__name__}')
        if (ratios is None) == (stages is None):
            raise ValueError('give either `ratios` (one stage) or `stages`')
        if ratio_mode not in ('dataset', 'sample'):
            raise ValueError(f"ratio_mode must be 'dataset' or 'sample', got {ratio_mode!r}")
        stages = [dict(ratios=list(ratios))] if stages is None else [dict(s) for s in stages]
        if not stages:
            raise ValueError('`stages` is empty')
        if batch_size is None and len(stages) > 1:
            raise ValueError('`batch_size` is needed to switch stages at an iteration number')
        if batch_size is not None and batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        self.dataset = dataset
        ends = list(dataset.cumulative_sizes)
        self.offsets = [0] + ends[:-1]
        self.sizes = [end - start for start, end in zip(self.offsets, ends)]
        self.names = list(getattr(dataset, 'names', [str(i) for i in range(len(self.sizes))]))
        self.ratio_mode, self.batch_size, self.chunk_size = ratio_mode, batch_size, int(chunk_size)

        self.stages: List[dict] = []
        self.probabilities: List[np.ndarray] = []
        self.stage_starts: List[int] = []  # first iteration of each stage
        start = 0
        for i, stage in enumerate(stages):
            unknown = set(stage) - {'iters', 'ratios'}
            if unknown or 'ratios' not in stage:
                raise ValueError(f'stage {i} must be dict(ratios=[...], iters=N), got {stage}')
            last = i == len(stages) - 1
            iters = stage.get('iters')
            if not last and (iters is None or int(iters) < 1):
                raise ValueError(f'stage {i} needs a positive `iters` (only the last stage may omit it)')
            self.probabilities.append(self._probabilities(stage['ratios'], i))
            self.stages.append(dict(iters=None if iters is None else int(iters), ratios=list(stage['ratios'])))
            self.stage_starts.append(start)
            start += int(iters) if not last else 0

        rank, _ = get_dist_info()
        self.rank = rank
        self.seed = sync_random_seed() if seed is None else int(seed)
        if self.seed < 0:
            raise ValueError(f'seed must be >= 0, got {seed}')
        self._drawn = 0

    def _probabilities(self, ratios: Sequence[float], stage: int) -> np.ndarray:
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != (len(self.sizes), ):
            raise ValueError(f'stage {stage}: {ratios.size} ratios for {len(self.sizes)} datasets {self.names}')
        if not np.isfinite(ratios).all() or (ratios < 0).any():
            raise ValueError(f'stage {stage}: ratios must be finite and >= 0, got {ratios.tolist()}')
        empty = [self.names[k] for k in range(len(self.sizes)) if ratios[k] > 0 and self.sizes[k] == 0]
        if empty:
            raise ValueError(f'stage {stage}: datasets {empty} are empty but have a positive ratio')
        weights = ratios * np.asarray(self.sizes, np.float64) if self.ratio_mode == 'sample' else ratios
        if weights.sum() <= 0:
            raise ValueError(f'stage {stage}: all ratios are zero')
        return weights / weights.sum()

    # ------------------------------------------------------------------ stages
    def stage_at(self, iteration: int) -> int:
        """Index of the stage that iteration ``iteration`` (0-based) belongs to."""
        stage = 0
        for i, start in enumerate(self.stage_starts):
            if iteration >= start:
                stage = i
        return stage

    @property
    def iteration(self) -> int:
        """Iteration of the last index drawn by the current iterator. The dataloader prefetches, so this
        runs a few batches ahead of the training loop."""
        return max(self._drawn - 1, 0) // self.batch_size if self.batch_size else 0

    @property
    def current_stage(self) -> int:
        """Stage of the last index drawn (see :attr:`iteration`)."""
        return self.stage_at(self.iteration)

    def _stage_end(self, stage: int) -> float:
        """Number of indices drawn when ``stage`` ends (infinite for the last)."""
        if stage + 1 >= len(self.stage_starts):
            return math.inf
        return self.stage_starts[stage + 1] * self.batch_size

    # ------------------------------------------------------------------ sampling
    def __iter__(self) -> Iterator[int]:
        # One generator picks the sub-datasets, one per sub-dataset shuffles it: the choice stream does not
        # change when a dataset grows, and each sub-dataset's epochs are independent of the others.
        generators = [np.random.default_rng(s)
                      for s in np.random.SeedSequence([self.seed, self.rank]).spawn(len(self.sizes) + 1)]
        choose, shufflers = generators[0], generators[1:]
        orders = [np.empty(0, dtype=np.int64) for _ in self.sizes]
        positions = [0 for _ in self.sizes]
        drawn = 0
        self._drawn = 0
        while True:
            stage = self.stage_at(drawn // self.batch_size) if self.batch_size else 0
            count = int(min(self.chunk_size, self._stage_end(stage) - drawn))
            for k in choose.choice(len(self.sizes), size=count, p=self.probabilities[stage]):
                if positions[k] >= len(orders[k]):
                    orders[k], positions[k] = shufflers[k].permutation(self.sizes[k]), 0
                index = self.offsets[k] + int(orders[k][positions[k]])
                positions[k] += 1
                drawn += 1
                self._drawn = drawn
                yield index

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the stream is one endless epoch (mmengine calls this on every sampler)."""
