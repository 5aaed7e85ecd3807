"""The restored folders a study is made from: one folder per method plus the ground truth, file names shared.

Images are matched by file name without its suffix (a method may write ``0001.png`` for ``0001.jpg``), so every
folder must hold the same set of names, each image of a name must have the same size, and every file must be
readable. Anything else stops with one :class:`StudyFolderError` that names the folder, the file and the problem;
nothing is written before the folders pass.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from portraitisr.utils.image_io import ImageReadError, list_images, read_image_size
from .errors import StudyFolderError

__all__ = ['StudyFolderError', 'RestoredFolders', 'GT_NAME', 'METHOD_NAME_PATTERN', 'parse_method_spec',
           'parse_method_specs', 'scan_restored_folders']

PathLike = Union[str, 'os.PathLike[str]']

#: How the ground truth is called in messages and in the study file; not a valid method name (``@``).
GT_NAME = '@gt'
#: Method names: what ``tools/test.py`` calls its rows (config names), never starting with ``@`` (the study's own
#: labels for the ground truth and the attention-check images).
METHOD_NAME_PATTERN = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$')
#: How many names a message lists before it says "and N more".
_LISTED = 5


@dataclass(frozen=True)
class RestoredFolders:
    """Validated folders.

    Attributes:
        methods: ``method name -> folder``, in the order given.
        gt: the ground-truth folder or None.
        names: the shared image names (file names without suffix), sorted.
        files: ``name -> {method name or GT_NAME -> file}``.
        sizes: ``name -> (width, height)``.
    """
    methods: Dict[str, Path]
    gt: Optional[Path]
    names: List[str]
    files: Dict[str, Dict[str, Path]]
    sizes: Dict[str, Tuple[int, int]]


def parse_method_spec(spec: str) -> Tuple[str, Path]:
    """``NAME=FOLDER`` -> ``(NAME, FOLDER)``; a bare ``FOLDER`` is named after the folder."""
    name, sep, folder = spec.partition('=')
    if not sep:
        folder = spec
        name = Path(spec.rstrip('/\\')).name
    if not METHOD_NAME_PATTERN.match(name):
        raise StudyFolderError(f'method name {name!r} (from {spec!r}) must be 1-64 letters, digits or _.+- and not '
                               'start with . + or -; give one with NAME=FOLDER')
    return name, Path(folder)


def parse_method_specs(specs: Sequence[str]) -> Dict[str, Path]:
    """``['NAME=FOLDER' | 'FOLDER', ...]`` (the command line's ``--method`` options) -> ``{NAME: FOLDER}`` in the
    order given; a name given twice is refused."""
    methods: Dict[str, Path] = {}
    for spec in specs:
        name, folder = parse_method_spec(spec)
        if name in methods:
            raise StudyFolderError(f'method name {name!r} is given twice; name them with NAME=FOLDER')
        methods[name] = folder
    return methods


def _listing(names) -> str:
    names = sorted(names)
    shown = ', '.join(names[:_LISTED])
    return shown + (f' and {len(names) - _LISTED} more' if len(names) > _LISTED else '')


def _index(label: str, folder: Path) -> Dict[str, Path]:
    """``stem -> file`` of one folder; refuses a missing or empty folder and two files with one stem."""
    try:
        files = list_images(folder)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise StudyFolderError(f'{label}: {error}') from None
    if not files:
        raise StudyFolderError(f'{label}: {folder} holds no image files')
    index: Dict[str, Path] = {}
    for path in files:
        if path.stem in index:
            raise StudyFolderError(f'{label}: {index[path.stem].name} and {path.name} in {folder} have the same '
                                   'name; keep one')
        index[path.stem] = path
    return index


def scan_restored_folders(methods: Mapping[str, PathLike], gt: Optional[PathLike] = None) -> RestoredFolders:
    """Check the folders and match their images by name.

    Args:
        methods: ``method name -> folder of its restored images`` (at least two methods).
        gt: the ground-truth folder (needed by WR_id studies), or None.

    Raises:
        StudyFolderError: fewer than two methods, a bad or repeated name, a folder that is missing or empty, a name
            missing from some folder, images of one name with different sizes, a file whose header cannot be read.
    """
    if len(methods) < 2:
        raise StudyFolderError(f'a study compares at least two methods, got {len(methods)}')
    for name in methods:
        if not METHOD_NAME_PATTERN.match(name):
            raise StudyFolderError(f'method name {name!r} must be 1-64 letters, digits or _.+- (no leading . + -)')
    labels = {GT_NAME: Path(gt)} if gt is not None else {}  # the ground truth first: messages list it first
    labels.update((name, Path(folder)) for name, folder in methods.items())
    indices = {label: _index('ground truth' if label == GT_NAME else f'method {label!r}', folder)
               for label, folder in labels.items()}
    reference = GT_NAME if gt is not None else next(iter(methods))
    expected = set(indices[reference])
    for label, index in indices.items():
        missing, extra = expected - set(index), set(index) - expected
        if missing or extra:
            what = 'the ground truth' if label == GT_NAME else f'method {label!r}'
            parts = []
            if missing:
                parts.append(f'lacks {len(missing)} of the {len(expected)} images of {reference}: {_listing(missing)}')
            if extra:
                parts.append(f'has {len(extra)} images that {reference} lacks: {_listing(extra)}')
            raise StudyFolderError(f'{what} ({labels[label]}) ' + '; '.join(parts)
                                   + '; every folder must hold the same file names')

    names = sorted(expected)
    files = {name: {label: indices[label][name] for label in labels} for name in names}
    sizes: Dict[str, Tuple[int, int]] = {}
    for name in names:
        found = {}
        for label, path in files[name].items():
            try:
                found[label] = read_image_size(path)
            except (ImageReadError, OSError) as error:
                raise StudyFolderError(f'unreadable image: {error}') from None
        if len(set(found.values())) > 1:
            listed = ', '.join(f'{label} {w}x{h}' for label, (w, h) in found.items())
            raise StudyFolderError(f'image {name!r} has different sizes in the folders ({listed}); the methods must '
                                   'restore to the same size')
        sizes[name] = next(iter(found.values()))
    return RestoredFolders(methods={name: labels[name] for name in methods}, gt=labels.get(GT_NAME), names=names,
                           files=files, sizes=sizes)
