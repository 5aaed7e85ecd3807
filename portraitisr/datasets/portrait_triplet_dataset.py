"""HeadsUp training triplets from a JSONL manifest: HQ portrait, its face, and a same-identity reference.

The manifest (one JSON object per image, schema in ``docs/portrait_data.md``) is what the dataset builder
writes: every detected face with its 5 landmarks, an optional aligned crop, and the faces of the same person
found elsewhere in the set (HeadsUp section 2.4: pairs with identity similarity above a threshold).
The LQ is made later, on the device, by the data preprocessor; dropping the reference (HeadsUp: p = 0.2)
happens in the model, so that the dataset stays the same for both training stages.
"""
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from portraitisr.face.alignment.face_aligner import FaceAligner
from portraitisr.registry import DATASETS
from .image_folder_dataset import (TagMap, crop_flip_geometry, flip_box, flip_landmarks, load_tags, read_rgb,
                                   resize_square, to_chw_tensor)
from .sample_images import SAMPLE_IMAGES, SAMPLE_SCHEME, is_sample

#: Manifests shipped inside the package, addressed as ``sample://NAME``.
SAMPLE_MANIFESTS = {'portraits': Path(__file__).resolve().parent / 'manifests' / 'sample_portraits.jsonl'}

#: A face-unit sample whose reference is drawn when the item is read.
_DRAW_REFERENCE = -1


class ManifestError(ValueError):
    """A manifest line that is not valid JSON or does not follow the schema (message: ``file:line: problem``)."""


class PortraitDataError(RuntimeError):
    """An image or crop named by a valid manifest line cannot be read or does not match the line."""


@dataclass
class ReferenceRecord:
    """One same-identity face: an aligned ``crop`` file, or an ``image`` with the face's 5 ``landmarks``."""

    crop: Optional[str] = None
    image: Optional[str] = None
    landmarks: Optional[np.ndarray] = None  # 5 x 2 float32, pixels of ``image``
    similarity: Optional[float] = None


@dataclass
class FaceRecord:
    """One face of a manifest image (coordinates in pixels of the image as stored)."""

    landmarks: np.ndarray  # 5 x 2 float32, pixel centres, image-left first
    box: Optional[np.ndarray] = None  # 4 float32, x1 y1 x2 y2 pixel edges
    score: Optional[float] = None
    crop: Optional[str] = None
    references: List[ReferenceRecord] = field(default_factory=list)


@dataclass
class ManifestEntry:
    """One manifest line: an image and its faces."""

    image: str
    line: int
    height: Optional[int] = None
    width: Optional[int] = None
    faces: List[FaceRecord] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- parsing
def resolve_manifest(manifest: str) -> Path:
    """A manifest path or ``sample://NAME`` (a manifest shipped with the package) -> the file."""
    if is_sample(manifest):
        name = manifest[len(SAMPLE_SCHEME):]
        if name not in SAMPLE_MANIFESTS:
            raise KeyError(f'Unknown sample manifest {manifest!r}; available: '
                           f'{[SAMPLE_SCHEME + n for n in SAMPLE_MANIFESTS]}')
        return SAMPLE_MANIFESTS[name]
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f'Manifest {manifest!r} does not exist')
    return path


def _resolve_path(path: str, root: str) -> str:
    if is_sample(path) or os.path.isabs(path):
        return path
    return os.path.join(root, path)


