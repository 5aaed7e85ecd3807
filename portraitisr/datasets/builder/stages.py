"""The steps of stage 1 for one photo, each holding only the model it needs.

The single-machine scan (:class:`~.scan.ImageScanner`) runs them one after the other on each photo; the Ray scan
(``ray_scan.py``) runs each as its own batched map stage, on CPU or GPU workers of a cluster. Both call the same
code on the same values, so both write the same records, crops and embeddings:

=============  =============================================================  ==================================
step           what it does (HeadsUp section 3, appendix C)                   rejection reasons
=============  =============================================================  ==================================
header         pixel limit, size and aspect filter from the file header       ``too_large`` (error), ``too_small``,
                                                                              ``aspect``
decode         decode the photo (EXIF-oriented), size and aspect again        ``unreadable`` (error)
score          optional quality scorer (``IMAGE_SCORERS``)                    ``low_score``
detect         faces on a copy shrunk to ``detect_max_side``, eye distance    ``no_face``, ``small_faces``
align          FFHQ-512 crops written, ArcFace-template identity crops
embed          identity embeddings written (``N x D`` float32)
=============  =============================================================  ==================================

A step works on one photo's ``record`` (the dict that becomes its line in the records, see ``scan.py``) and sets
``status`` / ``reason`` when the photo is rejected; the caller turns an exception into an ``error`` record.

Between Ray stages a photo travels as 8- or 16-bit integers (:func:`to_integers`), a quarter or half the size of
the float image; :func:`to_floats` gives back exactly the floats :func:`~portraitisr.utils.image_io.read_image`
returned (``k / 255`` for every sample ``k``, the same division in float32).
"""
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from portraitisr.face.alignment.face_aligner import FaceAligner
from portraitisr.face.detection.base_detector import FaceDetections
from portraitisr.registry import FACE_DETECTORS, IDENTITY_EXTRACTORS, IMAGE_SCORERS
from portraitisr.utils.image_io import (ImageReadError, check_image_size, decode_image, read_image, read_image_size,
                                        write_image)

from .scorers import passes_threshold, shrink_to_max_side

if TYPE_CHECKING:
    import torch

    from .scan import ScanConfig

PathLike = Union[str, os.PathLike]

FACES_DIR = 'faces'
EMBEDDINGS_DIR = 'embeddings'
#: the steps of a scan, in order (``read`` streams the samples out of a shard, before the pre-filter)
STEPS = ('read', 'decode', 'score', 'detect', 'align', 'embed')
#: where a web-scale scan keeps the photos it kept (their bytes, as they were in the shard): the manifests point here
PHOTOS_DIR = 'images'

__all__ = ['FACES_DIR', 'EMBEDDINGS_DIR', 'PHOTOS_DIR', 'STEPS', 'size_reject_reason', 'check_header', 'decode',
           'to_integers', 'to_floats', 'ScoreStep', 'DetectStep', 'AlignStep', 'EmbedStep', 'reject',
           'detections_to_state', 'detections_from_state', 'save_npy_atomic', 'write_bytes_atomic', 'scan_photo',
           'identity_size_of', 'StepTimer']


def size_reject_reason(width: int, height: int, config: 'ScanConfig') -> Optional[str]:
    """``'too_small'``, ``'aspect'`` or None (a candidate) for an image of ``width x height``."""
    if max(width, height) < config.min_long_side or min(width, height) < config.min_short_side:
        return 'too_small'
    low, high = config.aspect_range
    if not low <= width / height <= high:
        return 'aspect'
    return None


def reject(record: dict, reason: str) -> None:
    """Mark ``record`` as rejected for ``reason``."""
    record.update(status='rejected', reason=reason)


def _round(values: Any, digits: int = 3) -> Any:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file in the same folder, fsync and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes, mtime_ns: Optional[int] = None) -> None:
    """Write ``data`` through a temporary file and ``os.replace``; then set the modification time (nanoseconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------------- header, decode
def check_header(record: dict, source: Union[PathLike, bytes], name: str, config: 'ScanConfig') -> bool:
    """The pixel limit and the size filter from the header alone (no pixel is decoded). False: rejected.

    A header Pillow cannot read is left to :func:`decode`, which gives the precise error.

    Raises:
        ImageTooLargeError: the header claims more than ``config.max_pixels`` pixels (a decompression bomb).
        FileNotFoundError: no such file.
    """
    try:
        size = read_image_size(source)
    except ImageReadError:
        return True
    check_image_size(*size, name, config.max_pixels)
    record['width'], record['height'] = size
    reason = size_reject_reason(*size, config)
    if reason is not None:
        reject(record, reason)
        return False
    return True


def decode(record: dict, source: Union[PathLike, bytes], name: str,
           config: 'ScanConfig') -> Optional[Tuple[np.ndarray, int]]:
    """``(rgb, bit_depth)``: the photo as ``H x W x 3`` float32 RGB in [0, 1] (EXIF-oriented) and its 8 or 16 bits
    per sample, or None when its size rejects it.

    ``source`` is a path or the file's bytes (a member of a shard); errors name the photo ``name``.
    """
    if isinstance(source, bytes):
        image = decode_image(source, name, max_pixels=config.max_pixels)
    else:
        image = read_image(source, max_pixels=config.max_pixels)
    height, width = image.rgb.shape[:2]
    record['width'], record['height'] = int(width), int(height)
    reason = size_reject_reason(width, height, config)
    if reason is not None:
        reject(record, reason)
        return None
    return image.rgb, image.bit_depth


def to_integers(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float RGB from :func:`decode` (``k / 255`` or ``k / 65535``) back to its ``uint8`` / ``uint16`` samples."""
    if bit_depth == 8:
        return np.round(rgb * np.float32(255.0)).astype(np.uint8)
    return np.round(rgb * np.float32(65535.0)).astype(np.uint16)


