"""Faces grouped by identity, with a same-identity reference: IDFSR's training, fitting and test data.

IDFSR ("IDFSR: Personalized Face Super-Resolution with Identity Decoupling and Fitting", section 4.1) trains on
CelebRef-HQ: aligned faces in one folder per identity, each LR (bicubic x8 or x16 here, Table 1) paired with a reference
of the same person; 10% of the identities are held out and each of them "equally divided into a fine-tuning set and a
test set". This dataset serves all of it:

* ``data_root`` with one sub-folder per identity (CelebRef-HQ's layout), optionally restricted to ``identities``
  (a list or a text file, one name per line) and to one ``split`` of every identity's sorted images (``'finetune'``:
  the first half, rounded up; ``'test'``: the rest; ``'all'``);
* ``images``: the photos of one person (identity fitting, ``tools/fit_identity.py``);
* ``manifest``: a PortraitTripletDataset JSONL manifest (the dataset builder's output, ``sample://portraits``): each
  face is an item and its manifest references are its same-identity references.

Every image is aligned to the FFHQ template at ``size`` from its five landmarks (``aligned=False``; CelebRef-HQ's
faces are already FFHQ-aligned: ``aligned=True`` only resizes). Landmarks come from the manifest, a
``landmarks_file`` (JSON ``{"identity/image.png": [[x, y] x 5]}``, image pixels), a ``detector`` (``FACE_DETECTORS``,
largest face; IDFSR uses a fine-tuned RetinaFace, section 3.2), or, for aligned crops, the FFHQ template itself.

The reference is another image of the same identity (``ref_choice='random'`` in training; ``'next'``, the following
one in sorted order, for deterministic evaluation; the image itself when it is alone). ``ref_jitter`` aligns the
reference with a random similarity perturbation of the template (rotation, scale, shift), so that even a
self-reference needs warping (our augmentation for tiny sets; IDFSR notes that imperfect warps act as augmentation,
section 3.2). Each item::

    gt:  3 x S x S float32 in [0, 1]        lq:  3 x S/scale x S/scale (bicubic, antialiased)
    ref: 3 x S x S float32 in [0, 1]
    metainfo: path, index, identity, scale, face_landmarks (5 x 2, GT pixels), ref_landmarks (5 x 2, ref pixels),
              ref_path, flipped
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from portraitisr.face.alignment.face_aligner import FaceAligner
from portraitisr.registry import DATASETS, FACE_DETECTORS
from portraitisr.utils.image_io import list_images
from .aligned_face_dataset import bicubic_downsample
from .image_folder_dataset import flip_landmarks, read_rgb, to_chw_tensor
from .portrait_triplet_dataset import load_manifest

SPLITS = ('all', 'finetune', 'test')


@dataclass
class IdentityImage:
    """One photo of an identity; ``landmarks`` (5 x 2, image pixels) when known; ``reference_only`` photos serve
    as references and are never an item themselves."""

    path: str
    identity: str
    landmarks: Optional[np.ndarray] = None
    reference_only: bool = False


def split_images(paths: Sequence[str], split: str) -> List[str]:
    """IDFSR's per-identity split of sorted images: ``'finetune'`` the first half (rounded up), ``'test'`` the rest."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    paths = sorted(paths)
    half = math.ceil(len(paths) / 2)
    return paths if split == 'all' else (paths[:half] if split == 'finetune' else paths[half:])


