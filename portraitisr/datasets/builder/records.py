"""The builder's ``records.jsonl``: one JSON object per scanned photo, appended by stage 1, read by stage 2.

One reader serves both stages, so a resumed scan and the pairing stage agree on what the file holds. The file is
append-only and a run can be killed at any moment, so the reader is tolerant in exactly two ways:

* a truncated **last** line (a write cut short) is dropped quietly;
* an image recorded twice (a run resumed after a crash that happened after the write but before the bookkeeping)
  keeps its **last** record, at the position where it was last written.

Any other line that is not a JSON object with an ``"image"`` string is skipped with a warning naming ``file:line``.

Each record carries the **file stamp** of its photo (``file_size`` in bytes and ``file_mtime_ns``, taken before the
photo was read). :func:`stamp_status` compares it with the file as it is now, so a photo replaced, edited or deleted
after it was recorded is scanned again or dropped, never kept with a stale record. A file rewritten with the same
size within the file system's timestamp resolution goes unnoticed (a content hash would cost a second full read of
every photo).
"""
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from mmengine.logging import print_log

PathLike = Union[str, os.PathLike]

RECORDS_FILE = 'records.jsonl'
#: The scan's settings (the ``ScanConfig`` as JSON), written by its first run and checked by every resumed one.
SETTINGS_FILE = 'scan.json'
#: Web-scale scans write the records of each shard to ``records/<shard>.jsonl`` (see ``shards.py``).
SHARD_RECORDS_DIR = 'records'
SHARD_RECORDS_SUFFIX = '.jsonl'
#: The keys of one record, in the order they are written (the schema is in ``scan.py``'s module docstring).
RECORD_KEYS = ('image', 'image_id', 'file_size', 'file_mtime_ns', 'status', 'reason', 'width', 'height', 'score',
               'faces', 'embeddings', 'dropped_small_faces')
#: The keys of the file stamp inside a record.
STAMP_KEYS = ('file_size', 'file_mtime_ns')


def file_stamp(path: PathLike) -> Dict[str, int]:
    """``{'file_size': bytes, 'file_mtime_ns': modification time}`` of a file (links followed)."""
    st = os.stat(path)
    return dict(file_size=int(st.st_size), file_mtime_ns=int(st.st_mtime_ns))


def stamp_status(record: dict, path: PathLike) -> str:
    """How a record's file stamp compares with the photo at ``path`` now.

    Returns:
        ``'current'`` (same size and modification time), ``'changed'``, ``'missing'`` (no such file) or
        ``'unstamped'`` (a record without a stamp, written by an older builder).
    """
    try:
        now = file_stamp(path)
    except FileNotFoundError:
        return 'missing'
    except OSError:
        return 'changed'  # there but unreadable: not the file that was recorded, as far as we can tell
    if any(not isinstance(record.get(key), int) for key in STAMP_KEYS):
        return 'unstamped'
    return 'current' if all(record[key] == now[key] for key in STAMP_KEYS) else 'changed'


def read_records_with_stats(path: PathLike) -> Tuple[Dict[str, dict], Dict[str, int]]:
    """``records.jsonl`` -> ``({image: record}, stats)``.

    ``stats`` counts the non-empty ``lines``, the ``duplicates`` (records replaced by a later one), the
    ``bad_lines`` (skipped with a warning) and the ``truncated_last_line`` (0 or 1). Raises ``FileNotFoundError``
    when the file does not exist.
    """
    records: Dict[str, dict] = {}
    stats = dict(lines=0, duplicates=0, bad_lines=0, truncated_last_line=0)
    with open(path, 'rb') as f:
        lines = f.read().split(b'\n')
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        stats['lines'] += 1
        try:
            record = json.loads(raw.decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get('image'), str):
            if number == last:  # a write cut short by a crash: expected, dropped quietly
                stats['truncated_last_line'] += 1
            else:
                stats['bad_lines'] += 1
                warnings.warn(f'{path}:{number + 1}: not a record, skipped: {raw[:80]!r}')
            continue
        if record['image'] in records:
            stats['duplicates'] += 1
            del records[record['image']]  # the last one wins, and sits where it was written
        records[record['image']] = record
    return records, stats


def read_settings(out_dir: PathLike) -> Optional[dict]:
    """The settings the scan in ``out_dir`` was made with (its ``scan.json``), or None when there is none."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        raise ValueError(f'{path} is not readable JSON ({error})') from None
    if not isinstance(settings, dict):
        raise ValueError(f'{path} does not hold the settings of a scan (a JSON object)')
    return settings


def read_records(path: PathLike) -> Dict[str, dict]:
    """``records.jsonl`` -> ``{image: record}`` (see :func:`read_records_with_stats` for what is dropped)."""
    return read_records_with_stats(path)[0]


def load_records(path: PathLike, repair: bool = False) -> list[dict]:
    """The records of ``records.jsonl`` as a list, in file order; a missing file gives ``[]``.

    Args:
        path: the file.
        repair: when lines were dropped or replaced, or the file does not end with a newline, rewrite it
            (atomically) with the kept records only, so that the next append starts on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return []
    by_image, stats = read_records_with_stats(path)
    records = list(by_image.values())
    dropped = stats['bad_lines'] + stats['truncated_last_line'] + stats['duplicates']
    if repair and (dropped or not _ends_with_newline(path)):
        if dropped:
            print_log(f'{path}: dropped {dropped} incomplete or repeated record line(s)', logger='current',
                      level=30)
        rewrite_records(path, records)
    return records


def rewrite_records(path: PathLike, records: list) -> None:
    """Replace ``records.jsonl`` with ``records`` (one line each) atomically: a temporary file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        for rec in records:
            f.write(json.dumps(rec) + '\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _ends_with_newline(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return True
    with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b'\n'


class RecordWriter:
    """Appends records to ``records.jsonl``, one line each, flushed and fsynced (the only writer of the file)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, 'a', encoding='utf-8')

    def write(self, record: dict) -> None:
        self._file.write(json.dumps({key: record[key] for key in RECORD_KEYS}) + '\n')
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> 'RecordWriter':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