def to_floats(pixels: np.ndarray) -> np.ndarray:
    """Integer samples -> the float32 RGB :func:`~portraitisr.utils.image_io.read_image` gives (same division)."""
    scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
    return np.ascontiguousarray(pixels.astype(np.float32) / scale)


# ---------------------------------------------------------------------------------------------------- models
class ScoreStep:
    """The optional quality filter: ``record['score']``; ``low_score`` on the bad side of the threshold."""

    def __init__(self, config: 'ScanConfig') -> None:
        self.threshold = config.score_threshold
        self.scorer = IMAGE_SCORERS.build(dict(config.scorer)) if config.scorer is not None else None

    def __call__(self, record: dict, rgb: np.ndarray) -> bool:
        """False when the photo is rejected."""
        if self.scorer is None:
            return True
        record['score'] = round(float(self.scorer.score(rgb)), 6)
        if not passes_threshold(record['score'], self.threshold, self.scorer.higher_is_better):
            reject(record, 'low_score')
            return False
        return True


class DetectStep:
    """Faces on a copy shrunk to ``detect_max_side`` (mapped back to full resolution); faces with an eye distance
    under ``min_eye_distance`` are dropped (``dropped_small_faces``)."""

    def __init__(self, config: 'ScanConfig') -> None:
        self.config = config
        self.detector = FACE_DETECTORS.build(dict(config.detector))

    def detect(self, rgb: np.ndarray) -> 'FaceDetections':
        """Faces of a full-resolution ``H x W x 3`` float image, detected on a shrunk copy, in full-res pixels."""
        small = shrink_to_max_side(rgb, self.config.detect_max_side)
        dets = self.detector.detect(small)[0]
        if small.shape[:2] != rgb.shape[:2]:
            dets = dets.transformed(rgb.shape[1] / small.shape[1])
        return dets

    def __call__(self, record: dict, rgb: np.ndarray) -> Optional['FaceDetections']:
        """The kept faces, or None when the photo is rejected (``no_face``, ``small_faces``)."""
        dets = self.detect(rgb)
        if len(dets) == 0:
            reject(record, 'no_face')
            return None
        keep = dets.eye_distances() >= self.config.min_eye_distance
        record['dropped_small_faces'] = int((~keep).sum())
        if not keep.any():
            reject(record, 'small_faces')
            return None
        return dets.select(keep)


def detections_to_state(dets: 'FaceDetections') -> dict:
    """Detections as JSON values that give back the same float32 arrays (float32 -> float64 -> JSON is exact)."""
    return dict(boxes=dets.boxes.astype(np.float64).tolist(), scores=dets.scores.astype(np.float64).tolist(),
                landmarks=dets.landmarks.astype(np.float64).tolist())


def detections_from_state(state: dict) -> 'FaceDetections':
    """The inverse of :func:`detections_to_state`."""
    return FaceDetections(np.asarray(state['boxes'], np.float32), np.asarray(state['scores'], np.float32),
                          np.asarray(state['landmarks'], np.float32))


class AlignStep:
    """Writes the FFHQ-512 crops of the faces (``faces/<image_id>_<k>.png``) and returns the ArcFace-template crops
    for the identity model (``N x 3 x S x S`` float in [0, 1]); fills ``record['faces']``.

    Args:
        config: the scan options (``crop_size``).
        out_dir: the output folder.
        identity_size: side of the identity crops (see :meth:`EmbedStep.identity_size`).
    """

    def __init__(self, config: 'ScanConfig', out_dir: PathLike, identity_size: int) -> None:
        self.out_dir = Path(out_dir)
        self.crop_aligner = FaceAligner(template='ffhq512', output_size=config.crop_size)
        # the identity metrics' aligner: ArcFace 112 template, black border
        self.identity_aligner = FaceAligner(template='arcface112', output_size=identity_size, border_value=(0, 0, 0))

    def __call__(self, record: dict, rgb: np.ndarray, dets: 'FaceDetections') -> 'torch.Tensor':
        import torch

        # a 1 x 3 x H x W view of the H x W x 3 photo: the warps read it in place (same crops as from a contiguous
        # copy, bit for bit), so a 4K photo is not held twice (133 MB as float32)
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        image_id = record['image_id']
        faces, id_crops = [], []
        with torch.no_grad():
            matrices = self.crop_aligner.estimate(dets.landmarks.astype(np.float64)).float()
            id_matrices = self.identity_aligner.estimate(dets.landmarks.astype(np.float64)).float()
            for k in range(len(dets)):  # one face at a time: align() would copy the 4K image per face
                crop = self.crop_aligner.align(image, matrices[k:k + 1])[0]
                id_crops.append(self.identity_aligner.align(image, id_matrices[k:k + 1]))
                crop_name = f'{FACES_DIR}/{image_id}_{k}.png'
                write_image(self.out_dir / crop_name, crop.permute(1, 2, 0).clamp(0, 1).numpy())
                faces.append(dict(box=_round(dets.boxes[k]), landmarks=_round(dets.landmarks[k]),
                                  score=round(float(dets.scores[k]), 6),
                                  eye_distance=round(float(dets.eye_distances()[k]), 3), crop=crop_name))
        record['faces'] = faces
        return torch.cat(id_crops).clamp(0, 1)


