"""Finding the photos of the PortraitSR-4K builder: a recursive walk that follows folder links, but never forever.

A photo collection often links folders from other disks, so symbolic links to folders are followed. What a plain
recursive glob gets wrong is reported instead, one warning (:class:`BuilderWarning`) per case, and never walked:

* a link back to one of its own ancestor folders (a loop: followed, it would never end);
* a link to a folder that is already walked under another path (its photos would be recorded twice and each copy
  would become the other's identity reference);
* a second path to a photo already found (a hard link or a file link), for the same reason;
* a broken link, a link that points to itself, and a folder that cannot be read.

Real folders are walked before linked ones, so a photo keeps its real path when it is reachable both ways. Hidden
files and folders (names starting with ``.``) are skipped, as :func:`~portraitisr.utils.image_io.list_images`
does, and so is the builder's output folder when it lies inside the input.
"""
import errno
import os
import stat
import warnings
from collections import deque
from pathlib import Path
from typing import List, Optional, Tuple, Union

from portraitisr.utils.image_io import IMAGE_EXTENSIONS

PathLike = Union[str, os.PathLike]

__all__ = ['BuilderWarning', 'builder_warning', 'find_photos']


class BuilderWarning(UserWarning):
    """Something the builder skipped or redid, said once per case (links, changed or deleted photos)."""


def builder_warning(message: str) -> None:
    """Warn with :class:`BuilderWarning` (the tool prints each one as a single line)."""
    warnings.warn(message, BuilderWarning, stacklevel=3)


def _key(st: os.stat_result) -> Tuple[int, int]:
    return st.st_dev, st.st_ino


def _join(relative: str, name: str) -> str:
    return f'{relative}/{name}' if relative else name


def find_photos(root: PathLike, exclude: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """``(path, relative posix path)`` of every image file under ``root``, sorted by the relative path.

    Args:
        root: the photo folder.
        exclude: a folder whose contents are never listed (the builder's output, when it lies inside ``root``).

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f'{root} is not a folder')
        raise FileNotFoundError(f'photo folder {root} does not exist')
    excluded = None
    if exclude is not None and Path(exclude).is_dir():
        excluded = _key(os.stat(exclude))
    root_key = _key(os.stat(root))
    seen_dirs = {root_key: ''}  # folder identity -> the relative path it was walked under
    seen_files: dict = {}  # file identity -> relative path
    photos: List[Tuple[str, str]] = []
    # (folder path, relative path, identities of the folders from the root down to it)
    stack: List[Tuple[str, str, Tuple[Tuple[int, int], ...]]] = [(str(root), '', (root_key,))]
    linked: deque = deque()  # links to folders, walked after every real folder
    while stack or linked:
        if not stack:
            path, relative, ancestors = linked.popleft()
            key = _key(os.stat(path))
            if key in ancestors:
                builder_warning(f'{relative}: symbolic link loop: it points back to its own ancestor folder '
                      f'"{seen_dirs[key] or "."}" ({os.path.realpath(path)}); not followed')
                continue
            if key in seen_dirs:
                builder_warning(f'{relative}: links to the folder already walked as "{seen_dirs[key] or "."}"; '
                      'its photos are not listed twice')
                continue
            seen_dirs[key] = relative
            stack.append((path, relative, ancestors + (key,)))
            continue
        directory, relative, ancestors = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as error:
            builder_warning(f'{relative or "."}: cannot read the folder ({error.strerror or error}); skipped')
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith('.'):
                continue
            child = _join(relative, entry.name)
            try:
                is_link = entry.is_symlink()
                st = os.stat(entry.path)  # follows links
            except OSError as error:
                target = os.readlink(entry.path) if os.path.islink(entry.path) else '?'
                what = 'symbolic link loop' if error.errno == errno.ELOOP else 'broken symbolic link'
                builder_warning(f'{child}: {what} (-> {target}); skipped')
                continue
            if stat.S_ISDIR(st.st_mode):
                key = _key(st)
                if key == excluded:
                    continue
                if is_link:
                    linked.append((entry.path, child, ancestors))
                elif key in seen_dirs:  # a real folder repeats only through a bind mount
                    builder_warning(f'{child}: the folder already walked as "{seen_dirs[key] or "."}"; '
                                    'not walked twice')
                else:
                    seen_dirs[key] = child
                    subfolders.append((entry.path, child, ancestors + (key,)))
            elif stat.S_ISREG(st.st_mode) and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                key = _key(st)
                if key in seen_files:
                    builder_warning(f'{child}: the same file as "{seen_files[key]}" (a link); listed once')
                    continue
                seen_files[key] = child
                photos.append((entry.path, child))
        stack.extend(reversed(subfolders))  # depth first, in name order
    photos.sort(key=lambda item: item[1])
    return photos
