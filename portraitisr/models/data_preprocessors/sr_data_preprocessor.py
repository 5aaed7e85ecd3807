"""Batching, device placement and the online degradation of super-resolution batches."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor
from torch import Tensor, nn

from portraitisr.degradations import build_degradation
from portraitisr.registry import MODELS


def _stack(images: Sequence[Tensor]) -> Tensor:
    if isinstance(images, Tensor):
        return images
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise ValueError(f'Images of one batch must share a size, got {sorted(sizes)}: use '
                         'batch_size=1 for test sets of mixed sizes, or crop in the dataset')
    return torch.stack(list(images))


def _metainfo_list(metainfo, batch_size: int) -> List[dict]:
    """``pseudo_collate`` turns per-sample dicts into a dict of lists; undo that."""
    if metainfo is None:
        return [{} for _ in range(batch_size)]
    if isinstance(metainfo, dict):
        return [{key: values[i] for key, values in metainfo.items()} for i in range(batch_size)]
    return list(metainfo)


def _build(degradation: Union[str, dict, None], seed: int) -> Optional[nn.Module]:
    if degradation is None:
        return None
    return build_degradation(degradation, seed=seed)


@MODELS.register_module()
class SRDataPreprocessor(BaseDataPreprocessor):
    """Turn a collated batch into ``{'inputs': lq, 'gt': gt, 'metainfo': [...]}`` on the device.

    Batches without an ``lq`` are degraded here, batched on the device, with ``degradation``: a
    preset name (``'osediff'``), ``dict(preset=..., **overrides)`` or a ``DEGRADATIONS`` config.
    Its seed is ``degradation_seed``, by default the process's torch seed, which mmengine sets per
    rank (``randomness.diff_rank_seed``), so ranks degrade differently and reproducibly.
    In evaluation the degradation (``eval_degradation`` when given, else ``degradation``) is re-seeded
    from ``eval_seed`` and the first sample's index, so validation LQs are the same at every validation
    and no training random state is consumed.

    The GT:

    - in training it is the target the degradation returns: the dataset GT, or its USM-sharpened copy
      when the degradation sharpens (Real-ESRGAN's ``use_usm``: the LQ is then synthesised from the
      sharpened GT and the losses compare against it). Whether a recipe sharpens is its config's choice;
    - in evaluation (``training=False``: ``val_step``/``test_step``) it is always the dataset GT, untouched,
      whatever the degradation returns: metrics compare against what the dataset holds, so methods scored
      on the same test set are comparable.

    ``inputs`` is the LQ upscaled to the GT size (what a one-step SD restorer takes): a degraded
    LQ smaller than the GT is upscaled bicubically here; test LQs are upscaled by the dataset.
    All images ``B x 3 x H x W`` float32 in [0, 1].

    Args:
        degradation: the training degradation (and the evaluation one unless ``eval_degradation`` is given).
        degradation_seed: seed of the training degradation (default: the process's torch seed).
        eval_seed: base of the per-batch evaluation seed.
        eval_degradation: the degradation of evaluation batches, e.g. the test protocol's native-size LQ
            (``dict(preset='osediff', resize_back=False)``: an LQ of ``H/4`` that is then upscaled bicubically,
            as OSEDiff's test script enlarges its LQ) while training resizes back with a random mode.
    """

    def __init__(self,
                 degradation: Union[str, dict, None] = None,
                 degradation_seed: Optional[int] = None,
                 eval_seed: int = 0,
                 eval_degradation: Union[str, dict, None] = None) -> None:
        super().__init__()
        if degradation_seed is None:
            degradation_seed = torch.initial_seed() % 2**31
        self.degradation = _build(degradation, degradation_seed)
        self.eval_degradation = _build(eval_degradation, eval_seed)
        self.eval_seed = eval_seed

    def _degrade_lq(self, gt: Tensor, metainfo: List[dict], training: bool) -> dict:
        """The degradation's output for ``gt`` (``lq`` and the training target ``gt``)."""
        degradation = self.degradation if training else (self.eval_degradation or self.degradation)
        if degradation is None:
            raise ValueError('The batch has no `lq` and the data preprocessor has no degradation: '
                             'configure `data_preprocessor.degradation` or use a paired dataset')
        if training:
            return degradation(gt)
        saved = degradation.get_rng_state()
        degradation.manual_seed(self.eval_seed + int(metainfo[0].get('index', 0)))
        try:
            return degradation(gt)
        finally:
            degradation.set_rng_state(saved)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        gt = _stack(data['gt']).float() if data.get('gt') is not None else None
        lq = _stack(data['lq']).float() if data.get('lq') is not None else None
        batch_size = (gt if gt is not None else lq).shape[0]
        metainfo = _metainfo_list(data.get('metainfo'), batch_size)
        if lq is None:
            if gt is None:
                raise KeyError('A batch needs `gt` or `lq` images')
            degraded = self._degrade_lq(gt, metainfo, training)
            lq = degraded['lq']
            if training:  # the recipe's training target (sharpened when the degradation sharpens)
                gt = degraded['gt']
        if gt is not None and lq.shape[-2:] != gt.shape[-2:]:
            lq = F.interpolate(lq, size=gt.shape[-2:], mode='bicubic', align_corners=False)
            lq = lq.clamp(0, 1)
        return dict(inputs=lq, gt=gt, metainfo=metainfo)