def _read_names(identities: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    if identities is None or not isinstance(identities, str):
        return None if identities is None else list(identities)
    with open(identities, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


@DATASETS.register_module()
class IdentityFaceDataset(Dataset):
    """Aligned faces of known identities with a same-identity reference (see the module docstring).

    Args:
        data_root / identities / split: identity folders, the identities to use, and the per-identity split.
        images / identity: the photos of one person and its name (default ``'person'``).
        manifest: a PortraitTripletDataset manifest (faces with landmarks and same-identity references).
        size: side of the aligned face (256 for IDFSR, Table 4's DiffAE-256).
        scale: LR downscaling (8 or 16 in Table 1).
        aligned: the images already are FFHQ-aligned crops (CelebRef-HQ): resized, not re-aligned.
        landmarks_file: JSON landmarks keyed by the path relative to ``data_root`` (or as given).
        detector: ``FACE_DETECTORS`` config for images without landmarks (largest face is used).
        ref_choice: ``'random'`` or ``'next'``; ``ref_pool``: ``'same'`` (references from the same split) or
            ``'finetune'`` (from the identity's fine-tuning half: the test protocol, references never are test
            images).
        ref_jitter: ``(max rotation in degrees, max relative scale change, max shift as a fraction of size)`` of the
            random reference misalignment; ``None`` for none.
        flip: random horizontal flip of GT, LR and reference together (landmarks mirrored).
        num_photos: keep the first ``num_photos`` items of every identity (IDFSR section 5.3: fitting on 2-10 photos).
        repeat: the list repeated per epoch (tiny sets).
    """

    def __init__(self, data_root: Optional[str] = None, identities: Union[str, Sequence[str], None] = None,
                 split: str = 'all', images: Optional[Sequence[str]] = None, identity: str = 'person',
                 manifest: Optional[str] = None, size: int = 256, scale: int = 8, aligned: bool = False,
                 landmarks_file: Optional[str] = None, detector: Optional[dict] = None, ref_choice: str = 'random',
                 ref_pool: str = 'same', ref_jitter: Optional[Sequence[float]] = None, flip: bool = False,
                 num_photos: Optional[int] = None, repeat: int = 1) -> None:
        super().__init__()
        if ref_choice not in ('random', 'next'):
            raise ValueError(f"ref_choice must be 'random' or 'next', got {ref_choice!r}")
        if ref_pool not in ('same', 'finetune'):
            raise ValueError(f"ref_pool must be 'same' or 'finetune', got {ref_pool!r}")
        if size % scale:
            raise ValueError(f'size {size} must be a multiple of scale {scale}')
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')

        self.size, self.scale, self.aligned, self.flip, self.repeat = size, scale, aligned, flip, repeat
        self.ref_choice, self.ref_jitter = ref_choice, None if ref_jitter is None else tuple(ref_jitter)
        self.data_root = data_root
        self.aligner = FaceAligner(template='ffhq512', output_size=size, border_mode='reflect101')
        self.detector = FACE_DETECTORS.build(detector) if detector is not None else None
        self.landmarks_file = self._read_landmarks(landmarks_file)
        records: List[IdentityImage] = []
        if data_root is not None:
            records += self._folder_records(data_root, _read_names(identities), split, ref_pool)
        if images:
            records += [IdentityImage(path, identity) for path in images]
        if manifest is not None:
            records += self._manifest_records(manifest)
        if not records:
            raise ValueError('IdentityFaceDataset needs data_root (with identity folders), images or a manifest')
        self.records = records
        self.by_identity: Dict[str, List[int]] = {}
        for i, record in enumerate(records):
            self.by_identity.setdefault(record.identity, []).append(i)
        items = [i for i, r in enumerate(records) if not r.reference_only]
        if num_photos is not None:
            if num_photos < 1:
                raise ValueError(f'num_photos must be positive, got {num_photos}')
            counts: Dict[str, int] = {}
            kept = []
            for i in items:
                name = records[i].identity
                if counts.get(name, 0) < num_photos:
                    kept.append(i)
                    counts[name] = counts.get(name, 0) + 1
            items = kept
        self.items = items
        self._landmark_cache: Dict[str, np.ndarray] = {}
        self.metainfo = dict(dataset_type='identity_face', num_identities=len({records[i].identity for i in items}),
                             num_images=len(items))

    # ------------------------------------------------------------------ sources
    def _read_landmarks(self, landmarks_file: Optional[str]) -> Dict[str, np.ndarray]:
        if landmarks_file is None:
            return {}
        with open(landmarks_file, encoding='utf-8') as f:
            raw = json.load(f)
        out = {}
        for key, value in raw.items():
            points = np.asarray(value, dtype=np.float64)
            if points.shape != (5, 2) or not np.isfinite(points).all():
                raise ValueError(f'{landmarks_file}: landmarks of {key!r} must be 5 finite [x, y] points')
            out[key] = points
        return out

    def _folder_records(self, root: str, names: Optional[List[str]], split: str, ref_pool: str) -> List[IdentityImage]:
        if not os.path.isdir(root):
            raise FileNotFoundError(f'data_root {root!r} is not a folder')
        folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if names is not None:
            missing = sorted(set(names) - set(folders))
            if missing:
                raise FileNotFoundError(f'{len(missing)} identities are not folders of {root}: {missing[:5]}')
            folders = [d for d in folders if d in set(names)]
        records = []
        for name in folders:
            paths = [str(p) for p in list_images(os.path.join(root, name))]
            chosen = split_images(paths, split)
            records += [IdentityImage(p, name) for p in chosen]
            if ref_pool == 'finetune' and split != 'finetune':
                records += [IdentityImage(p, name, reference_only=True) for p in split_images(paths, 'finetune')
                            if p not in chosen]
        return records

    def _manifest_records(self, manifest: str) -> List[IdentityImage]:
        records = []
        for entry in load_manifest(manifest):
            for f, face in enumerate(entry.faces):
                name = f'{os.path.basename(entry.image)}#{f}'
                records.append(IdentityImage(entry.image, name, face.landmarks.astype(np.float64)))
                for ref in face.references:
                    same = ref.image == entry.image and ref.landmarks is not None and \
                        np.allclose(ref.landmarks, face.landmarks)
                    if ref.image is not None and not same:
                        records.append(IdentityImage(ref.image, name, ref.landmarks.astype(np.float64), True))
        return records

    # ------------------------------------------------------------------ geometry
    def landmarks_of(self, record: IdentityImage, image: np.ndarray) -> np.ndarray:
        """The record's 5 landmarks in pixels of ``image`` (given, from the file, detected, or the template)."""
        if record.landmarks is not None:
            return record.landmarks
        key = os.path.relpath(record.path, self.data_root) if self.data_root else record.path
        for candidate in (key, record.path, os.path.basename(record.path)):
            if candidate in self.landmarks_file:
                return self.landmarks_file[candidate]
        if record.path in self._landmark_cache:
            return self._landmark_cache[record.path]
        if self.detector is not None:
            detections = self.detector.detect(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))[0]
            if len(detections) == 0:
                raise RuntimeError(f'no face found in {record.path} by {type(self.detector).__name__}')
            boxes = detections.boxes
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            points = detections.landmarks[int(np.argmax(areas))].astype(np.float64)
        elif self.aligned:
            h, w = image.shape[:2]
            points = self.aligner.template_points * [w / self.size, h / self.size]
        else:
            raise ValueError(f'no landmarks for {record.path}: give a landmarks_file, a detector, or aligned=True')
        self._landmark_cache[record.path] = points
        return points

    def _jitter(self) -> np.ndarray:
        """A random 3 x 3 similarity about the crop centre (crop pixels -> crop pixels)."""
        angle_deg, rel_scale, shift = self.ref_jitter
        angle = np.deg2rad(np.random.uniform(-angle_deg, angle_deg))
        s = 1 + np.random.uniform(-rel_scale, rel_scale)
        tx, ty = np.random.uniform(-shift, shift, size=2) * self.size
        c = (self.size - 1) / 2
        rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = np.eye(3)
        matrix[:2, :2] = rot
        matrix[:2, 2] = [c, c] - rot @ [c, c] + [tx, ty]
        return matrix

    def aligned_face(self, record: IdentityImage,
                     jitter: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, np.ndarray]:
        """``(3 x S x S face in [0, 1], its 5 landmarks in face pixels)``; ``jitter`` a 3 x 3 similarity applied
        after the alignment."""
        image = read_rgb(record.path)
        points = self.landmarks_of(record, image)
        h, w = image.shape[:2]
        if self.aligned:  # a resize, in pixel-centre coordinates
            sx, sy = self.size / w, self.size / h
            matrix = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
        else:
            matrix = self.aligner.estimate(points[None])[0].numpy()
        if jitter is not None:
            matrix = (jitter @ np.vstack([matrix, [0, 0, 1]]))[:2]
        if self.aligned and jitter is None:
            face = to_chw_tensor(image)
            if (h, w) != (self.size, self.size):
                face = torch.nn.functional.interpolate(face[None], size=(self.size, self.size), mode='bicubic',
                                                       align_corners=False, antialias=True)[0]
        else:
            with torch.no_grad():
                face = self.aligner.align(to_chw_tensor(image)[None], torch.from_numpy(matrix)[None])[0]
        mapped = points @ matrix[:, :2].T + matrix[:, 2]
        return face.clamp(0, 1).contiguous(), mapped

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def _reference_index(self, record_index: int) -> int:
        record = self.records[record_index]
        others = [i for i in self.by_identity[record.identity] if i != record_index]
        if not others:
            return record_index
        if self.ref_choice == 'random':  # numpy's global generator: mmengine seeds it per rank and worker
            return int(others[np.random.randint(len(others))])
        later = [i for i in others if i > record_index]
        return later[0] if later else others[0]

    def __getitem__(self, index: int) -> dict:
        record_index = self.items[index % len(self.items)]
        record = self.records[record_index]
        gt, landmarks = self.aligned_face(record)
        ref_index = self._reference_index(record_index)
        ref, ref_landmarks = self.aligned_face(self.records[ref_index], self._jitter() if self.ref_jitter else None)
        flipped = bool(self.flip and np.random.rand() < 0.5)
        if flipped:
            gt, ref = gt.flip(-1), ref.flip(-1)
            landmarks = flip_landmarks(landmarks, self.size)
            ref_landmarks = flip_landmarks(ref_landmarks, self.size)
        metainfo = dict(path=record.path, index=index, identity=record.identity, scale=self.scale,
                        face_landmarks=torch.from_numpy(np.asarray(landmarks, np.float32)),
                        ref_landmarks=torch.from_numpy(np.asarray(ref_landmarks, np.float32)),
                        ref_path=self.records[ref_index].path, flipped=flipped)
        return dict(gt=gt, lq=bicubic_downsample(gt, self.scale), ref=ref, metainfo=metainfo)
