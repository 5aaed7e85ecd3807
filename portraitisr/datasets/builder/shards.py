"""Stage 1 on webdataset shards, as img2dataset writes them: streaming reads, a metadata pre-filter, per-shard records.

img2dataset (the tool that fetched LAION-2B, PD12M and the other web collections HeadsUp mined) writes
``NNNNN.tar`` shards; each sample is a group of members with one key: ``<key>.jpg`` (or ``.png``, ``.webp``) and
``<key>.json``, the metadata with ``url``, ``width`` and ``height`` (of the stored image), ``original_width``,
``original_height``, ``sha256``, ... Here each shard is read as a stream (``webdataset``): one sample in memory at
a time, never an unpacked copy on disk.

**Pre-filter.** A sample whose metadata gives a ``width`` and ``height`` that fail the size filter, or whose aspect
ratio fails in both orientations (the metadata does not know the EXIF orientation), is rejected from the metadata
alone: its image is never decoded, nor even its header parsed. Its record carries the metadata's width and height.

**Records.** A sample is recorded as ``<shard>/<key>.<ext>``, ``<shard>`` being the shard's path relative to the
shards' folder without ``.tar``; its file stamp is the image's size in bytes and the shard's modification time. The
records of a shard are written together, sorted by image, once the whole shard is scanned, to
``OUT/records/<shard>.jsonl``, followed by ``OUT/records/<shard>.done.json`` (the shard's size and modification
time, sample counts, step timings). A killed scan is resumed per shard: a shard with a matching ``.done.json`` is
skipped, any other is scanned again from its start (the crops, embeddings and photos of its old records are deleted
first when the shard changed). The kept photos are copied out of the shards to ``OUT/images/<shard>/<key>.<ext>``
with the shard's modification time, so the manifests point at real files.

Both engines use this module: :func:`scan_shards` on one machine (in this process or a process pool that survives a
dying worker, as :func:`~.scan.scan_images`) and ``ray_scan.scan_shards_ray`` on a Ray cluster; they write the same
files for the same shards.
"""
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import webdataset as wds
from mmengine.logging import print_log

from portraitisr.utils.image_io import IMAGE_EXTENSIONS

from .photos import builder_warning
from .records import RECORD_KEYS, SHARD_RECORDS_DIR, SHARD_RECORDS_SUFFIX, load_records
from .scan import (ImageScanner, Sample, ScanConfig, _ParallelScan, _remove_outputs, check_settings, error_reason,
                   new_record)
from .stages import PHOTOS_DIR, STEPS, size_reject_reason, write_bytes_atomic

PathLike = Union[str, os.PathLike]

SHARD_SUFFIX = '.tar'
DONE_SUFFIX = '.done.json'
#: image members of a sample, by preference when a sample has several
IMAGE_MEMBERS = tuple(ext.lstrip('.') for ext in sorted(IMAGE_EXTENSIONS))

__all__ = ['Shard', 'find_shards', 'meta_reject_reason', 'read_shard', 'shard_records_path', 'pending_shards',
           'write_shard', 'scan_shards', 'shard_records_paths', 'read_shard_stats', 'ShardResult', 'STEPS']


@dataclass(frozen=True)
class Shard:
    """One tar shard: its path, its name (relative path without ``.tar``) and its file stamp."""

    path: str
    name: str
    file_size: int
    file_mtime_ns: int


