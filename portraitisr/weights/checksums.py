"""sha256 digests of weight files: computing them once, normalising expected ones, trust-on-first-use records.

Without a published sha256, ``resolve_file(..., trust_on_first_use=True)`` records the digest of the first file
next to it (``<file>.sha256``, ``sha256sum`` format) and refuses a different file later.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional, Union

from portraitisr.utils.atomic_files import write_bytes_atomically

from .errors import ChecksumError

__all__ = ['sha256_of', 'remember_sha256', 'normalise_sha256', 'tofu_record_path', 'read_tofu_record',
           'write_tofu_record']

_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
# Keyed by (path, size, mtime): resolving the same file twice in a process should not hash it twice.
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def _memo_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def sha256_of(path: Union[str, 'os.PathLike[str]'], chunk_size: int = 1 << 20) -> str:
    """Lower-case hex sha256 of a file's bytes (memoised per path, size and modification time)."""
    path = Path(path)
    key = _memo_key(path)
    if key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(chunk_size), b''):
                digest.update(block)
        _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]


def remember_sha256(path: Union[str, 'os.PathLike[str]'], digest: str) -> None:
    """Record the digest of a file just written (hashed while it was streamed), so it is not read again."""
    _SHA256_MEMO[_memo_key(Path(path))] = digest


def normalise_sha256(sha256: Optional[str]) -> Optional[str]:
    """``sha256`` as 64 lower-case hex digits (a ``sha256:`` prefix is dropped); None stays None."""
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if value.startswith('sha256:'):
        value = value[len('sha256:'):]
    if not _SHA256_RE.match(value):
        raise ValueError(f'sha256 must be 64 hexadecimal characters, got {sha256!r}')
    return value


def tofu_record_path(path: Union[str, 'os.PathLike[str]']) -> Path:
    """Where the first-download digest of ``path`` is recorded: ``<path>.sha256`` (``sha256sum`` format)."""
    path = Path(path)
    return path.with_name(path.name + '.sha256')


def read_tofu_record(record: Path) -> Optional[str]:
    """The digest recorded in ``record``, None when there is no record; a damaged record raises ChecksumError."""
    if not record.is_file():
        return None
    fields = record.read_text(encoding='utf-8').split()
    if not fields or not _SHA256_RE.match(fields[0].lower()):
        # A damaged record must not silently turn into "no record" (which would trust any file again).
        raise ChecksumError(f'{record} does not hold a sha256 (expected "<64 hex digits>  <file name>"); '
                            'delete it to trust the current file again')
    return fields[0].lower()


def write_tofu_record(record: Path, digest: str, name: str) -> None:
    """Record ``digest`` for the file ``name`` (atomically; nothing is written when the record already says so)."""
    if read_tofu_record(record) == digest:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(record, f'{digest}  {Path(name).name}\n'.encode())
