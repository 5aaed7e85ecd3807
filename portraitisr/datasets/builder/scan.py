"""Stage 1 of the PortraitSR-4K builder: scan a folder of photos into one JSON record per image.

HeadsUp (section 3 and appendix C) keeps photos of at least 3840 x 2160 with an aspect ratio (width / height) in
[0.6, 1.6], filters them with a quality score, detects the faces, drops faces whose eyes are less than 64 pixels apart
and compares the remaining faces by identity. :func:`scan_images` does the per-image part of that: for each photo it
writes the aligned FFHQ-512 crops of its faces (``faces/<image_id>_<k>.png``), their identity embeddings
(``embeddings/<image_id>.npy``, ``N x D`` float32, row ``k`` = face ``k``) and appends one line to
``records.jsonl``::

    {"image": "sub/a.jpg", "image_id": "0123456789abcdef", "status": "ok" | "rejected" | "error",
     "reason": null | "too_small" | "aspect" | "low_score" | "no_face" | "small_faces" | "<error message>",
     "width": W, "height": H, "score": <scorer value> | null,
     "faces": [{"box": [x1, y1, x2, y2], "landmarks": [[x, y] x 5], "score": s, "eye_distance": d,
                "crop": "faces/<image_id>_<k>.png"}],
     "embeddings": "embeddings/<image_id>.npy" | null, "dropped_small_faces": n}

Coordinates are full-resolution pixels of the (EXIF-oriented) image. The scan is resumable (a killed run, run again,
ends with the same records), deterministic, streams the images (one decoded photo per worker at a time) and can run
in several processes, with the parent as the only writer of ``records.jsonl``.
"""
import hashlib
import multiprocessing
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import cv2
import numpy as np
from mmengine.logging import print_log

from portraitisr.models.face_detectors.base_detector import FaceDetections

from .records import RECORDS_FILE, RecordWriter, load_records

PathLike = Union[str, os.PathLike]

FACES_DIR = 'faces'
EMBEDDINGS_DIR = 'embeddings'
#: keys of every record, in the order they are written
_EXIF_ORIENTATION = 0x0112


@dataclass
class ScanConfig:
    """Options of :func:`scan_images` (defaults: the paper's appendix C).

    Attributes:
        min_long_side: the longer image side must be at least this (pixels).
        min_short_side: the shorter image side must be at least this (so 3840 x 2160 in either orientation).
        aspect_range: inclusive ``(low, high)`` range of width / height.
        scorer: ``IMAGE_SCORERS`` config (e.g. ``dict(type='SharpnessScorer')``), or None for no quality filter.
        score_threshold: images on the bad side of it (in the scorer's direction) are rejected; None keeps all
            (the score is still recorded).
        detector: ``FACE_DETECTORS`` config.
        detect_max_side: faces are detected on a copy shrunk (``cv2.INTER_AREA``) to this long side, for speed;
            boxes and landmarks are mapped back to full resolution. None detects at full resolution.
        min_eye_distance: faces whose eyes are closer than this (full-resolution pixels) are dropped.
        crop_size: side of the saved FFHQ-template face crops.
        extractor: ``IDENTITY_EXTRACTORS`` config of the identity plug-in.
        identity_size: side of the ArcFace-112-template crop given to the extractor. None (default): the size the
            extractor works at (``work_size`` if it has one, as :class:`DlibResNet`, else ``input_size``), so it
            does not resample the crop again (one resampling, and results independent of the torch thread count).
    """

    min_long_side: int = 3840
    min_short_side: int = 2160
    aspect_range: tuple = (0.6, 1.6)
    scorer: Optional[dict] = None
    score_threshold: Optional[float] = None
    detector: dict = field(default_factory=lambda: dict(type='DlibFaceDetector', model='hog'))
    detect_max_side: Optional[int] = 1024
    min_eye_distance: float = 64.0
    crop_size: int = 512
    extractor: dict = field(default_factory=lambda: dict(type='DlibResNet'))
    identity_size: Optional[int] = None


def image_id_of(relative_path: str) -> str:
    """The first 16 hex characters of the SHA-1 of a photo's posix path relative to the input root."""
    return hashlib.sha1(relative_path.encode('utf-8')).hexdigest()[:16]