class _LineParser:
    """Checks one manifest line against the schema; every error names ``file:line`` and the field."""

    def __init__(self, manifest: str, line: int, root: str) -> None:
        self.where, self.root = f'{manifest}:{line}', root

    def fail(self, problem: str) -> ManifestError:
        return ManifestError(f'{self.where}: {problem}')

    def path(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(f'{what} must be a non-empty string, got {value!r}')
        if is_sample(value) and value[len(SAMPLE_SCHEME):] not in SAMPLE_IMAGES:
            raise self.fail(f'{what}: unknown sample image {value!r}; available: '
                            f'{[SAMPLE_SCHEME + n for n in SAMPLE_IMAGES]}')
        return _resolve_path(value, self.root)

    def number(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f'{what} must be a finite number, got {value!r}')
        return float(value)

    def points(self, value: Any, what: str) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != (5, 2):
            raise self.fail(f'{what} must be 5 [x, y] points (left eye, right eye, nose, left mouth, '
                            f'right mouth), got {value!r}')
        if not np.isfinite(array).all():
            raise self.fail(f'{what} has non-finite values: {value!r}')
        return array.astype(np.float32)

    def box(self, value: Any, what: str) -> np.ndarray:
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise self.fail(f'{what} must be [x1, y1, x2, y2], got {value!r}')
        x1, y1, x2, y2 = [self.number(v, what) for v in value]
        if not (x2 > x1 and y2 > y1):
            raise self.fail(f'{what} must have x2 > x1 and y2 > y1, got {value!r}')
        return np.array([x1, y1, x2, y2], dtype=np.float32)

    def reference(self, value: Any, what: str) -> ReferenceRecord:
        if not isinstance(value, dict):
            raise self.fail(f'{what} must be an object, got {value!r}')
        similarity = value.get('similarity')
        ref = ReferenceRecord(similarity=None if similarity is None else self.number(similarity,
                                                                                    f'{what}.similarity'))
        if 'crop' in value:
            ref.crop = self.path(value['crop'], f'{what}.crop')
        elif 'image' in value:
            ref.image = self.path(value['image'], f'{what}.image')
            if 'landmarks' not in value:
                raise self.fail(f'{what} has an "image" but no "landmarks" to align it with')
            ref.landmarks = self.points(value['landmarks'], f'{what}.landmarks')
        else:
            raise self.fail(f'{what} needs a "crop" (aligned face file) or an "image" with "landmarks"')
        return ref

    def face(self, value: Any, what: str) -> FaceRecord:
        if not isinstance(value, dict):
            raise self.fail(f'{what} must be an object, got {value!r}')
        if 'landmarks' not in value:
            raise self.fail(f'{what} has no "landmarks"')
        face = FaceRecord(landmarks=self.points(value['landmarks'], f'{what}.landmarks'))
        if value.get('box') is not None:
            face.box = self.box(value['box'], f'{what}.box')
        if value.get('score') is not None:
            face.score = self.number(value['score'], f'{what}.score')
        if value.get('crop') is not None:
            face.crop = self.path(value['crop'], f'{what}.crop')
        references = value.get('references', [])
        if not isinstance(references, list):
            raise self.fail(f'{what}.references must be a list, got {references!r}')
        face.references = [self.reference(r, f'{what}.references[{i}]') for i, r in enumerate(references)]
        return face

    def entry(self, text: str, line: int) -> ManifestEntry:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise self.fail(f'not valid JSON ({error.msg} at column {error.colno})') from None
        if not isinstance(value, dict):
            raise self.fail(f'expected a JSON object per line, got {type(value).__name__}')
        if 'image' not in value:
            raise self.fail('no "image"')
        entry = ManifestEntry(image=self.path(value['image'], 'image'), line=line)
        for key in ('height', 'width'):
            if value.get(key) is not None:
                size = value[key]
                if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                    raise self.fail(f'{key} must be a positive integer, got {size!r}')
                setattr(entry, key, size)
        faces = value.get('faces', [])
        if not isinstance(faces, list):
            raise self.fail(f'faces must be a list, got {faces!r}')
        entry.faces = [self.face(f, f'faces[{i}]') for i, f in enumerate(faces)]
        return entry


def load_manifest(manifest: str, data_root: Optional[str] = None) -> List[ManifestEntry]:
    """Parse and check a JSONL manifest (or ``sample://NAME``).

    Relative paths are joined to ``data_root``, by default the manifest's folder. Empty lines and lines
    starting with ``#`` are skipped; keys the schema does not name are ignored (room for extra fields).

    Raises:
        ManifestError: naming ``file:line`` and the problem, for the first bad line.
    """
    path = resolve_manifest(manifest)
    root = data_root if data_root is not None else str(path.parent)
    entries = []
    with open(path, encoding='utf-8') as f:
        for line, text in enumerate(f, start=1):
            if not text.strip() or text.lstrip().startswith('#'):
                continue
            entries.append(_LineParser(str(path), line, root).entry(text, line))
    return entries


# ---------------------------------------------------------------------------------------------- geometry
def aligned_face_region(aligner, landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """The image area an aligned crop of this face samples: ``x1, y1, x2, y2`` pixel edges, clipped to the
    image.

    It is the axis-aligned bounding box of the (rotated) crop square mapped back into the image, so a GT
    crop that contains it contains everything a face loss will look at.
    """
    matrix = aligner.estimate(landmarks[None].astype(np.float64))[0].cpu().numpy()
    inverse = cv2.invertAffineTransform(matrix)
    crop_h, crop_w = aligner.crop_size
    # crop-pixel edges (-0.5 .. size - 0.5 in pixel-centre coordinates) -> image pixel centres -> edges
    corners = np.array([[-0.5, -0.5, 1], [crop_w - 0.5, -0.5, 1], [-0.5, crop_h - 0.5, 1],
                        [crop_w - 0.5, crop_h - 0.5, 1]])
    mapped = corners @ inverse.T + 0.5
    x1, y1 = np.clip(mapped.min(0), 0, [width, height])
    x2, y2 = np.clip(mapped.max(0), 0, [width, height])
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def _crop_offset(lo_edge: float, hi_edge: float, size: int, crop_size: int, random: bool) -> int:
    """Offset of a ``crop_size`` window in ``size`` pixels that holds ``[lo_edge, hi_edge]``: uniform
    among the valid ones (random), else centred on it, clamped to the image."""
    lo = max(0, math.ceil(hi_edge - 1e-6) - crop_size)
    hi = min(math.floor(lo_edge + 1e-6), size - crop_size)
    if random and lo <= hi:
        return int(np.random.randint(lo, hi + 1))
    centred = int(round((lo_edge + hi_edge) / 2 - crop_size / 2))
    return int(min(max(centred, 0), size - crop_size))


# ---------------------------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class PortraitTripletDataset(Dataset):
    """HQ portraits with their face landmarks and a same-identity reference face (HeadsUp triplets).

    Args:
        manifest: JSONL manifest path, or ``'sample://portraits'`` (the package photos; a debug set).
        data_root: folder relative paths are joined to (default: the manifest's folder).
        crop_size: side of the square GT crop, which always contains the sample's aligned-face region;
            None keeps the whole image (no rescaling then).
        crop_mode: ``'random'`` (training) or ``'center'`` (deterministic, centred on the face).
        flip: random horizontal flip (p 0.5). The landmarks are mirrored (``x -> W - 1 - x``) and the eyes
            and mouth corners swapped, so they stay image-left first. The reference is flipped together
            with the GT: the flipped GT shows the mirrored person, and its reference is that person too.
        ref_size: side of the aligned reference face (the FFHQ 512 template scaled to it).
        unit: ``'pair'``: one sample per (face, reference) pair, as HeadsUp counts its 163k training pairs;
            ``'face'``: one sample per face (and per faceless image), the reference drawn among the face's.
        include_unpaired: with ``unit='pair'``, also one reference-less sample per face without references
            and per image without faces.
        ref_choice: how a ``'face'`` sample picks its reference: ``'random'`` or ``'best'`` (highest
            similarity, as the HeadsUp test set). Default: random for random crops, best for centre crops.
        max_face_fraction: the aligned-face region may fill at most this fraction of ``crop_size``; larger
            faces are handled by first downscaling the whole image (``cv2.INTER_AREA``).
        repeat: how many times the samples are repeated per epoch (tiny sets).
        tags / tags_file: per-image tags keyed by file name (see :func:`load_tags`).
        name: the dataset's name in ``metainfo['dataset']`` (default: the manifest's file stem).

    Each item::

        gt:   3 x H x W float32 in [0, 1] (H = W = crop_size when cropping)
        ref:  3 x ref_size x ref_size float32 in [0, 1], or None
        metainfo: path, index, name, dataset, manifest_line, face_index (or None),
                  face_landmarks (5 x 2 float32, GT pixel centres) or None, face_box (4 float32 pixel edges,
                  not clipped to the crop) or None, has_ref, ref_similarity (float or None), ref_path,
                  scale (the downscaling applied first), flipped, crop_offset ([x, y] in the scaled image)
                  [, tags]

    Random choices (reference, crop, flip) draw from numpy's global generator, which mmengine seeds per rank
    and worker. Unreadable files raise :class:`PortraitDataError` naming the manifest line; training never
    skips a sample silently.
    """

    def __init__(self,
                 manifest: str,
                 data_root: Optional[str] = None,
                 crop_size: Optional[int] = None,
                 crop_mode: str = 'random',
                 flip: bool = False,
                 ref_size: int = 512,
                 unit: str = 'pair',
                 include_unpaired: bool = False,
                 ref_choice: Optional[str] = None,
                 max_face_fraction: float = 1.0,
                 repeat: int = 1,
                 tags: Optional[TagMap] = None,
                 tags_file: Optional[str] = None,
                 name: Optional[str] = None) -> None:
        super().__init__()
        if crop_mode not in ('random', 'center'):
            raise ValueError(f"crop_mode must be 'random' or 'center', got {crop_mode!r}")
        if unit not in ('pair', 'face'):
            raise ValueError(f"unit must be 'pair' or 'face', got {unit!r}")
        ref_choice = ref_choice or ('random' if crop_mode == 'random' else 'best')
        if ref_choice not in ('random', 'best'):
            raise ValueError(f"ref_choice must be 'random' or 'best', got {ref_choice!r}")
        if not 0 < max_face_fraction <= 1:
            raise ValueError(f'max_face_fraction must be in (0, 1], got {max_face_fraction}')
        if crop_size is not None and crop_size <= 0 or ref_size <= 0 or repeat < 1:
            raise ValueError(f'crop_size, ref_size and repeat must be positive, got {crop_size}, {ref_size}, '
                             f'{repeat}')
        self.manifest = str(resolve_manifest(manifest))
        self.entries = load_manifest(manifest, data_root)
        self.crop_size, self.crop_mode, self.flip = crop_size, crop_mode, flip
        self.ref_size, self.unit, self.ref_choice = int(ref_size), unit, ref_choice
        self.include_unpaired, self.max_face_fraction, self.repeat = include_unpaired, max_face_fraction, repeat
        self.tags = load_tags(tags, tags_file)
        self.name = name or Path(self.manifest).stem
        # Aligns references and measures the aligned-face region; the same geometry as the face losses.
        self.aligner = FaceAligner(template='ffhq512', output_size=self.ref_size)
        self.samples = self._build_samples()
        if not self.samples:
            raise ValueError(f'{self.manifest}: no samples with unit={unit!r}, include_unpaired='
                             f'{include_unpaired} ({len(self.entries)} images)')
        num_faces = sum(len(e.faces) for e in self.entries)
        num_pairs = sum(len(f.references) for e in self.entries for f in e.faces)
        self.metainfo = dict(dataset_type='portrait_triplet', num_images=len(self.entries), num_faces=num_faces,
                             num_pairs=num_pairs, num_samples=len(self.samples))

    def _build_samples(self) -> List[Tuple[int, Optional[int], Optional[int]]]:
        """``(entry, face or None, reference index, None, or _DRAW_REFERENCE)`` per sample."""
        samples = []
        for e, entry in enumerate(self.entries):
            if not entry.faces and (self.unit == 'face' or self.include_unpaired):
                samples.append((e, None, None))
            for f, face in enumerate(entry.faces):
                if self.unit == 'face':
                    samples.append((e, f, _DRAW_REFERENCE if face.references else None))
                elif face.references:
                    samples.extend((e, f, r) for r in range(len(face.references)))
                elif self.include_unpaired:
                    samples.append((e, f, None))
        return samples

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    # ------------------------------------------------------------------ reading
    def _read(self, path: str, entry: ManifestEntry, what: str) -> np.ndarray:
        try:
            return read_rgb(path)
        except Exception as error:  # any decoder / file-system failure, re-raised with the manifest line
            raise PortraitDataError(f'{self.manifest}:{entry.line}: cannot read {what} {path!r}: '
                                    f'{type(error).__name__}: {error}') from error

    def _reference(self, ref: ReferenceRecord, entry: ManifestEntry, image: np.ndarray) -> torch.Tensor:
        """The aligned reference face, ``3 x ref_size x ref_size`` in [0, 1]."""
        if ref.crop is not None:
            crop = self._read(ref.crop, entry, 'reference crop')
            if crop.shape[0] != crop.shape[1]:
                raise PortraitDataError(f'{self.manifest}:{entry.line}: reference crop {ref.crop!r} is '
                                        f'{crop.shape[1]} x {crop.shape[0]}; aligned crops are square')
            return to_chw_tensor(resize_square(crop, self.ref_size))
        # the same photo (e.g. a self-reference) is not decoded twice
        source = image if ref.image == entry.image else self._read(ref.image, entry, 'reference image')
        with torch.no_grad():
            face = self.aligner.align(to_chw_tensor(source)[None], torch.from_numpy(ref.landmarks)[None])
        return face[0].clamp(0, 1).contiguous()

    def _pick_reference(self, face: FaceRecord, ref_index: Optional[int]) -> Optional[int]:
        if ref_index != _DRAW_REFERENCE:
            return ref_index
        if self.ref_choice == 'random':
            return int(np.random.randint(len(face.references)))
        similarities = [-math.inf if r.similarity is None else r.similarity for r in face.references]
        return int(np.argmax(similarities))

    # ------------------------------------------------------------------ geometry
    def _scale_for(self, region: np.ndarray) -> float:
        """The downscaling that lets the aligned-face region fit ``max_face_fraction * crop_size``."""
        side = max(region[2] - region[0], region[3] - region[1])
        limit = self.max_face_fraction * self.crop_size
        return 1.0 if side <= limit else limit / side

    def _crop_around_face(self, image: np.ndarray, region: np.ndarray) -> Tuple[np.ndarray, int, int, bool]:
        size = self.crop_size
        h, w = image.shape[:2]
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        if pad_h or pad_w:  # bottom/right only, as crop_and_flip: face coordinates stay valid
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode='reflect')
            h, w = image.shape[:2]
        random = self.crop_mode == 'random'
        top = _crop_offset(region[1], region[3], h, size, random)
        left = _crop_offset(region[0], region[2], w, size, random)
        image = image[top:top + size, left:left + size]
        flipped = bool(self.flip and np.random.rand() < 0.5)
        if flipped:
            image = image[:, ::-1]
        return image, top, left, flipped

    def __getitem__(self, index: int) -> dict:
        entry_index, face_index, ref_index = self.samples[index % len(self.samples)]
        entry = self.entries[entry_index]
        image = self._read(entry.image, entry, 'image')
        height, width = image.shape[:2]
        if (entry.height or height) != height or (entry.width or width) != width:
            raise PortraitDataError(f'{self.manifest}:{entry.line}: {entry.image!r} is {width} x {height}, the '
                                    f'manifest says {entry.width} x {entry.height}')
        face = entry.faces[face_index] if face_index is not None else None
        ref_index = self._pick_reference(face, ref_index) if face is not None else None
        ref_record = face.references[ref_index] if ref_index is not None else None
        ref = self._reference(ref_record, entry, image) if ref_record is not None else None

        scale, landmarks, box = 1.0, None, None
        if face is None:
            gt, top, left, flipped = crop_flip_geometry(image, self.crop_size, self.flip, self.crop_mode)
        else:
            landmarks = face.landmarks.astype(np.float64)
            box = None if face.box is None else face.box.astype(np.float64)
            if self.crop_size is None:
                gt, top, left, flipped = crop_flip_geometry(image, None, self.flip, self.crop_mode)
            else:
                region = aligned_face_region(self.aligner, landmarks, height, width)
                scale = self._scale_for(region)
                if scale < 1:
                    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
                    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
                    sx, sy = new_w / width, new_h / height
                    # pixel centres: x' = (x + 0.5) * s - 0.5 (cv2.resize's mapping); box edges: x' = x * s
                    landmarks = (landmarks + 0.5) * [sx, sy] - 0.5
                    box = None if box is None else box * [sx, sy, sx, sy]
                    region = region * [sx, sy, sx, sy]
                gt, top, left, flipped = self._crop_around_face(image, region)
            landmarks = landmarks - [left, top]
            box = None if box is None else box - [left, top, left, top]
            if flipped:
                landmarks = flip_landmarks(landmarks, gt.shape[1])
                box = None if box is None else flip_box(box, gt.shape[1])
        if flipped and ref is not None:
            ref = torch.flip(ref, dims=[-1])

        path = entry.image
        metainfo = dict(
            path=path, index=index, name=os.path.basename(path.rstrip('/')), dataset=self.name,
            manifest_line=entry.line, face_index=face_index,
            face_landmarks=None if landmarks is None else torch.from_numpy(np.asarray(landmarks, np.float32)),
            face_box=None if box is None else torch.from_numpy(np.asarray(box, np.float32)),
            has_ref=ref is not None,
            ref_similarity=None if ref_record is None else ref_record.similarity,
            ref_path=None if ref_record is None else (ref_record.crop or ref_record.image),
            scale=float(scale), flipped=flipped, crop_offset=[int(left), int(top)])
        if metainfo['name'] in self.tags:
            metainfo['tags'] = list(self.tags[metainfo['name']])
        return dict(gt=to_chw_tensor(gt), ref=ref, metainfo=metainfo)

    # ------------------------------------------------------------------ introspection
    def sample_info(self, index: int) -> dict:
        """What sample ``index`` is, without reading a file: ``{'image', 'line', 'face_index',
        'ref_index'}`` (``ref_index`` -1: drawn when read)."""
        entry_index, face_index, ref_index = self.samples[index % len(self.samples)]
        entry = self.entries[entry_index]
        return dict(image=entry.image, line=entry.line, face_index=face_index, ref_index=ref_index)


def manifest_line(image: str, faces: Sequence[dict] = (), height: Optional[int] = None,
                  width: Optional[int] = None) -> str:
    """One manifest line (JSON, no trailing newline) in the schema :func:`load_manifest` reads."""
    record: dict = dict(image=image)
    if height is not None:
        record['height'] = int(height)
    if width is not None:
        record['width'] = int(width)
    record['faces'] = list(faces)
    return json.dumps(record)
