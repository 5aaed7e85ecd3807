"""``portraitisr study create``: make a study folder from restored folders.

The study folder holds ``study.json`` (the design, see :mod:`.design`) and ``images/<id>.png``: every image the
participants see, re-encoded (which drops file metadata such as a method's name in a PNG text chunk) under a random
128-bit id, so neither a file name nor a URL tells a method. With face crops, every method's image of an item is
cropped with the same matrix (see :mod:`.faces`). The folder is built beside its destination and renamed into place
at the end: a failed run leaves nothing, and an existing folder is never touched.
"""
from __future__ import annotations

import os
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from portraitisr.utils.atomic_files import fsync_folder
from portraitisr.utils.image_io import ImageReadError, read_image, write_image
from .attention import CORRUPTIONS, corrupt
from .design import STUDY_KINDS, AttentionItem, StudyDesign, StudyItem, save_study
from .folders import GT_NAME, StudyFolderError, parse_method_specs, scan_restored_folders

__all__ = ['create_study', 'IMAGE_FORMATS', 'DEFAULT_ATTENTION_POOL']

PathLike = Union[str, 'os.PathLike[str]']

#: Formats of the images participants see: PNG (lossless, the default) or JPEG at quality 95 for huge photos.
IMAGE_FORMATS = {'png': ('.png', []), 'jpg': ('.jpg', [cv2.IMWRITE_JPEG_QUALITY, 95])}
#: How many different attention-check images a study prepares (each participant gets a random subset); our choice.
DEFAULT_ATTENTION_POOL = 10
#: Seed offset of the attention-check randomness (which items, which noise), apart from the questionnaires' streams.
_ATTENTION_STREAM = 7919


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path).rgb
    except (ImageReadError, OSError) as error:
        raise StudyFolderError(f'unreadable image: {error}') from None


def _prepare(rgb: np.ndarray, cropper, matrix: Optional[np.ndarray], max_side: Optional[int]) -> np.ndarray:
    """Crop (with face crops) then shrink to ``max_side``: the same steps for every image of an item."""
    if cropper is not None:
        rgb = cropper.crop(rgb, matrix)
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class _ImageWriter:
    """Writes images under fresh random ids into ``<folder>/images``."""

    def __init__(self, folder: Path, image_format: str) -> None:
        self.folder = folder
        self.suffix, self.params = IMAGE_FORMATS[image_format]
        (folder / 'images').mkdir(parents=True)
        self.files: Dict[str, str] = {}

    def __call__(self, rgb: np.ndarray) -> str:
        image_id = secrets.token_hex(16)
        relative = f'images/{image_id}{self.suffix}'
        if self.params:  # JPEG quality: encode here (write_image writes OpenCV's default quality)
            bgr = np.round(np.clip(rgb[..., ::-1], 0, 1) * 255).astype(np.uint8)
            ok, data = cv2.imencode(self.suffix, bgr, self.params)
            if not ok:
                raise RuntimeError(f'OpenCV failed to encode {relative}')
            (self.folder / relative).write_bytes(data.tobytes())
        else:
            write_image(self.folder / relative, rgb)
        self.files[image_id] = relative
        return image_id


