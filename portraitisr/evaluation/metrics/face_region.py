"""Full-reference metrics on the face: prediction and GT faces aligned from the same landmarks.

HeadsUp's claim is about the face region (HeadsUp, arXiv 2510.09924, sections 2.2 and 4), so every full-reference metric
has a face-region version: :class:`FaceRegionMetric` wraps any registered :class:`ImageMetric` and scores the aligned
face crops instead of the whole image. :class:`FacePSNR` is PSNR restricted to the part of the crop that lies
inside the image.

Landmarks come from the sample's metainfo (``face_landmarks``: one ``5 x 2`` face, or ``faces_landmarks``:
``N x 5 x 2``, in image pixels); without them a configured face detector finds the faces on the GT. Images with
no face are skipped and counted (``<name>_faces`` is the number of faces scored).
"""
from abc import abstractmethod
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, METRICS
from .base_metric import ImageMetric
from .psnr import psnr

_DEFAULT_ALIGNER = dict(type='FaceAligner', template='ffhq512', output_size=512)


def sample_landmarks(sample: Optional[dict]) -> Optional[np.ndarray]:
    """``N x 5 x 2`` face landmarks (image pixels) of a data sample or its metainfo, or ``None`` when it has none.

    ``faces_landmarks`` (``N x 5 x 2``, all faces) wins over ``face_landmarks`` (one face ``5 x 2``, or
    ``N x 5 x 2``); arrays and tensors are accepted.
    """
    if sample is None:
        return None
    metainfo = sample.get('metainfo', sample)
    for key in ('faces_landmarks', 'face_landmarks'):
        value = metainfo.get(key) if isinstance(metainfo, dict) else None
        if value is None:
            continue
        value = np.asarray(value.cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
        return value.reshape(-1, 5, 2) if value.size else None
    return None


def find_landmarks(sample: Optional[dict], image: Optional[Tensor], detector=None) -> Optional[np.ndarray]:
    """``N x 5 x 2`` landmarks of a sample: from its metainfo, else found by ``detector`` on ``image``
    (``1 x 3 x H x W`` in [0, 1]); ``None`` when neither gives a face."""
    landmarks = sample_landmarks(sample)
    if landmarks is None and detector is not None and image is not None:
        detections = detector.detect(image[0].detach().float().clamp(0, 1).cpu())[0]
        landmarks = detections.landmarks.astype(np.float64) if len(detections) else None
    return landmarks


class _FaceMetricBase(ImageMetric):
    """Finds the faces of a sample and aligns them; subclasses score the aligned crops."""

    def __init__(self, aligner: Optional[dict] = None, detector: Optional[dict] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.aligner = FACE_ALIGNERS.build(aligner or _DEFAULT_ALIGNER)
        self.detector = FACE_DETECTORS.build(detector) if detector is not None else None
        self.face_count = 0

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        """Mean over the faces of the one image in ``pred``/``gt`` (``1 x 3 x H x W``); empty without a face."""
        landmarks = find_landmarks(sample, gt, self.detector)
        if landmarks is None:
            return torch.zeros(0, dtype=torch.float64)
        matrices = self.aligner.estimate(torch.as_tensor(landmarks, dtype=torch.float64))
        count = len(landmarks)
        pred_faces = self.aligner.align(pred.expand(count, -1, -1, -1), matrices)
        gt_faces = self.aligner.align(gt.expand(count, -1, -1, -1), matrices)
        inside = self.aligner.validity_mask(gt.expand(count, -1, -1, -1), matrices) > 0.999
        self.face_count += count
        return self.score_faces(pred_faces, gt_faces, inside).mean().reshape(1)

    @abstractmethod
    def score_faces(self, pred_faces: Tensor, gt_faces: Tensor, inside: Tensor) -> Tensor:
        """Per-face scores of ``N x 3 x S x S`` aligned crops; ``inside`` (``N x 1 x S x S``) marks the crop's
        pixels that lie inside the image."""

    def compute_metrics(self, results: List[float]) -> dict:
        metrics = super().compute_metrics(results)
        metrics[f'{self.metric_name}_faces'] = self.face_count
        self.face_count = 0
        return metrics


@METRICS.register_module()
class FaceRegionMetric(_FaceMetricBase):
    """Any full-reference :class:`ImageMetric` on the aligned faces, reported as ``Face<name>``.

    Args:
        metric: the wrapped metric's config, e.g. ``dict(type='LPIPS')``; it must be full-reference.
        aligner: ``FACE_ALIGNERS`` config (default: the FFHQ template at 512, the crops face restorers see).
        detector: ``FACE_DETECTORS`` config used on the GT when a sample has no landmarks (default: none, such
            samples are skipped).
        quantize / prefix: see :class:`ImageMetric` (the wrapped metric's own ``quantize`` is turned off).
    """

    def __init__(self, metric: dict, aligner: Optional[dict] = None, detector: Optional[dict] = None,
                 quantize: bool = True, prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(aligner=aligner, detector=detector, quantize=quantize, prefix=prefix,
                         collect_device=collect_device)
        inner = METRICS.build(dict(metric, quantize=False))
        if not isinstance(inner, ImageMetric) or not inner.needs_gt:
            raise TypeError(f'FaceRegionMetric wraps full-reference image metrics, got {type(inner).__name__}')
        self.metric = inner
        self.metric_name = f'Face{inner.metric_name}'
        self.lower_better = inner.lower_better

    def score_faces(self, pred_faces: Tensor, gt_faces: Tensor, inside: Tensor) -> Tensor:
        return self.metric.score(pred_faces, gt_faces)


@METRICS.register_module()
class FacePSNR(_FaceMetricBase):
    """PSNR between the predicted and GT faces aligned from the GT landmarks, over the crop's pixels inside the
    image (the border fill of a face near the image edge is identical in both and would inflate the score).

    Args:
        aligner: ``FACE_ALIGNERS`` config (default: FFHQ template at 512).
        detector / quantize / prefix: see :class:`FaceRegionMetric`.
        test_y_channel: as :class:`PSNR` (Y of YCbCr by default).
    """

    metric_name = 'FacePSNR'
    lower_better = False

    def __init__(self, aligner: Optional[dict] = None, detector: Optional[dict] = None, test_y_channel: bool = True,
                 quantize: bool = True, prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(aligner=aligner, detector=detector, quantize=quantize, prefix=prefix,
                         collect_device=collect_device)
        self.test_y_channel = test_y_channel

    def score_faces(self, pred_faces: Tensor, gt_faces: Tensor, inside: Tensor) -> Tensor:
        weight = inside.expand_as(pred_faces).to(pred_faces.dtype)
        # PSNR over the pixels inside the image: zero the rest in both, rescale the MSE by the coverage
        value = psnr(pred_faces * weight, gt_faces * weight, self.test_y_channel)
        coverage = weight.flatten(1).mean(1).clamp_min(1e-6)
        return value + 10 * torch.log10(coverage.double())
