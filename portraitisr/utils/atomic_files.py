"""Write files so that a crash, a kill -9 or a power loss leaves either the old file or the new one, never half.

The pattern: write to a temporary file in the same folder (a rename is atomic only within one file system),
``fsync`` it, ``os.replace`` it over the target, then ``fsync`` the folder so that the rename itself is on disk.
Standard library only: the weight resolver imports this and must stay cheap to import.
"""
import contextlib
import os
from pathlib import Path
from typing import Union

__all__ = ['fsync_file', 'fsync_folder', 'publish_file', 'write_bytes_atomically']

PathLike = Union[str, 'os.PathLike[str]']


def fsync_file(path: PathLike) -> None:
    """Flush a file's bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: PathLike) -> None:
    """Make renames and deletions in ``folder`` durable (POSIX); a no-op where a folder cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is then as durable as they allow
        pass
    finally:
        os.close(fd)


def publish_file(temporary: PathLike, target: PathLike) -> None:
    """Move a finished ``temporary`` file (in ``target``'s folder) over ``target``: fsync, rename, fsync folder."""
    fsync_file(temporary)
    os.replace(temporary, target)
    fsync_folder(Path(target).parent)


def write_bytes_atomically(path: PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` through a temporary file in the same folder."""
    path = Path(path)
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(temporary, 'wb') as f:
            f.write(data)
        publish_file(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