def find_shards(source: Union[PathLike, Sequence[PathLike]]) -> List[Shard]:
    """The ``.tar`` shards of a folder (searched recursively, hidden names skipped) or a list of shard files, sorted
    by name. A shard's name is its path relative to the folder (or its file name), without ``.tar``.

    Raises:
        FileNotFoundError: a missing folder or shard, or a folder without shards.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        root = Path(source)
        paths = [p for p in root.rglob(f'*{SHARD_SUFFIX}')
                 if p.is_file() and not any(part.startswith('.') for part in p.relative_to(root).parts)]
        named = [(p, p.relative_to(root).as_posix()[:-len(SHARD_SUFFIX)]) for p in paths]
        if not named:
            raise FileNotFoundError(f'no {SHARD_SUFFIX} shards in {root}')
    else:
        files = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        named = []
        for path in map(Path, files):
            if not path.is_file():
                raise FileNotFoundError(f'shard {path} does not exist')
            named.append((path, path.name[:-len(SHARD_SUFFIX)] if path.name.endswith(SHARD_SUFFIX) else path.name))
    names = [name for _, name in named]
    if len(set(names)) != len(names):
        raise ValueError(f'two shards with one name in {sorted(names)}: give a folder, whose subpaths tell them apart')
    shards = []
    for path, name in sorted(named, key=lambda item: item[1]):
        st = os.stat(path)
        shards.append(Shard(str(path), name, int(st.st_size), int(st.st_mtime_ns)))
    return shards


def meta_reject_reason(meta: dict, config: ScanConfig) -> Optional[str]:
    """``'too_small'`` or ``'aspect'`` from a sample's metadata (img2dataset's ``width`` and ``height``), or None
    (decode it). The aspect ratio rejects only when it fails both ways: the EXIF orientation is not in the metadata.
    """
    width, height = meta.get('width'), meta.get('height')
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return None
    reason = size_reject_reason(width, height, config)
    if reason == 'aspect' and size_reject_reason(height, width, config) is None:
        return None
    return reason


def _meta_of(sample: dict) -> dict:
    raw = sample.get('json')
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


#: what :func:`read_shard` yields: ``('sample', Sample)`` to scan, ``('record', dict)`` decided from the metadata
#: (or a sample without an image), and last ``('end', {'samples': n, 'error': message or None})``
ShardItem = Tuple[str, Union[Sample, dict]]


def _item(shard: Shard, sample: dict, config: ScanConfig) -> ShardItem:
    """One sample of a shard: a :class:`~.scan.Sample` to scan, or its record when its metadata decides."""
    key = str(sample['__key__'])
    member = next((ext for ext in IMAGE_MEMBERS if ext in sample), None)
    if member is None:
        record = new_record(f'{shard.name}/{key}')
        record.update(status='error', reason=f'unreadable: {shard.name}/{key}: the sample has no image member '
                      f'(members: {", ".join(sorted(k for k in sample if not k.startswith("__")))})')
        return 'record', record
    image, data = f'{shard.name}/{key}.{member}', sample[member]
    meta = _meta_of(sample)
    reason = meta_reject_reason(meta, config)
    if reason is not None:
        record = new_record(image)
        record.update(file_size=len(data), file_mtime_ns=shard.file_mtime_ns, width=meta['width'],
                      height=meta['height'], status='rejected', reason=reason)
        return 'record', record
    return 'sample', Sample(image, data, shard.file_mtime_ns, keep_as=f'{PHOTOS_DIR}/{image}')


def read_shard(shard: Shard, config: ScanConfig) -> Iterator[ShardItem]:
    """Stream the samples of one shard (one in memory at a time), with the metadata pre-filter.

    A shard that cannot be read to its end (truncated, not a tar) ends with the reason in ``'end'``; the samples
    read before stay.
    """
    count, error = 0, None
    with open(shard.path, 'rb') as stream:  # closed however the reading ends
        samples = wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([dict(url=shard.path,
                                                                                          stream=stream)]))
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a broken shard ends its samples; the others go on
                error = error_reason(exc if isinstance(exc, OSError) else OSError(f'{shard.path}: {exc}'))
                break
            count += 1
            yield _item(shard, sample, config)
    yield 'end', dict(samples=count, error=error)


# ---------------------------------------------------------------------------------------------------- per-shard files
def shard_records_path(out_dir: PathLike, name: str) -> Path:
    """``OUT/records/<shard>.jsonl``."""
    return Path(out_dir) / SHARD_RECORDS_DIR / f'{name}{SHARD_RECORDS_SUFFIX}'


def _done_path(out_dir: PathLike, name: str) -> Path:
    return Path(out_dir) / SHARD_RECORDS_DIR / f'{name}{DONE_SUFFIX}'


def _write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode('utf-8'))


@dataclass
class ShardResult:
    """What a shard's scan leaves besides its records: counts and step timings (``.done.json``)."""

    shard: str
    file_size: int
    file_mtime_ns: int
    samples: int
    error: Optional[str]
    engine: str
    wall_seconds: float
    step_seconds: Dict[str, float]
    step_photos: Dict[str, int]


