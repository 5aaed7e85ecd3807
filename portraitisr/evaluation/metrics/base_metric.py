"""Base class of the per-image quality metrics: one value per image, the mean over the test set."""
from abc import abstractmethod
from typing import Any, List, Optional, Sequence

from mmengine.evaluator import BaseMetric
from torch import Tensor

from portraitisr.utils.quantization import quantize_8bit

__all__ = ['ImageMetric', 'quantize_8bit']


class ImageMetric(BaseMetric):
    """A metric with one score per image; subclasses implement :meth:`score`.

    The same ``score`` serves the runner (``process``/``compute_metrics``, mean over the test set) and
    ``tools/eval_folders.py`` (per-image rows), so the two cannot disagree.

    Class attributes:
        metric_name: the reported name (the CSV column), e.g. ``'PSNR'``.
        lower_better: direction, for the tables' arrows.
        needs_gt: full-reference (True) or no-reference (False).

    Args:
        quantize: round predictions to 8-bit levels first (default True).
        prefix: metric-name prefix (e.g. the test-set name).
    """

    metric_name: str = ''
    lower_better: bool = False
    needs_gt: bool = True
    default_prefix = ''

    def __init__(self, quantize: bool = True, prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.quantize = quantize

    @abstractmethod
    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        """Per-image scores (``B`` float64) of ``B x 3 x H x W`` RGB in [0, 1]; ``sample`` is the data sample
        of a one-image batch (metainfo such as face landmarks), ``None`` when not known."""

    def _prepare(self, sample: dict) -> tuple:
        pred = sample['pred'][None].float()
        if self.quantize:
            pred = quantize_8bit(pred)
        gt = sample.get('gt')
        if self.needs_gt and gt is None:
            raise KeyError(f'{self.metric_name} is a full-reference metric: give the test dataset ground truth '
                           '(`gt_root` / a manifest with HQ images)')
        return pred, (gt[None].float().to(pred.device) if gt is not None else None)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred, gt = self._prepare(sample)
            value = self.score(pred, gt, sample)
            if value is not None and value.numel():
                self.results.append(float(value.reshape(-1)[0]))

    def compute_metrics(self, results: List[float]) -> dict:
        if not results:
            return {self.metric_name: float('nan')}
        return {self.metric_name: sum(results) / len(results)}