def header_size(path: PathLike) -> Optional[tuple[int, int]]:
    """``(width, height)`` from the file header (PIL, no pixel decode), after EXIF orientation; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # a broken EXIF block does not hide the size
                orientation = 1
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: read_image swaps the sides
        width, height = height, width
    return int(width), int(height)


def size_reject_reason(width: int, height: int, config: ScanConfig) -> Optional[str]:
    """``'too_small'``, ``'aspect'`` or None (a candidate) for an image of ``width x height``."""
    if max(width, height) < config.min_long_side or min(width, height) < config.min_short_side:
        return 'too_small'
    low, high = config.aspect_range
    if not low <= width / height <= high:
        return 'aspect'
    return None


def _round(values: Any, digits: int = 3) -> Any:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _new_record(relative: str) -> dict:
    return dict(image=relative, image_id=image_id_of(relative), status='ok', reason=None, width=None, height=None,
                score=None, faces=[], embeddings=None, dropped_small_faces=0)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
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


class ImageScanner:
    """Scans one photo at a time: builds the scorer, detector, aligners and identity extractor once.

    Args:
        config: the scan options.
        out_dir: where ``faces/`` and ``embeddings/`` are written.
    """

    def __init__(self, config: ScanConfig, out_dir: PathLike) -> None:
        from portraitisr.models.aligners.face_aligner import FaceAligner
        from portraitisr.registry import FACE_DETECTORS, IDENTITY_EXTRACTORS, IMAGE_SCORERS

        self.config = config
        self.out_dir = Path(out_dir)
        self.scorer = IMAGE_SCORERS.build(dict(config.scorer)) if config.scorer is not None else None
        self.detector = FACE_DETECTORS.build(dict(config.detector))
        self.crop_aligner = FaceAligner(template='ffhq512', output_size=config.crop_size)
        self.extractor = IDENTITY_EXTRACTORS.build(dict(config.extractor))
        identity_size = config.identity_size or int(getattr(self.extractor, 'work_size', self.extractor.input_size))
        # the identity metrics' aligner: ArcFace 112 template, black border
        self.identity_aligner = FaceAligner(template='arcface112', output_size=identity_size, border_value=(0, 0, 0))

    def detect(self, rgb: np.ndarray) -> 'FaceDetections':
        """Faces of a full-resolution ``H x W x 3`` float image, detected on a shrunk copy, in full-res pixels."""
        from .scorers import shrink_to_max_side

        small = shrink_to_max_side(rgb, self.config.detect_max_side)
        dets = self.detector.detect(small)[0]
        if small.shape[:2] != rgb.shape[:2]:
            dets = dets.transformed(rgb.shape[1] / small.shape[1])
        return dets

    def scan(self, path: PathLike, relative: str) -> dict:
        """The record of one photo (its crops and embeddings are written first); errors become ``'error'`` records."""
        record = _new_record(relative)
        try:
            self._scan(Path(path), record)
        except Exception as exc:  # one bad file never stops a scan of a million photos
            record.update(status='error', reason=f'{type(exc).__name__}: {exc}', faces=[], embeddings=None)
            print_log(f'scan: {relative}: {record["reason"]}', logger='current', level=30)
        return record

    def _reject(self, record: dict, reason: str) -> None:
        record.update(status='rejected', reason=reason)

    def _scan(self, path: Path, record: dict) -> None:
        import torch

        from portraitisr.utils.image_io import read_image, write_image

        from .scorers import passes_threshold

        config = self.config
        size = header_size(path)
        if size is not None:  # reject by the header alone: no pixel decode
            record['width'], record['height'] = size
            reason = size_reject_reason(*size, config)
            if reason is not None:
                return self._reject(record, reason)
        rgb = read_image(path).rgb
        height, width = rgb.shape[:2]
        record['width'], record['height'] = int(width), int(height)
        reason = size_reject_reason(width, height, config)
        if reason is not None:
            return self._reject(record, reason)
        if self.scorer is not None:
            record['score'] = round(float(self.scorer.score(rgb)), 6)
            if not passes_threshold(record['score'], config.score_threshold, self.scorer.higher_is_better):
                return self._reject(record, 'low_score')
        dets = self.detect(rgb)
        if len(dets) == 0:
            return self._reject(record, 'no_face')
        keep = dets.eye_distances() >= config.min_eye_distance
        record['dropped_small_faces'] = int((~keep).sum())
        if not keep.any():
            return self._reject(record, 'small_faces')
        dets = dets.select(keep)

        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        del rgb
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
            del image
            embeddings = self.extractor(torch.cat(id_crops).clamp(0, 1)).float().cpu().numpy().astype(np.float32)
        if embeddings.shape[0] != len(faces):
            raise RuntimeError(f'the extractor gave {embeddings.shape[0]} embeddings for {len(faces)} faces')
        emb_name = f'{EMBEDDINGS_DIR}/{image_id}.npy'
        _save_npy_atomic(self.out_dir / emb_name, embeddings)
        record.update(faces=faces, embeddings=emb_name)


# ---------------------------------------------------------------------------------------------------- workers
_WORKER_SCANNER: Optional[ImageScanner] = None


def _init_worker(config_dict: dict, out_dir: str, threads: int) -> None:
    """Pool initializer: one scanner (detector + extractor) per worker process."""
    import torch

    global _WORKER_SCANNER
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _WORKER_SCANNER = ImageScanner(ScanConfig(**config_dict), out_dir)


def _scan_in_worker(task: tuple[str, str]) -> dict:
    assert _WORKER_SCANNER is not None, 'worker not initialised'
    return _WORKER_SCANNER.scan(*task)


def _bounded(tasks: Iterable, slots: threading.Semaphore) -> Iterator:
    """Yields ``tasks`` only while a slot is free, so the pool never holds more than a few pending paths."""
    for task in tasks:
        slots.acquire()
        yield task


def pending_images(input_root: PathLike, done: set, exclude: Optional[PathLike] = None) -> Iterator[tuple[str, str]]:
    """``(path, relative posix path)`` of the photos under ``input_root`` not in ``done``, sorted by relative path.

    Photos inside ``exclude`` (the output folder, when it lies inside the input) are skipped.
    """
    from portraitisr.utils.image_io import list_images

    root = Path(input_root)
    exclude = Path(exclude).resolve() if exclude is not None else None
    for path in list_images(root, recursive=True):
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        relative = path.relative_to(root).as_posix()
        if relative not in done:
            yield str(path), relative


def scan_images(input_root: PathLike, out_dir: PathLike, config: Optional[ScanConfig] = None, workers: int = 1,
                progress: bool = True, limit: Optional[int] = None) -> Path:
    """Scan every photo under ``input_root`` (recursively) into ``<out_dir>/records.jsonl``.

    Photos already recorded there are skipped, so a killed scan is resumed by running it again.

    Args:
        input_root: the photo folder.
        out_dir: output folder (``records.jsonl``, ``faces/``, ``embeddings/``).
        config: scan options (default :class:`ScanConfig`, the paper's thresholds).
        workers: processes; 1 scans in this process, more use a spawn ``multiprocessing`` pool.
        progress: show a tqdm bar with the ok / rejected / error counts.
        limit: scan at most this many new photos in this call.

    Returns:
        The path of ``records.jsonl``.
    """
    from tqdm import tqdm

    config = config or ScanConfig()
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / RECORDS_FILE
    existing = load_records(records_path, repair=True)
    done = {rec['image'] for rec in existing}
    tasks = list(pending_images(input_root, done, exclude=out_dir))
    if limit is not None:
        tasks = tasks[:max(int(limit), 0)]
    counts = dict(ok=0, rejected=0, error=0)
    bar = tqdm(total=len(tasks), desc='scan', unit='img', disable=not progress)

    def record_one(writer: RecordWriter, record: dict) -> None:
        writer.write(record)
        counts[record['status']] += 1
        bar.update(1)
        bar.set_postfix(counts, refresh=False)

    try:
        with RecordWriter(records_path) as writer:
            if workers == 1 or len(tasks) <= 1:
                scanner = ImageScanner(config, out_dir) if tasks else None
                for path, relative in tasks:
                    record_one(writer, scanner.scan(path, relative))
            else:
                workers = min(workers, len(tasks))
                threads = max(1, (os.cpu_count() or 1) // workers)
                slots = threading.Semaphore(2 * workers)
                ctx = multiprocessing.get_context('spawn')
                with ctx.Pool(workers, initializer=_init_worker,
                              initargs=(asdict(config), str(out_dir), threads)) as pool:
                    for record in pool.imap_unordered(_scan_in_worker, _bounded(tasks, slots)):
                        slots.release()
                        record_one(writer, record)
    finally:
        bar.close()
    print_log(f'scan: {counts["ok"]} ok, {counts["rejected"]} rejected, {counts["error"]} error '
              f'({len(done)} recorded before) -> {records_path}', logger='current')
    return records_path
