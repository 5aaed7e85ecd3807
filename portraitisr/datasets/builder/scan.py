"""Stage 1 of the PortraitSR-4K builder: scan a folder of photos into one JSON record per image.

HeadsUp (section 3 and appendix C) keeps photos of at least 3840 x 2160 with an aspect ratio (width / height) in
[0.6, 1.6], filters them with a quality score, detects the faces, drops faces whose eyes are less than 64 pixels apart
and compares the remaining faces by identity. :func:`scan_images` does the per-image part of that: for each photo it
writes the aligned FFHQ-512 crops of its faces (``faces/<image_id>_<k>.png``), their identity embeddings
(``embeddings/<image_id>.npy``, ``N x D`` float32, row ``k`` = face ``k``) and appends one line to
``records.jsonl``::

    {"image": "sub/a.jpg", "image_id": "0123456789abcdef", "file_size": bytes, "file_mtime_ns": ns,
     "status": "ok" | "rejected" | "error",
     "reason": null | "too_small" | "aspect" | "low_score" | "no_face" | "small_faces" | "<code>: <message>",
     "width": W, "height": H, "score": <scorer value> | null,
     "faces": [{"box": [x1, y1, x2, y2], "landmarks": [[x, y] x 5], "score": s, "eye_distance": d,
                "crop": "faces/<image_id>_<k>.png"}],
     "embeddings": "embeddings/<image_id>.npy" | null, "dropped_small_faces": n}

Coordinates are full-resolution pixels of the (EXIF-oriented) image. An ``error`` record's reason starts with a code:
``too_large`` (the header claims more pixels than ``max_pixels``: a decompression bomb, refused before decoding),
``unreadable`` (missing, truncated or corrupt), ``crashed`` (the worker process died on it, e.g. killed for memory),
or the exception's type for anything unexpected.

The steps themselves are in ``stages.py`` (shared with the web-scale engines). The scan is resumable (a killed run,
run again, ends with the same records), deterministic, streams the images (one
decoded photo per worker at a time) and can run in several processes, with the parent as the only writer of
``records.jsonl``. On resume, records whose photo was deleted are dropped and records whose photo changed (size or
modification time) are scanned again, each with a warning; ``error`` records are retried (the limit may have been
raised, the disk may be back). ``scan.json`` keeps the settings of the scan: resuming with other settings is refused,
since the records would mix two filters or two identity models.
"""
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
from mmengine.logging import print_log

from portraitisr.utils.image_io import ImageReadError, ImageTooLargeError

from .photos import BuilderWarning, builder_warning, find_photos
from .records import (RECORDS_FILE, SETTINGS_FILE, SHARD_RECORDS_DIR, SHARD_RECORDS_SUFFIX, RecordWriter, file_stamp,
                      load_records, rewrite_records, stamp_status)
from .stages import (EMBEDDINGS_DIR, FACES_DIR, AlignStep, DetectStep, EmbedStep, ScoreStep, scan_photo,
                     size_reject_reason)

if TYPE_CHECKING:
    from portraitisr.face.detection.base_detector import FaceDetections

PathLike = Union[str, os.PathLike]

#: settings that may change between runs of one scan (they decide only which files fail, and failures are retried)
RESUMABLE_SETTINGS = ('max_pixels',)


@dataclass
class ScanConfig:
    """Options of :func:`scan_images` (defaults: the paper's appendix C, with offline plug-ins where the paper's
    models come from hubs: dlib's HOG detector for FaceLib's RetinaFace, dlib's ResNet for CVLFace).

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
        extractor: ``IDENTITY_EXTRACTORS`` config of the identity plug-in; its class's ``verification_threshold``
            is the default pairing threshold of stage 2.
        identity_size: side of the ArcFace-112-template crop given to the extractor. None (default): the size the
            extractor works at (``work_size`` if it has one, as :class:`DlibResNet`, else ``input_size``), so it
            does not resample the crop again (one resampling, and results independent of the torch thread count).
        max_pixels: photos whose header claims more pixels are refused before decoding (``too_large`` errors).
            None: the library's limit (:data:`~portraitisr.utils.image_io.DEFAULT_MAX_IMAGE_PIXELS`, 16384 x 8192,
            or ``PORTRAITISR_MAX_IMAGE_PIXELS``); 0: no limit.
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
    max_pixels: Optional[int] = None


def image_id_of(relative_path: str) -> str:
    """The first 16 hex characters of the SHA-1 of a photo's posix path relative to the input root."""
    return hashlib.sha1(relative_path.encode('utf-8')).hexdigest()[:16]


