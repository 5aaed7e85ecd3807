"""The common face-detector interface: inputs, outputs and facexlib-style post-processing.

Every backend (RetinaFace, dlib, ...) subclasses :class:`BaseFaceDetector` and implements only
:meth:`BaseFaceDetector._detect_batch` on RGB ``uint8`` arrays of one size. The base class turns whatever the user
passes into such arrays, resizes (``resize``), tiles very large images, maps the results back to input pixels and
applies the options of facexlib's ``FaceRestoreHelper.get_face_landmarks_5``:

* ``resize``: the short side is resized to ``resize`` (LANCZOS4, up or down) for detection; boxes and landmarks are
  scaled back to the input image;
* ``eye_dist_threshold``: faces whose eye distance (input pixels) is below it are dropped (side faces, tiny faces);
* ``only_keep_largest`` (wins over ``only_center_face``): keep the face with the largest box area, the box clipped to
  the image; ``only_center_face``: keep the face whose box centre is nearest the image centre.

Faces are sorted by score, highest first. Boxes and landmarks are not clipped to the image (as in facexlib).
"""
from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn as nn

from portraitisr.utils.tiling import tile_starts

__all__ = ['FaceDetections', 'BaseFaceDetector', 'ImageInput', 'to_rgb_uint8', 'nms_detections']

#: One image (``H x W``, ``H x W x 1|3|4`` array, ``3 x H x W`` tensor), a list of them, a ``B x H x W x C`` array or a
#: ``B x 3 x H x W`` tensor.
ImageInput = Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]]

#: Images whose short side is below this many pixels hold no detectable face: their result is empty.
MIN_IMAGE_SIDE = 8


@dataclass
class FaceDetections:
    """The faces found in one image, sorted by score (highest first).

    Attributes:
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in input-pixel coordinates.
        scores: ``(N,)`` float32; the scale is the backend's (RetinaFace: probability, dlib HOG: SVM margin,
            dlib MMOD: CNN confidence).
        landmarks: ``(N, 5, 2)`` float32 ``(x, y)``: left eye, right eye, nose, left mouth corner, right mouth corner,
            where "left" is the image's left (facexlib / RetinaFace / ArcFace order).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)
        if not len(self.boxes) == len(self.scores) == len(self.landmarks):
            raise ValueError(f'inconsistent face counts: {len(self.boxes)} boxes, {len(self.scores)} scores, '
                             f'{len(self.landmarks)} landmark sets')

    @classmethod
    def empty(cls) -> 'FaceDetections':
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, ), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index) -> 'FaceDetections':
        """The faces at ``index`` (an int, a slice, an index array or a boolean mask)."""
        index = np.atleast_1d(np.arange(len(self))[index])
        return FaceDetections(self.boxes[index], self.scores[index], self.landmarks[index])

    def sorted(self) -> 'FaceDetections':
        """Sorted by score, highest first (stable for ties)."""
        return self.select(np.argsort(-self.scores, kind='stable'))

    def transformed(self, scale: float = 1.0, offset: Sequence[float] = (0.0, 0.0)) -> 'FaceDetections':
        """Coordinates mapped by ``p * scale + offset`` (from a resized or cropped image back to the input)."""
        off = np.asarray(offset, np.float32)
        return FaceDetections(self.boxes * scale + np.tile(off, 2), self.scores.copy(), self.landmarks * scale + off)

    @staticmethod
    def concatenate(items: Sequence['FaceDetections']) -> 'FaceDetections':
        if not items:
            return FaceDetections.empty()
        return FaceDetections(np.concatenate([d.boxes for d in items]), np.concatenate([d.scores for d in items]),
                              np.concatenate([d.landmarks for d in items]))

    def eye_distances(self) -> np.ndarray:
        """``(N,)`` distance between the two eyes, in the same pixels as the landmarks."""
        return np.linalg.norm(self.landmarks[:, 0] - self.landmarks[:, 1], axis=-1)

    def to_facexlib(self) -> np.ndarray:
        """``(N, 15)`` rows ``[x1, y1, x2, y2, score, lex, ley, rex, rey, nx, ny, lmx, lmy, rmx, rmy]``, the
        layout of facexlib's ``RetinaFace.detect_faces``."""
        return np.concatenate([self.boxes, self.scores[:, None], self.landmarks.reshape(-1, 10)], axis=1)