def write_shard(out_dir: PathLike, shard: Shard, records: List[dict], result: ShardResult) -> Path:
    """Write a finished shard: its records (sorted by image, the record keys only) then its ``.done.json``."""
    path = shard_records_path(out_dir, shard.name)
    by_image = sorted(records, key=lambda record: record['image'])
    lines = [json.dumps({key: record[key] for key in RECORD_KEYS}) for record in by_image]
    _write_text_atomic(path, ''.join(line + '\n' for line in lines))
    _write_text_atomic(_done_path(out_dir, shard.name), json.dumps(asdict(result), indent=1, sort_keys=True) + '\n')
    return path


def add_timings(result: ShardResult, timings: Dict[str, float]) -> None:
    """Count one photo's step timings (``{step: seconds}``) into a shard's totals."""
    for step, seconds in timings.items():
        result.step_seconds[step] = result.step_seconds.get(step, 0.0) + float(seconds)
        result.step_photos[step] = result.step_photos.get(step, 0) + 1


def read_shard_stats(out_dir: PathLike) -> List[dict]:
    """The ``.done.json`` of every finished shard, sorted by shard name."""
    root = Path(out_dir) / SHARD_RECORDS_DIR
    stats = [json.loads(p.read_text(encoding='utf-8')) for p in root.rglob(f'*{DONE_SUFFIX}')] if root.is_dir() else []
    return sorted(stats, key=lambda item: item['shard'])


def shard_records_paths(out_dir: PathLike) -> List[Path]:
    """The records files of the finished shards (those with a ``.done.json``), sorted by shard name."""
    return [shard_records_path(out_dir, item['shard']) for item in read_shard_stats(out_dir)]


def _drop_shard(out_dir: Path, name: str) -> None:
    """Delete a shard's records and ``.done.json`` and the crops, embeddings and photos its records point to."""
    path = shard_records_path(out_dir, name)
    for record in load_records(path):
        _remove_outputs(out_dir, record)
        photo = out_dir / PHOTOS_DIR / record['image']
        if photo.is_file():
            photo.unlink()
    for stale in (path, _done_path(out_dir, name)):
        if stale.exists():
            stale.unlink()


def pending_shards(out_dir: PathLike, shards: Sequence[Shard]) -> List[Shard]:
    """The shards still to scan; the finished ones are skipped, a changed one (size or modification time) is
    scanned again after its old outputs are deleted, with a warning. Records of shards no longer in the input are
    dropped with a warning, as the single-machine scan drops the records of deleted photos."""
    out_dir = Path(out_dir)
    done = {item['shard']: item for item in read_shard_stats(out_dir)}
    names = {shard.name for shard in shards}
    for name in sorted(set(done) - names):
        builder_warning(f'{name}: a shard recorded before but no longer in the input; its records are dropped')
        _drop_shard(out_dir, name)
    pending = []
    for shard in shards:
        item = done.get(shard.name)
        if item is not None and (item['file_size'], item['file_mtime_ns']) == (shard.file_size, shard.file_mtime_ns):
            if shard_records_path(out_dir, shard.name).is_file():
                continue
        if item is not None:
            builder_warning(f'{shard.name}: the shard changed since it was recorded (size or modification time); '
                            'scanned again')
        _drop_shard(out_dir, shard.name)  # also a partial scan's leftovers
        pending.append(shard)
    return pending