def error_reason(error: BaseException) -> str:
    """The reason of an ``error`` record: ``'<code>: <message>'`` with code ``too_large`` (over the pixel limit),
    ``unreadable`` (missing, truncated, corrupt) or the exception's type name (anything unexpected)."""
    if isinstance(error, ImageTooLargeError):
        code = 'too_large'
    elif isinstance(error, (ImageReadError, OSError)):
        code = 'unreadable'
    else:
        code = type(error).__name__
    message = str(error).replace('\n', ' ') or type(error).__name__
    return f'{code}: {message}'


def new_record(relative: str) -> dict:
    """A record in progress: status ``ok`` until a step rejects the photo or fails."""
    return dict(image=relative, image_id=image_id_of(relative), file_size=None, file_mtime_ns=None, status='ok',
                reason=None, width=None, height=None, score=None, faces=[], embeddings=None, dropped_small_faces=0)


def fail(record: dict, error: BaseException) -> dict:
    """Turn ``record`` into the ``error`` record of ``error`` (no faces, no embeddings)."""
    record.update(status='error', reason=error_reason(error), faces=[], embeddings=None)
    return record


@dataclass(frozen=True)
class Sample:
    """A photo that is not a file of its own: the image member of a webdataset shard.

    Attributes:
        image: its record name, ``<shard>/<key>.<ext>`` (the shard's path relative to the shards' folder, without
            ``.tar``).
        data: the image file's bytes.
        file_mtime_ns: the shard's modification time: with ``len(data)``, the sample's file stamp.
        keep_as: where its bytes are written when it is kept (the manifests point there), or None.
    """

    image: str
    data: bytes
    file_mtime_ns: int
    keep_as: Optional[str] = None


def _error_record(source: Union[PathLike, Sample], relative: str, reason: str) -> dict:
    record = new_record(relative)
    if isinstance(source, Sample):
        record.update(file_size=len(source.data), file_mtime_ns=source.file_mtime_ns)
    else:
        try:
            record.update(file_stamp(source))
        except OSError:
            pass
    record.update(status='error', reason=reason)
    return record



class ImageScanner:
    """Scans one photo at a time: builds the scorer, detector, aligners and identity extractor once.

    Args:
        config: the scan options.
        out_dir: where ``faces/`` and ``embeddings/`` are written.
    """

    def __init__(self, config: ScanConfig, out_dir: PathLike) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.score = ScoreStep(config)
        self.detect_step = DetectStep(config)
        self.embed = EmbedStep(config, out_dir)
        self.align = AlignStep(config, out_dir, self.embed.identity_size)

    @property
    def extractor(self) -> Any:
        return self.embed.extractor

    def detect(self, rgb: np.ndarray) -> 'FaceDetections':
        """Faces of a full-resolution ``H x W x 3`` float image, detected on a shrunk copy, in full-res pixels."""
        return self.detect_step.detect(rgb)

    def scan(self, source: Union[PathLike, Sample], relative: str) -> dict:
        """The record of one photo (its crops and embeddings are written first); errors become ``'error'`` records
        (reason ``'<code>: <message>'``, see :func:`error_reason`), so one bad file never stops a scan.

        ``source`` is the photo's path, or a :class:`Sample` of a shard (then ``relative`` is its ``image``). The
        record also carries ``_timings`` (``{step: seconds}``, for the report; record writers leave it out).
        """
        record = new_record(relative)
        steps = (self.score, self.detect_step, self.align, self.embed)
        record['_timings'] = timings = {}
        try:
            if isinstance(source, Sample):
                record.update(file_size=len(source.data), file_mtime_ns=source.file_mtime_ns)
                keep = None if source.keep_as is None else (self.out_dir / source.keep_as, source.file_mtime_ns)
                scan_photo(record, source.data, relative, self.config, steps, keep_photo=keep, timings=timings)
            else:
                record.update(file_stamp(source))  # before reading: a file changed meanwhile is rescanned next time
                scan_photo(record, Path(source), str(source), self.config, steps, timings=timings)
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a scan of a million photos
            fail(record, exc)
        return record


# ---------------------------------------------------------------------------------------------------- workers
_WORKER_SCANNER: Optional[ImageScanner] = None
_WORKER_ERROR: Optional[str] = None


class WorkerStartError(RuntimeError):
    """A worker process could not build its scanner (a missing package or model file): not a photo's fault."""


def _init_worker(config_dict: dict, out_dir: str, threads: int) -> None:
    """Pool initializer: one scanner (detector + extractor) per worker process. A failure is kept and raised by
    every task (a failing initializer would break the pool, which reads as a dying worker)."""
    import torch

    global _WORKER_SCANNER, _WORKER_ERROR
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        _WORKER_SCANNER = ImageScanner(ScanConfig(**config_dict), out_dir)
    except Exception as error:  # noqa: BLE001 - reported by the parent, with its type and message
        _WORKER_ERROR = f'{type(error).__name__}: {error}'


def _scan_in_worker(task: Tuple[str, str]) -> dict:
    if _WORKER_SCANNER is None:
        raise WorkerStartError(f'a scan worker could not start: {_WORKER_ERROR}')
    return _WORKER_SCANNER.scan(*task)