def nms_detections(dets: FaceDetections, iou_threshold: float) -> FaceDetections:
    """Non-maximum suppression (``torchvision.ops.nms``); the result is sorted by score."""
    if len(dets) == 0:
        return dets
    import torchvision

    keep = torchvision.ops.nms(torch.from_numpy(dets.boxes).double(), torch.from_numpy(dets.scores).double(),
                               float(iou_threshold))
    return dets.select(keep.numpy())


# ---------------------------------------------------------------------------------------------------- inputs
def _check_finite(array, what: str) -> None:
    if isinstance(array, torch.Tensor):
        finite = bool(torch.isfinite(array).all()) if array.is_floating_point() else True
        has_nan = (not finite) and bool(torch.isnan(array).any())
    else:
        finite = bool(np.isfinite(array).all()) if np.issubdtype(array.dtype, np.floating) else True
        has_nan = (not finite) and bool(np.isnan(array).any())
    if not finite:
        raise ValueError(f'{what} contains {"NaN" if has_nan else "infinite"} values; face detection needs finite '
                         'pixel values')


def to_rgb_uint8(image: Union[np.ndarray, torch.Tensor], what: str = 'image') -> np.ndarray:
    """One image -> contiguous ``H x W x 3`` RGB uint8, the working format of every backend.

    Accepted: arrays ``H x W`` (gray), ``H x W x 1`` (gray), ``H x W x 3`` (RGB), ``H x W x 4`` (RGBA, alpha dropped);
    tensors ``1|3|4 x H x W``. Sample types: uint8; uint16 (scaled by 255/65535); other integers with values in
    0..255 (8 bit) or 0..65535 (16 bit); bool; floats in [0, 1] (the library's convention; values within 0.5 of the
    range are clipped, e.g. a restorer's overshoot).

    Raises:
        ValueError: NaN or infinite values, an unsupported shape, or floats far outside [0, 1].
    """
    _check_finite(image, what)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f'{what}: expected a C x H x W tensor with C in (1, 3, 4), got shape {tuple(image.shape)}')
        image = image.detach()
        if image.dtype == torch.bfloat16:
            image = image.float()
        image = image.permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f'{what}: expected H x W, H x W x 1, H x W x 3 or H x W x 4, got shape {array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'{what} is empty (shape {array.shape})')
    array = array[..., :3]  # RGBA -> RGB

    if array.dtype == np.uint8:
        out = array
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f'{what}: integer samples must lie in 0..255 or 0..65535, got {lo}..{hi}')
        if array.dtype == np.uint16 or hi > 255:  # facexlib's rule: anything above 8-bit range is 16 bit
            out = np.round(array.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        else:
            out = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f'{what}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; '
                             'pass uint8 / uint16 arrays, or divide by 255')
        out = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f'{what}: unsupported sample type {array.dtype}')
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _as_image_list(images: ImageInput) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return [to_rgb_uint8(img, f'image {i}') for i, img in enumerate(images)]
        if images.ndim == 3:
            return [to_rgb_uint8(images)]
        raise ValueError(f'expected a B x 3 x H x W or 3 x H x W tensor, got shape {tuple(images.shape)}')
    if isinstance(images, np.ndarray):
        if images.dtype == object or images.ndim == 4:  # a B x H x W x C stack
            images = list(images)
        else:
            return [to_rgb_uint8(images)]
    if isinstance(images, (list, tuple)):
        return [to_rgb_uint8(img, f'image {i}') for i, img in enumerate(images)]
    raise TypeError(f'expected an image array, a tensor or a list of them, got {type(images).__name__}')


