"""Whole-image quality scorers for the PortraitSR-4K builder's candidate filter (``IMAGE_SCORERS``).

The paper (appendix C) filters the 4K candidates with Q-Align's aesthetic and quality scores; Q-Align's weights come
from a hub, so the scan takes any scorer from this registry instead. A scorer maps one ``H x W x 3`` float32 RGB image
in [0, 1] to one float and says which direction is better; :func:`passes_threshold` compares in that direction.
Scorers work on a copy shrunk to a fixed size, so a 4K photo and its 1080p version score alike and fast.
"""
from typing import Optional

import cv2
import numpy as np

from portraitisr.registry import IMAGE_SCORERS, METRICS
from portraitisr.utils.quantization import quantize_8bit


def shrink_to_max_side(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """``image`` resized (``cv2.INTER_AREA``) so that its longer side is at most ``max_side``; unchanged if smaller."""
    if max_side is None:
        return image
    h, w = image.shape[:2]
    scale = max(h, w) / float(max_side)
    if scale <= 1:
        return image
    size = (max(int(round(w / scale)), 1), max(int(round(h / scale)), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'a scorer needs an H x W x 3 RGB image, got shape {image.shape}')
    return np.ascontiguousarray(image, dtype=np.float32)


def passes_threshold(score: float, threshold: Optional[float], higher_is_better: bool) -> bool:
    """Whether ``score`` is on the good side of ``threshold`` (inclusive); always True without a threshold."""
    if threshold is None:
        return True
    return score >= threshold if higher_is_better else score <= threshold


@IMAGE_SCORERS.register_module()
class SharpnessScorer:
    """Variance of the Laplacian of the luminance (higher is sharper), on a copy whose long side is ``work_size``.

    A cheap blur detector: out-of-focus or upscaled photos have little high-frequency energy. The luminance is
    BT.601 ``Y`` in [0, 255] and the Laplacian is ``cv2.Laplacian`` (``ksize=1``, float64), so the values are those
    of the usual OpenCV recipe (blurry photos below ~100).

    Args:
        work_size: the long side the image is shrunk to first (``cv2.INTER_AREA``); ``None`` scores at full size.
    """

    higher_is_better = True

    def __init__(self, work_size: Optional[int] = 1024) -> None:
        if work_size is not None and work_size < 8:
            raise ValueError(f'work_size must be at least 8 pixels, got {work_size}')
        self.work_size = work_size

    def score(self, image: np.ndarray) -> float:
        """Sharpness of an ``H x W x 3`` float32 RGB image in [0, 1]."""
        image = shrink_to_max_side(_check_image(image), self.work_size)
        luma = (image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114) * 255.0
        return float(cv2.Laplacian(luma.astype(np.float64), cv2.CV_64F, ksize=1).var())

    def __repr__(self) -> str:
        return f'{type(self).__name__}(work_size={self.work_size})'


@IMAGE_SCORERS.register_module()
class MetricScorer:
    """A no-reference :class:`~portraitisr.evaluation.metrics.base_metric.ImageMetric` (NIQE, MUSIQ, ...) as a scorer.

    Args:
        metric: ``METRICS`` config of a no-reference image metric (default NIQE, whose pristine model ships with
            basicsr, so it runs offline).
        max_side: the long side the image is shrunk to before scoring (NIQE on a 4K photo is slow and measures
            sensor noise more than quality); ``None`` scores at full size.
    """

    def __init__(self, metric: Optional[dict] = None, max_side: Optional[int] = 1024) -> None:
        self.metric_cfg = dict(metric or dict(type='NIQE'))
        self.metric = METRICS.build(self.metric_cfg)
        if getattr(self.metric, 'needs_gt', False):
            raise ValueError(f'{self.metric_cfg["type"]} is a full-reference metric; a scorer needs a no-reference one')
        self.max_side = max_side
        self.higher_is_better = not bool(getattr(self.metric, 'lower_better', False))

    def score(self, image: np.ndarray) -> float:
        """The metric's value on an ``H x W x 3`` float32 RGB image in [0, 1] (8-bit quantised if the metric asks)."""
        import torch

        image = shrink_to_max_side(_check_image(image), self.max_side)
        pred = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].clamp(0, 1)
        if getattr(self.metric, 'quantize', False):
            pred = quantize_8bit(pred)
        with torch.no_grad():
            value = self.metric.score(pred)
        return float(value.reshape(-1)[0])

    def __repr__(self) -> str:
        return f'{type(self).__name__}(metric={self.metric_cfg}, max_side={self.max_side})'