class EmbedStep:
    """The identity model: writes ``embeddings/<image_id>.npy`` (``N x D`` float32, row ``k`` = face ``k``)."""

    def __init__(self, config: 'ScanConfig', out_dir: PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.extractor = IDENTITY_EXTRACTORS.build(dict(config.extractor))
        self.identity_size = identity_size_of(config, self.extractor)

    def embed(self, crops: 'torch.Tensor') -> np.ndarray:
        """``N x D`` float32 embeddings of ``N x 3 x S x S`` identity crops."""
        import torch

        with torch.no_grad():
            return self.extractor(crops).float().cpu().numpy().astype(np.float32)

    def save(self, record: dict, embeddings: np.ndarray) -> None:
        """Write the record's embeddings and point the record at them."""
        if embeddings.shape[0] != len(record['faces']):
            raise RuntimeError(f'the extractor gave {embeddings.shape[0]} embeddings for {len(record["faces"])} faces')
        name = f'{EMBEDDINGS_DIR}/{record["image_id"]}.npy'
        save_npy_atomic(self.out_dir / name, embeddings)
        record['embeddings'] = name

    def __call__(self, record: dict, crops: 'torch.Tensor') -> None:
        self.save(record, self.embed(crops))

    def embed_many(self, crops: Sequence['torch.Tensor']) -> List[np.ndarray]:
        """The embeddings of several photos' crops, in one call of the model (a GPU batch); split back per photo."""
        import torch

        if not crops:
            return []
        rows = np.cumsum([0] + [len(c) for c in crops])
        embeddings = self.embed(torch.cat(list(crops)))
        return [embeddings[rows[n]:rows[n + 1]] for n in range(len(crops))]


def identity_size_of(config: 'ScanConfig', extractor: Any) -> int:
    """Side of the ArcFace-template crop given to the extractor: ``config.identity_size``, or the size the extractor
    works at (``work_size`` if it has one, as :class:`DlibResNet`, else ``input_size``), so that it does not
    resample the crop again (one resampling, and results independent of the torch thread count)."""
    return int(config.identity_size or getattr(extractor, 'work_size', extractor.input_size))


class StepTimer:
    """Adds the wall time of each ``with timer('step'):`` block to ``timings[step]`` (seconds)."""

    def __init__(self, timings: Optional[Dict[str, float]]) -> None:
        self.timings = timings
        self.step = ''

    def __call__(self, step: str) -> 'StepTimer':
        self.step = step
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.timings is not None:
            self.timings[self.step] = self.timings.get(self.step, 0.0) + time.perf_counter() - self.start


def scan_photo(record: dict, source: Union[PathLike, bytes], name: str, config: 'ScanConfig',
               steps: Tuple[ScoreStep, DetectStep, AlignStep, EmbedStep],
               keep_photo: Optional[Tuple[Path, Optional[int]]] = None,
               timings: Optional[Dict[str, float]] = None) -> None:
    """Every step on one photo, in order, filling ``record`` (exceptions propagate to the caller).

    Args:
        keep_photo: ``(path, mtime_ns)``: where a photo kept after alignment is written (the bytes of ``source``),
            for photos that come from shards; None for photos that are files already.
        timings: ``{step: seconds}`` the steps that ran add their wall time to (``decode`` includes the header).
    """
    timer = StepTimer(timings)
    with timer('decode'):
        decoded = decode(record, source, name, config) if check_header(record, source, name, config) else None
    if decoded is None:
        return
    rgb = decoded[0]
    del decoded
    score, detect, align, embed = steps
    if score.scorer is not None:
        with timer('score'):
            if not score(record, rgb):
                return
    with timer('detect'):
        dets = detect(record, rgb)
    if dets is None:
        return
    with timer('align'):
        crops = align(record, rgb, dets)
        del rgb
        if keep_photo is not None:
            write_bytes_atomic(keep_photo[0], source, keep_photo[1])
    with timer('embed'):
        embed(record, crops)
