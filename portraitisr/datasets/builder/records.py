"""The builder's ``records.jsonl``: one JSON object per scanned photo, appended by stage 1, read by stage 2.

One reader serves both stages, so a resumed scan and the pairing stage agree on what the file holds. The file is
append-only and a run can be killed at any moment, so the reader is tolerant in exactly two ways:

* a truncated **last** line (a write cut short) is dropped quietly;
* an image recorded twice (a run resumed after a crash that happened after the write but before the bookkeeping)
  keeps its **last** record, at the position where it was last written.

Any other line that is not a JSON object with an ``"image"`` string is skipped with a warning naming ``file:line``.
"""
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from mmengine.logging import print_log

PathLike = Union[str, os.PathLike]

RECORDS_FILE = 'records.jsonl'
#: The keys of one record, in the order they are written (the schema is in ``scan.py``'s module docstring).
RECORD_KEYS = ('image', 'image_id', 'status', 'reason', 'width', 'height', 'score', 'faces', 'embeddings',
               'dropped_small_faces')


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
        tmp = path.with_name(f'.{path.name}.tmp')
        with open(tmp, 'w', encoding='utf-8') as f:
            for rec in records:
                f.write(json.dumps(rec) + '\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return records


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