#: the reason of a photo whose worker process died while scanning it, alone
CRASHED = ('crashed: the scanning process died on this photo (killed by the system, e.g. for memory, or a crash '
           'in native code); the other photos went on')


class _ParallelScan:
    """A spawn process pool that survives the death of a worker.

    When a worker dies (the kernel's OOM killer, a crash in native code), every photo in flight is suspect. Each is
    then scanned again alone, in a pool of one: the photo that kills its worker again gets a ``crashed`` error
    record, the others their normal record, and the scan goes on in a fresh pool.
    """

    def __init__(self, config: ScanConfig, out_dir: Path, workers: int) -> None:
        self.initargs = (asdict(config), str(out_dir), max(1, (os.cpu_count() or 1) // workers))
        self.workers = workers
        self.context = multiprocessing.get_context('spawn')

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.context, initializer=_init_worker,
                                   initargs=self.initargs)

    def _alone(self, task: Tuple[str, str]) -> dict:
        with self._pool(1) as pool:
            try:
                return pool.submit(_scan_in_worker, task).result()
            except BrokenProcessPool:
                return _error_record(task[0], task[1], CRASHED)

    def run(self, tasks: List[Tuple[str, str]], on_record: Callable[[dict], None]) -> None:
        queue = iter(tasks)
        pool = self._pool(self.workers)
        in_flight: Dict[Any, Tuple[str, str]] = {}
        try:
            while True:
                while len(in_flight) < 2 * self.workers:  # a few pending paths, never the whole list
                    task = next(queue, None)
                    if task is None:
                        break
                    in_flight[pool.submit(_scan_in_worker, task)] = task
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                suspects = []
                for future in sorted(done, key=lambda f: in_flight[f][1]):
                    task = in_flight.pop(future)
                    try:
                        on_record(future.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                if suspects:  # the pool is broken: every task still in flight is suspect too
                    suspects += [in_flight.pop(f) for f in list(in_flight)]
                    pool.shutdown(wait=True, cancel_futures=True)
                    print_log(f'scan: a worker process died; scanning the {len(suspects)} photo(s) it may have been '
                              'on one at a time', logger='current', level=30)
                    for task in sorted(suspects, key=lambda t: t[1]):
                        on_record(self._alone(task))
                    pool = self._pool(self.workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------- resume
def _jsonable(value: Any) -> str:
    """A config value JSON cannot hold (a class given as ``type``): its import path."""
    if isinstance(value, type):
        return f'{value.__module__}.{value.__qualname__}'
    return repr(value)


def _settings_json(config: ScanConfig) -> dict:
    """All scan settings as JSON values (tuples as lists, classes as their import path)."""
    return json.loads(json.dumps(asdict(config), default=_jsonable))


def _settings_of(config: ScanConfig) -> dict:
    """The scan settings that must not change while a scan is resumed."""
    return {k: v for k, v in _settings_json(config).items() if k not in RESUMABLE_SETTINGS}


def check_settings(out_dir: PathLike, config: ScanConfig) -> None:
    """Write ``scan.json`` on the first run; refuse to resume a scan made with other settings.

    Settings under which nothing was recorded yet (a first run that failed before its first photo, e.g. for missing
    weights) are simply replaced.

    Raises:
        ValueError: naming each setting that differs, and the way out.
    """
    path = Path(out_dir) / SETTINGS_FILE
    settings = _settings_of(config)
    records = Path(out_dir) / RECORDS_FILE
    shard_records = Path(out_dir) / SHARD_RECORDS_DIR
    recorded = (records.is_file() and records.stat().st_size > 0) or (
        shard_records.is_dir() and any(shard_records.rglob(f'*{SHARD_RECORDS_SUFFIX}')))
    if path.is_file() and recorded:
        try:
            saved = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as error:
            raise ValueError(f'{path} is not readable JSON ({error}); delete it only if {out_dir} holds no '
                             'records of another scan') from None
        saved = {k: v for k, v in saved.items() if k not in RESUMABLE_SETTINGS}
        diffs = [f'{k}: {saved.get(k)!r} before, {settings.get(k)!r} now' for k in sorted(set(saved) | set(settings))
                 if saved.get(k) != settings.get(k)]
        if diffs:
            raise ValueError(f'{out_dir} holds a scan made with other settings ({"; ".join(diffs)}); its records would '
                             'mix two filters or identity models. Use a new output folder, or the settings of '
                             f'{path}')
        return
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(_settings_json(config), indent=1, sort_keys=True) + '\n', encoding='utf-8')
    os.replace(tmp, path)


def _remove_outputs(out_dir: Path, record: dict) -> None:
    """Delete the crops and embeddings a dropped record points to (only files inside ``out_dir``)."""
    names = [face.get('crop') for face in record.get('faces') or []] + [record.get('embeddings')]
    root = out_dir.resolve()
    for name in names:
        if not isinstance(name, str) or not name:
            continue
        path = (out_dir / name).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()


def _reconcile(records_path: Path, out_dir: Path, photos: Dict[str, str]) -> set:
    """Drop the records that no longer describe their photo; return the images whose records are kept.

    A photo deleted since it was recorded loses its record; a changed one (size or modification time) and one
    recorded by an older builder (no stamp) are scanned again; ``error`` records are retried. Dropped records'
    crops and embeddings are deleted; ``records.jsonl`` is rewritten atomically without them.
    """
    existing = load_records(records_path, repair=True)
    kept, dropped, unstamped, retried = [], [], 0, 0
    for record in existing:
        relative = record['image']
        path = photos.get(relative)
        status = 'missing' if path is None else stamp_status(record, path)
        if status == 'missing':
            builder_warning(f'{relative}: recorded before but no longer in the photo folder; its record is dropped')
        elif status == 'changed':
            builder_warning(f'{relative}: changed since it was recorded (size or modification time); scanned again')
        elif status == 'unstamped':
            unstamped += 1
        elif record.get('status') == 'error':
            retried += 1
        else:
            kept.append(record)
            continue
        dropped.append(record)
    if unstamped:
        builder_warning(f'{unstamped} record(s) written by an older builder carry no file stamp; those photos are '
                        'scanned again')
    if retried:
        print_log(f'scan: retrying {retried} photo(s) that failed before', logger='current')
    if dropped:
        for record in dropped:
            _remove_outputs(out_dir, record)
        rewrite_records(records_path, kept)
    return {record['image'] for record in kept}


def scan_images(input_root: PathLike, out_dir: PathLike, config: Optional[ScanConfig] = None, workers: int = 1,
                progress: bool = True, limit: Optional[int] = None) -> Path:
    """Scan every photo under ``input_root`` (recursively) into ``<out_dir>/records.jsonl``.

    Photos already recorded there (unchanged since) are skipped, so a killed scan is resumed by running it again.
    Photos that fail get an ``error`` record, logged in one line each; the scan goes on.

    Args:
        input_root: the photo folder (links to folders are followed; loops and repeats are warned about, see
            :func:`~.photos.find_photos`).
        out_dir: output folder (``records.jsonl``, ``scan.json``, ``faces/``, ``embeddings/``).
        config: scan options (default :class:`ScanConfig`, the paper's thresholds).
        workers: processes; 1 scans in this process, more use a spawn process pool that survives a dying worker.
        progress: show a tqdm bar with the ok / rejected / error counts.
        limit: scan at most this many new photos in this call.

    Returns:
        The path of ``records.jsonl``.

    Raises:
        ValueError: ``out_dir`` holds a scan made with other settings (see :func:`check_settings`).
    """
    from tqdm import tqdm

    config = config or ScanConfig()
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    out_dir = Path(out_dir)
    # listed before the output folder is made: a missing input fails first, and a new output folder inside the
    # input holds nothing to exclude yet
    photos = find_photos(input_root, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, config)
    records_path = out_dir / RECORDS_FILE
    done = _reconcile(records_path, out_dir, {relative: path for path, relative in photos})
    tasks = [(path, relative) for path, relative in photos if relative not in done]
    if limit is not None:
        tasks = tasks[:max(int(limit), 0)]
    counts = dict(ok=0, rejected=0, error=0)
    bar = tqdm(total=len(tasks), desc='scan', unit='img', disable=not progress)

    def record_one(writer: RecordWriter, record: dict) -> None:
        writer.write(record)
        counts[record['status']] += 1
        if record['status'] == 'error':
            print_log(f'scan: {record["image"]}: {record["reason"]}', logger='current', level=30)
        bar.update(1)
        bar.set_postfix(counts, refresh=False)

    try:
        with RecordWriter(records_path) as writer:
            if workers == 1 or len(tasks) <= 1:
                scanner = ImageScanner(config, out_dir) if tasks else None
                for path, relative in tasks:
                    record_one(writer, scanner.scan(path, relative))
            else:
                _ParallelScan(config, out_dir, min(workers, len(tasks))).run(
                    tasks, lambda record: record_one(writer, record))
    finally:
        bar.close()
    print_log(f'scan: {counts["ok"]} ok, {counts["rejected"]} rejected, {counts["error"]} error '
              f'({len(done)} recorded before) -> {records_path}', logger='current')
    return records_path


__all__ = ['ScanConfig', 'ImageScanner', 'BuilderWarning', 'WorkerStartError', 'image_id_of', 'size_reject_reason',
           'error_reason', 'check_settings', 'scan_images', 'FACES_DIR', 'EMBEDDINGS_DIR']