def create_study(output: PathLike, kind: str, methods: Union[Mapping[str, PathLike], Sequence[str]],
                 gt: Optional[PathLike] = None, questions: int = 20, attention_checks: int = 0, seed: int = 0,
                 face_crops: bool = False, crop_size: int = 512, detector: str = 'auto', max_side: Optional[int] = None,
                 image_format: str = 'png', ab_reference: Optional[str] = None, title: Optional[str] = None,
                 prompt: Optional[str] = None, attention_pool: int = DEFAULT_ATTENTION_POOL,
                 progress: Optional[Callable[[int, int], None]] = None) -> StudyDesign:
    """Make a study folder.

    Args:
        output: the study folder to create (must not exist).
        kind: ``wr_id``, ``wr_n`` or ``ab`` (see :mod:`.design`).
        methods: ``method name -> folder of its restored images``, or the command line's ``'[NAME=]FOLDER'``
            strings (:func:`~.folders.parse_method_specs`); the names are what ``tools/test.py`` calls the methods'
            rows, so that the win rates land there.
        gt: the ground-truth folder; required by ``wr_id`` (the reference) and by face crops without a clear face in
            the methods' images; also the clean image of attention checks (else a random method's image).
        questions: questions per participant (HeadsUp: 58), drawn from all items (A/B: item x pair).
        attention_checks: attention checks per participant, at random positions.
        seed: seed of the questionnaires and of the attention-check images.
        face_crops: show aligned face crops instead of whole images.
        crop_size: face crop side in pixels.
        detector: face detector for the crops: ``'auto'``, ``'hog'`` or ``'mmod'``.
        max_side: shrink images whose longer side is larger (INTER_AREA, after cropping); None keeps the size.
        image_format: ``'png'`` or ``'jpg'`` (quality 95) for the images participants see.
        ab_reference: A/B only: compare this method with each of the others (AuthFace's design); None compares every
            pair.
        title: shown on every page (default "Image study"; never name the methods).
        prompt: the question; default from the kind (faces or images).
        attention_pool: how many different images attention checks are made from.
        progress: called as ``progress(done, total)`` before each image (the CLI shows a bar).

    Returns:
        The design written to ``<output>/study.json``.

    Raises:
        StudyFolderError: bad folders (see :func:`~.folders.scan_restored_folders`), an unreadable image, or no face
            in too many items.
        ValueError: a bad option (unknown kind, too many questions, ...).
        FileExistsError: ``output`` exists.
    """
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, Mapping):
        methods = parse_method_specs(methods)
    if kind not in STUDY_KINDS:
        raise ValueError(f'unknown study kind {kind!r}; choose from {", ".join(STUDY_KINDS)}')
    study_kind = STUDY_KINDS[kind]
    if study_kind.needs_reference and gt is None:
        raise ValueError(f'a {kind} study shows the ground truth as the reference: give the ground-truth folder')
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f'image_format must be one of {", ".join(IMAGE_FORMATS)}, got {image_format!r}')
    if max_side is not None and max_side < 64:
        raise ValueError(f'max_side must be at least 64 pixels, got {max_side}')
    if attention_checks < 0 or questions < 1:
        raise ValueError(f'need questions >= 1 and attention_checks >= 0, got {questions} and {attention_checks}')
    if attention_checks and kind != 'ab' and len(methods) - 1 > len(CORRUPTIONS):
        raise ValueError(f'attention checks need one corrupted copy per other option: at most {len(CORRUPTIONS) + 1} '
                         f'methods, got {len(methods)}')
    if attention_checks and attention_pool < attention_checks:
        raise ValueError(f'attention_pool ({attention_pool}) must be at least attention_checks ({attention_checks})')
    names = list(methods)
    if kind == 'ab':
        if ab_reference is not None and ab_reference not in names:
            raise ValueError(f'A/B reference method {ab_reference!r} is not one of the methods {names}')
        pairs = ([(ab_reference, m) for m in names if m != ab_reference] if ab_reference is not None
                 else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    elif ab_reference is not None:
        raise ValueError('ab_reference is an option of A/B studies')
    else:
        pairs = []

    output = Path(output)
    if output.exists():
        raise FileExistsError(f'{output} exists; choose a new study folder (nothing was changed)')
    folders = scan_restored_folders(methods, gt)
    pool = len(folders.names) * (len(pairs) if kind == 'ab' else 1)
    if questions > pool:
        raise ValueError(f'{questions} questions per participant, but the folders give only {pool} distinct '
                         f'questions ({len(folders.names)} images{f" x {len(pairs)} pairs" if pairs else ""})')

    cropper = None
    if face_crops:
        from .faces import FaceCropper  # imports torch and the face stack: only when crops are asked for
        cropper = FaceCropper(crop_size=crop_size, detector=detector)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.parent / f'.{output.name}.tmp-{uuid.uuid4().hex[:8]}'
    try:
        write = _ImageWriter(work, image_format)
        items: List[StudyItem] = []
        clean_sources: Dict[str, tuple] = {}  # name -> (label of the clean image, crop matrix): re-read for checks
        dropped: List[str] = []
        rng = np.random.default_rng([seed, _ATTENTION_STREAM])
        for done, name in enumerate(folders.names):
            if progress is not None:
                progress(done, len(folders.names))
            files = folders.files[name]
            images = {label: _read(files[label]) for label in files}
            matrix = None
            if cropper is not None:
                matrix = cropper.matrix(images.get(GT_NAME), [images[m] for m in names])
                if matrix is None:
                    dropped.append(name)
                    continue
            images = {label: _prepare(rgb, cropper, matrix, max_side) for label, rgb in images.items()}
            ids = {m: write(images[m]) for m in names}
            reference = write(images[GT_NAME]) if study_kind.needs_reference else None
            items.append(StudyItem(name=name, images=ids, reference=reference))
            clean_label = GT_NAME if GT_NAME in files else names[int(rng.integers(len(names)))]
            clean_sources[name] = (clean_label, matrix)

        if len(items) * max(len(pairs), 1) < questions:
            raise StudyFolderError(f'no face was found in {len(dropped)} of {len(folders.names)} images '
                                   f'({", ".join(dropped[:5])}{"..." if len(dropped) > 5 else ""}); '
                                   f'{len(items)} are left, too few for {questions} questions per participant')

        attention_items: List[AttentionItem] = []
        if attention_checks:
            count = min(attention_pool, len(items))
            if count < attention_checks:
                raise ValueError(f'{attention_checks} attention checks per participant need as many images, the '
                                 f'study has {count}')
            wanted = list(CORRUPTIONS)[:4] if kind == 'ab' else list(CORRUPTIONS)[:len(names) - 1]
            for index in sorted(rng.choice(len(items), size=count, replace=False)):
                name = items[int(index)].name
                label, matrix = clean_sources[name]
                clean = _prepare(_read(folders.files[name][label]), cropper, matrix, max_side)
                attention_items.append(AttentionItem(
                    name=name, clean=write(clean), corrupted={c: write(corrupt(clean, c, rng)) for c in wanted},
                    reference=write(clean) if study_kind.needs_reference else None))

        design = StudyDesign(
            kind=kind, title=title or 'Image study',
            prompt=prompt or (study_kind.face_prompt if face_crops else study_kind.image_prompt),
            methods=names, items=items, questions_per_participant=questions, seed=int(seed), images=write.files,
            attention_items=attention_items, attention_per_participant=attention_checks, pairs=pairs,
            face_crops=dict(crop_size=crop_size, detector=detector, template='ffhq512') if face_crops else None,
            source=dict(methods={m: str(Path(p).resolve()) for m, p in folders.methods.items()},
                        gt=None if folders.gt is None else str(folders.gt.resolve()), dropped_no_face=dropped,
                        max_side=max_side, image_format=image_format))
        save_study(design, work)
        fsync_folder(work / 'images')
        os.rename(work, output)  # atomic; fails (and we clean up) if output appeared meanwhile
        fsync_folder(output.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return design