# ---------------------------------------------------------------------------------------------------- detector
class BaseFaceDetector(nn.Module, metaclass=ABCMeta):
    """Base class of face detectors.

    Args:
        conf_threshold: faces scoring at or below it are dropped (backend scale, see :class:`FaceDetections`).
        eye_dist_threshold: drop faces whose eye distance in input pixels is below it (facexlib semantics).
        only_keep_largest: keep only the face with the largest (image-clipped) box. Wins over ``only_center_face``.
        only_center_face: keep only the face whose box centre is nearest the image centre.
        resize: detect on the image resized (LANCZOS4) so that its short side is ``resize`` pixels.
        tile_size: images (after ``resize``) with more than ``tile_size ** 2`` pixels are detected tile by tile
            (``tile_size`` squares, overlapping by ``tile_overlap``) plus one pass over the whole image shrunk to
            ``tile_size ** 2`` pixels, which finds faces too big for the overlap; memory stays bounded.
        tile_overlap: overlap of neighbouring tiles in pixels; faces up to about this size are found in some tile.
        merge_iou: IoU above which detections of the tiled passes are merged (NMS).
    """

    def __init__(self, conf_threshold: float, eye_dist_threshold: Optional[float] = None,
                 only_keep_largest: bool = False, only_center_face: bool = False, resize: Optional[int] = None,
                 tile_size: int = 2048, tile_overlap: int = 256, merge_iou: float = 0.4) -> None:
        super().__init__()
        if resize is not None and resize <= 0:
            raise ValueError(f'resize must be a positive number of pixels, got {resize}')
        if tile_overlap < 0 or tile_size <= 2 * tile_overlap:
            raise ValueError(f'need 0 <= tile_overlap < tile_size / 2, got tile_size={tile_size}, '
                             f'tile_overlap={tile_overlap}')
        self.conf_threshold = float(conf_threshold)
        self.eye_dist_threshold = eye_dist_threshold
        self.only_keep_largest = bool(only_keep_largest)
        self.only_center_face = bool(only_center_face)
        self.resize = resize
        self.tile_size = int(tile_size)
        self.tile_overlap = int(tile_overlap)
        self.merge_iou = float(merge_iou)

    # ------------------------------------------------------------------ backend hook
    @abstractmethod
    def _detect_batch(self, images: list[np.ndarray]) -> list[FaceDetections]:
        """Detect in RGB uint8 ``H x W x 3`` arrays that all have the same size.

        Returns, per image, the faces scoring above ``self.conf_threshold``, after the backend's own NMS, in that
        image's pixel coordinates.
        """

    def forward(self, images: ImageInput) -> list[FaceDetections]:
        return self.detect(images)

    def train(self, mode: bool = True) -> 'BaseFaceDetector':
        """Detectors are frozen inference tools: they stay in eval mode (BatchNorm statistics untouched) even when
        the model that owns them is put in training mode."""
        return super().train(False)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def detect(self, images: ImageInput) -> list[FaceDetections]:
        """Detect faces.

        Args:
            images: one ``H x W x 3`` RGB array (uint8, uint16 or float in [0, 1]; gray ``H x W`` / ``H x W x 1`` and
                RGBA ``H x W x 4`` accepted), a list of them, a ``B x H x W x C`` array, or a ``B x 3 x H x W``
                float tensor in [0, 1]. Images of one size are detected as one batch where the backend allows.

        Returns:
            One :class:`FaceDetections` per image (a list even for a single image), in input-pixel coordinates.
            An image without faces (or smaller than 8 pixels) gives empty arrays of the right shapes.

        Raises:
            ValueError: NaN / infinite values, unsupported shapes or value ranges (the message names the image).
        """
        arrays = _as_image_list(images)
        results: list[Optional[FaceDetections]] = [None] * len(arrays)
        pending: dict[tuple, list[tuple[int, np.ndarray, float]]] = {}
        for i, img in enumerate(arrays):
            if min(img.shape[:2]) < MIN_IMAGE_SIDE:
                results[i] = FaceDetections.empty()
                continue
            work, scale = self._resized(img)
            if work.shape[0] * work.shape[1] > self.tile_size**2:
                results[i] = self._detect_tiled(work).transformed(scale)
            else:
                pending.setdefault(work.shape, []).append((i, work, scale))
        for group in pending.values():
            found = self._detect_batch([work for _, work, _ in group])
            for (i, _, scale), dets in zip(group, found):
                results[i] = dets.transformed(scale)
        return [self._postprocess(dets, img.shape[0], img.shape[1]) for dets, img in zip(results, arrays)]

    # ------------------------------------------------------------------ steps
    def _resized(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        """facexlib's ``resize``: short side -> ``resize`` with LANCZOS4; returns (image, factor back to input)."""
        if self.resize is None:
            return img, 1.0
        h, w = img.shape[:2]
        scale = min(h, w) / self.resize
        size = (max(int(w / scale), 1), max(int(h / scale), 1))  # int() truncation as in facexlib
        if size == (w, h):
            return img, 1.0
        return cv2.resize(img, size, interpolation=cv2.INTER_LANCZOS4), scale

    def _detect_tiled(self, img: np.ndarray) -> FaceDetections:
        """Overlapping tiles plus one shrunk whole-image pass, merged by NMS.

        A face no bigger than the overlap lies wholly inside some tile; a tile's detections touching one of its inner
        edges (cut faces) are dropped. Faces bigger than that are found by the shrunk pass, which adds only faces
        that overlap no tile detection.
        """
        h, w = img.shape[:2]
        tile, overlap, margin = self.tile_size, self.tile_overlap, 2.0
        found = []
        for y0 in tile_starts(h, tile, overlap):
            for x0 in tile_starts(w, tile, overlap):
                crop = np.ascontiguousarray(img[y0:y0 + tile, x0:x0 + tile])
                dets = self._detect_batch([crop])[0]
                if len(dets):
                    b = dets.boxes
                    th, tw = crop.shape[:2]
                    cut = ((x0 > 0) & (b[:, 0] <= margin)) | ((y0 > 0) & (b[:, 1] <= margin)) | \
                          ((x0 + tw < w) & (b[:, 2] >= tw - margin)) | ((y0 + th < h) & (b[:, 3] >= th - margin))
                    found.append(dets.select(~cut).transformed(1.0, (x0, y0)))
        merged = nms_detections(FaceDetections.concatenate(found), self.merge_iou)
        # The shrunk pass only adds faces that no tile found (tiles see full resolution: better boxes).
        shrink = math.sqrt(h * w) / tile
        small = cv2.resize(img, (max(int(w / shrink), 1), max(int(h / shrink), 1)), interpolation=cv2.INTER_AREA)
        if min(small.shape[:2]) < MIN_IMAGE_SIDE:
            return merged
        coarse = self._detect_batch([small])[0].transformed(w / small.shape[1])
        if len(coarse) and len(merged):
            import torchvision
            iou = torchvision.ops.box_iou(torch.from_numpy(coarse.boxes), torch.from_numpy(merged.boxes))
            coarse = coarse.select((iou.max(dim=1).values <= self.merge_iou).numpy())
        return nms_detections(FaceDetections.concatenate([merged, coarse]), self.merge_iou)

    def _postprocess(self, dets: FaceDetections, h: int, w: int) -> FaceDetections:
        dets = dets.sorted()
        if self.eye_dist_threshold is not None and len(dets):
            dets = dets.select(dets.eye_distances() >= self.eye_dist_threshold)
        if len(dets) == 0:
            return FaceDetections.empty()
        if self.only_keep_largest:
            b = dets.boxes
            area = (np.clip(b[:, 2], 0, w) - np.clip(b[:, 0], 0, w)) * (np.clip(b[:, 3], 0, h) - np.clip(b[:, 1], 0, h))
            return dets.select([int(np.argmax(area))])
        if self.only_center_face:
            centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
            dist = np.linalg.norm(centres - np.array([w / 2, h / 2], np.float32), axis=1)
            return dets.select([int(np.argmin(dist))])
        return dets

    def extra_repr(self) -> str:
        return (f'conf_threshold={self.conf_threshold}, eye_dist_threshold={self.eye_dist_threshold}, '
                f'only_keep_largest={self.only_keep_largest}, only_center_face={self.only_center_face}, '
                f'resize={self.resize}')
