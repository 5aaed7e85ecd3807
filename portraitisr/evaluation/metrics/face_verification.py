"""IDFSR's identity columns ("IDFSR: Personalized Face Super-Resolution with Identity Decoupling and Fitting", section
4.4 and Tables 1-3): face verification accuracy and IDS.

IDFSR measures both with the DeepFace toolkit between each SR face and its GT: "face verification is based on ID
similarity, where a default threshold determines whether the GT and SR images belong to the same person" (Table 2,
IDV, higher is better), and IDS, "ID similarity measured by DeepFace" with a down arrow - DeepFace's default cosine
*distance* ``1 - cos`` (lower is better). DeepFace's networks come from a hub, so here any registered identity
extractor measures (default: facexlib's ArcFace IR-SE50, as :class:`IDScore`; offline, dlib's ResNet), and
verification uses that extractor's own threshold on the cosine similarity (its ``verification_threshold``
attribute; same person when the similarity is strictly above it). Numbers are therefore on the chosen extractor's
scale, not DeepFace VGG-Face's.

Faces are aligned from the GT landmarks of the sample (``metainfo['face_landmarks']``), both images with the same
matrix, as :class:`IDScore` does.
"""
from typing import List, Optional

import torch
from torch import Tensor

from portraitisr.models.conditioning.identity_embedder import verification_threshold
from portraitisr.registry import METRICS
from .identity_metrics import _FaceIdentityMetric

__all__ = ['IDS', 'FaceVerificationAccuracy']

_DEFAULT_EXTRACTOR = dict(type='ArcFaceIRSE', weights='recognition_arcface_ir_se50.pth')
_DEFAULT_ALIGNER = dict(type='FaceAligner', template='arcface112', border_value=(0, 0, 0))


@METRICS.register_module()
class IDS(_FaceIdentityMetric):
    """IDFSR's IDS (lower is better): the cosine distance ``1 - cos(E(SR), E(GT))``, mean over an image's faces,
    then over images (DeepFace's ``distance_metric='cosine'``).

    Args:
        extractor / aligner / detector: as :class:`IDScore` (defaults: ArcFace IR-SE50, ArcFace 112 crop).
    """

    metric_name = 'IDS'
    lower_better = True

    def __init__(self, extractor: Optional[dict] = None, aligner: Optional[dict] = None,
                 detector: Optional[dict] = None, quantize: bool = True, prefix: Optional[str] = None,
                 collect_device: str = 'cpu') -> None:
        super().__init__(extractor or dict(_DEFAULT_EXTRACTOR), aligner or dict(_DEFAULT_ALIGNER), detector,
                         quantize, prefix, collect_device)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        cos = self.face_cosines(pred, gt, sample)
        if cos is None:
            return torch.zeros(0, dtype=torch.float64)
        return (1 - cos).mean()[None]


@METRICS.register_module()
class FaceVerificationAccuracy(_FaceIdentityMetric):
    """IDFSR's IDV (Table 2, higher is better): the percentage of SR faces verified as their GT's person.

    A face is verified when the cosine similarity of its SR and GT embeddings is strictly above the threshold; an
    image counts the fraction of its faces verified; the metric is the mean over images, in percent.

    Args:
        extractor / aligner / detector: as :class:`IDS`.
        threshold: cosine-similarity threshold; default the extractor's own ``verification_threshold`` (a clear
            error when it has none).
    """

    metric_name = 'IDV'
    lower_better = False

    def __init__(self, extractor: Optional[dict] = None, aligner: Optional[dict] = None,
                 detector: Optional[dict] = None, threshold: Optional[float] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(extractor or dict(_DEFAULT_EXTRACTOR), aligner or dict(_DEFAULT_ALIGNER), detector,
                         quantize, prefix, collect_device)
        self.threshold = float(threshold) if threshold is not None else verification_threshold(self.extractor)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        cos = self.face_cosines(pred, gt, sample)
        if cos is None:
            return torch.zeros(0, dtype=torch.float64)
        return (cos > self.threshold).double().mean()[None]

    def compute_metrics(self, results: List[float]) -> dict:
        if not results:
            return {self.metric_name: float('nan')}
        return {self.metric_name: 100.0 * sum(results) / len(results)}
