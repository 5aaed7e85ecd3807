"""Aligned face crops for studies that judge faces (HeadsUp's participants "are given five face images").

One similarity matrix per item, estimated once and applied to every method's image of that item, so that the crops
differ only in what the methods restored, never in framing: the landmarks come from the ground truth when there is
one, else the per-coordinate median over the methods' images (robust to one method that lost the face). The face is
the largest one the detector finds (portraits have one subject; our choice). The crop is the FFHQ 512 template
scaled to ``crop_size`` (facexlib's alignment, as in HeadsUp's face pipeline: HeadsUp, arXiv 2510.09924, appendix "Face
Alignment").

This module imports torch and the face stack; :mod:`portraitisr.study.create` imports it only when face crops are
asked for, so studies without face crops never import torch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from portraitisr.face.alignment import FaceAligner
from portraitisr.face.detection import DlibFaceDetector, build_default_face_detector
from portraitisr.utils.image_io import image_to_tensor, tensor_to_image

__all__ = ['FaceCropper']


class FaceCropper:
    """Detect, align and crop faces.

    Args:
        crop_size: side of the square crops in pixels.
        detector: ``'auto'`` (the best offline detector, see ``build_default_face_detector``), ``'hog'`` or
            ``'mmod'`` (dlib).
    """

    def __init__(self, crop_size: int = 512, detector: str = 'auto') -> None:

        if crop_size < 64:
            raise ValueError(f'crop_size must be at least 64 pixels, got {crop_size}')
        if detector == 'auto':
            self.detector = build_default_face_detector(only_keep_largest=True)
        elif detector in ('hog', 'mmod'):
            self.detector = DlibFaceDetector(model=detector, upsample_times=1, only_keep_largest=True)
        else:
            raise ValueError(f"detector must be 'auto', 'hog' or 'mmod', got {detector!r}")
        self.aligner = FaceAligner('ffhq512', output_size=crop_size)
        self.crop_size = int(crop_size)

    def landmarks(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """``5 x 2`` landmarks (input pixels) of the largest face in ``H x W x 3`` float RGB, or None."""
        found = self.detector.detect(np.ascontiguousarray(rgb))[0]
        if len(found.landmarks) == 0:
            return None
        return np.asarray(found.landmarks[0], dtype=np.float64)

    def matrix(self, reference: Optional[np.ndarray], images: Sequence[np.ndarray]) -> Optional[np.ndarray]:
        """The ``2 x 3`` image -> crop matrix of one item: from ``reference`` (the ground truth) when given, else
        from the median landmarks over ``images``; None when no face is found."""
        if reference is not None:
            points = self.landmarks(reference)
        else:
            found = [p for p in (self.landmarks(image) for image in images) if p is not None]
            points = np.median(np.stack(found), axis=0) if found else None
        if points is None:
            return None
        return self.aligner.estimate(points[None]).numpy()[0]

    def crop(self, rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """``crop_size x crop_size x 3`` float32 RGB in [0, 1]: ``rgb`` warped by ``matrix``."""
        import torch

        with torch.no_grad():  # float32: a 4K photo is 200 MB as a tensor; display crops need no more precision
            face = self.aligner.align(image_to_tensor(rgb), torch.from_numpy(matrix)[None])
        return tensor_to_image(face)