def prepare_scan(shards_source: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                 config: ScanConfig, limit: Optional[int] = None) -> Tuple[List[Shard], List[Shard]]:
    """Shared start of both engines: list the shards, check the settings, find the pending shards.

    Returns ``(all shards, pending shards)`` (at most ``limit`` pending shards)."""
    shards = find_shards(shards_source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, config)
    pending = pending_shards(out_dir, shards)
    if limit is not None:
        pending = pending[:max(int(limit), 0)]
    return shards, pending


def log_shard(result: ShardResult, records: List[dict]) -> None:
    """One log line per photo that could not be read, and one per shard."""
    counts = {status: sum(r['status'] == status for r in records) for status in ('ok', 'rejected', 'error')}
    for record in sorted(records, key=lambda r: r['image']):
        if record['status'] == 'error':
            print_log(f'scan: {record["image"]}: {record["reason"]}', logger='current', level=30)
    if result.error:
        print_log(f'scan: shard {result.shard}: read only {result.samples} sample(s): {result.error}',
                  logger='current', level=30)
    print_log(f'scan: shard {result.shard}: {counts["ok"]} ok, {counts["rejected"]} rejected, {counts["error"]} '
              f'error ({result.engine}, {result.wall_seconds:.1f} s)', logger='current')


def scan_shards(shards_source: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                config: Optional[ScanConfig] = None, workers: int = 1, limit: Optional[int] = None,
                only: Optional[Sequence[str]] = None, isolate: bool = False) -> List[Path]:
    """Stage 1 on webdataset shards, on this machine: ``OUT/records/<shard>.jsonl`` per shard (see the module doc).

    Args:
        shards_source: a folder of ``.tar`` shards (img2dataset's output folder) or a list of shard files.
        out_dir: output folder (``scan.json``, ``records/``, ``faces/``, ``embeddings/``, ``images/``).
        config: scan options (default :class:`ScanConfig`).
        workers: processes; more than 1 use the spawn pool of :func:`~.scan.scan_images`, which survives a dying
            worker and marks only the photo that killed it (``crashed``).
        limit: scan at most this many pending shards in this call.
        only: scan only the pending shards of these names (the Ray engine's fallback).
        isolate: scan in worker processes even with one worker (a photo that kills its process costs one record).

    Returns:
        The records files of all finished shards.
    """
    config = config or ScanConfig()
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    out_dir = Path(out_dir)
    _, pending = prepare_scan(shards_source, out_dir, config, limit)
    if only is not None:
        pending = [shard for shard in pending if shard.name in set(only)]
    scanner = ImageScanner(config, out_dir) if pending and workers == 1 and not isolate else None
    for shard in pending:
        start = time.perf_counter()
        result = ShardResult(shard.name, shard.file_size, shard.file_mtime_ns, 0, None, 'local', 0.0, {}, {})
        records: List[dict] = []

        def collect(record: dict) -> None:
            add_timings(result, record.pop('_timings', {}) or {})
            records.append(record)

        def samples() -> Iterator[Tuple[Sample, str]]:
            items = read_shard(shard, config)
            while True:
                read_start = time.perf_counter()
                kind, item = next(items)
                add_timings(result, {'read': time.perf_counter() - read_start})
                if kind == 'end':
                    result.samples, result.error = item['samples'], item['error']
                    result.step_photos['read'] -= 1  # the end of the shard is not a photo
                    return
                if kind == 'record':
                    collect(item)
                else:
                    yield item, item.image

        if scanner is not None:
            for sample, image in samples():
                collect(scanner.scan(sample, image))
        else:
            _ParallelScan(config, out_dir, workers).run(samples(), collect)
        result.wall_seconds = time.perf_counter() - start
        write_shard(out_dir, shard, records, result)
        log_shard(result, records)
    return shard_records_paths(out_dir)

