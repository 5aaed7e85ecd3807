"""Detect faces in a batch of images and align them, keeping what is needed to paste them back."""
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch


@dataclass
class FaceBatch:
    """The aligned faces of a batch of images.

    Attributes:
        faces: ``N x 3 x h x w`` aligned crops in [0, 1].
        matrices: ``N x 2 x 3`` image -> crop matrices (the images' float dtype).
        landmarks: ``N x 5 x 2`` landmarks in image pixels.
        boxes: ``N x 4`` boxes ``x1, y1, x2, y2`` in image pixels.
        scores: ``(N,)`` detection scores.
        image_index: ``(N,)`` long, the image each face comes from.
        masks: ``N x 1 x h x w``: 1 where the crop sees the image, 0 in the border fill.
    """
    faces: torch.Tensor
    matrices: torch.Tensor
    landmarks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    image_index: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.faces.shape[0]

    def to(self, *args, **kwargs) -> 'FaceBatch':
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == 'image_index':
                device = kwargs.get('device', next((a for a in args if isinstance(a, (str, torch.device))), None))
                moved[f.name] = value.to(device) if device is not None else value
            else:
                moved[f.name] = value.to(*args, **kwargs)
        return FaceBatch(**moved)


def _tensor(x, dtype, device, shape_tail) -> torch.Tensor:
    if x is None:
        return torch.zeros((0, *shape_tail), dtype=dtype, device=device)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    x = torch.as_tensor(x).to(device=device, dtype=dtype)
    return x.reshape(-1, *shape_tail)


def detect_and_align(images: torch.Tensor, detector, aligner, max_faces: Optional[int] = None) -> FaceBatch:
    """Run ``detector.detect(images)`` and align every face with ``aligner`` (a :class:`FaceAligner`).

    Args:
        images: ``B x 3 x H x W`` float tensor in [0, 1].
        detector: an object whose ``detect(images)`` returns one detection record per image with numpy
            ``boxes (n, 4)``, ``scores (n,)`` and ``landmarks (n, 5, 2)`` (left eye, right eye, nose, left mouth,
            right mouth; the image's left first).
        aligner: the :class:`FaceAligner` giving the template, crop size and matrix estimator.
        max_faces: keep at most this many faces per image, the highest scores first (``None``: all, in the
            detector's order).

    Returns:
        A :class:`FaceBatch`; with no face at all, its tensors have ``N = 0`` and the right trailing shapes.
    """
    if images.dim() != 4:
        raise ValueError(f'images must be B x C x H x W, got {tuple(images.shape)}')
    device, dtype = images.device, images.dtype
    detections = detector.detect(images)
    if len(detections) != images.shape[0]:
        raise ValueError(f'The detector returned {len(detections)} results for {images.shape[0]} images')
    boxes, scores, landmarks, index = [], [], [], []
    for i, det in enumerate(detections):
        det_boxes = _tensor(getattr(det, 'boxes', None), torch.float64, device, (4,))
        det_scores = _tensor(getattr(det, 'scores', None), torch.float64, device, ())
        det_landmarks = _tensor(getattr(det, 'landmarks', None), torch.float64, device, (5, 2))
        n = det_landmarks.shape[0]
        if n == 0:
            continue
        if det_scores.numel() == 0:
            det_scores = torch.ones(n, dtype=torch.float64, device=device)
        if det_boxes.shape[0] == 0:
            det_boxes = torch.cat([det_landmarks.amin(1), det_landmarks.amax(1)], 1)
        if max_faces is not None and n > max_faces:
            keep = torch.argsort(det_scores, descending=True, stable=True)[:max_faces]
            det_boxes, det_scores, det_landmarks = det_boxes[keep], det_scores[keep], det_landmarks[keep]
            n = max_faces
        boxes.append(det_boxes)
        scores.append(det_scores)
        landmarks.append(det_landmarks)
        index.append(torch.full((n,), i, dtype=torch.long, device=device))
    h, w = aligner.crop_size
    channels = images.shape[1]
    if not landmarks:
        return FaceBatch(faces=images.new_zeros(0, channels, h, w), matrices=images.new_zeros(0, 2, 3),
                         landmarks=images.new_zeros(0, 5, 2), boxes=images.new_zeros(0, 4),
                         scores=images.new_zeros(0), image_index=torch.zeros(0, dtype=torch.long, device=device),
                         masks=images.new_zeros(0, 1, h, w))
    landmarks = torch.cat(landmarks)
    image_index = torch.cat(index)
    matrices = aligner.estimate(landmarks).to(dtype)
    faces = aligner.align(images, matrices, image_index)
    masks = aligner.validity_mask(images, matrices, image_index)
    return FaceBatch(faces=faces, matrices=matrices, landmarks=landmarks.to(dtype), boxes=torch.cat(boxes).to(dtype),
                     scores=torch.cat(scores).to(dtype), image_index=image_index, masks=masks)
