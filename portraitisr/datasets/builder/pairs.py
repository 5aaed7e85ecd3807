"""PortraitSR-4K builder, stage 2: identity pairs, the train/test split and the HeadsUp manifests.

Stage 1 (the scan) writes ``<out_dir>/records.jsonl``, one JSON object per scanned photo, with the kept faces, their
aligned crops and their identity embeddings (``embeddings/<id>.npy``, ``N x D`` float32, L2-normalised, row ``k``
is ``faces[k]``). This stage reads those records and writes ``train.jsonl`` and ``test.jsonl`` in the manifest
schema that :class:`~portraitisr.datasets.PortraitTripletDataset` reads (``docs/portrait_data.md``).

HeadsUp (section 3 and appendix C) keeps the face pairs whose identity similarity is above 0.65, splits the 30k
photos into 27k train and 3k test images, builds pairs within each split only, keeps every pair for training and,
in the test split, at most one reference per face: the most similar one. The 0.65 is on CVLFace's scale; a
similarity threshold belongs to the identity model that made the embeddings. By default the threshold is therefore
the ``verification_threshold`` of the extractor named in the scan's settings (``scan.json``): 0.91 for dlib's
ResNet (the offline default), 0.65 for CVLFace AdaFace (the paper's). :func:`identity_threshold` looks it up.

Choices made here:

* The split is drawn per image from a seeded hash of its ``image_id``, not by shuffling a list. An image's split
  therefore never changes when images are added or when a crashed run is resumed. The test share is
  ``test_ratio`` in expectation (0.1 gives about 27k / 3k), not exactly.
* Two faces of the same image (same ``image_id``) are never paired: a reference must come from another photo.
* Similarities are computed in blocks of ``block_size`` rows and columns, so memory stays
  ``O(block_size ** 2 + pairs)`` for any number of faces.
* Everything is sorted (images by path, pairs by index, references by similarity then path), so the same records, in
  any order, give byte-identical manifests.
* Each manifest starts with one ``#`` comment line (the dataset reader skips it) that records how its pairs were
  made: the identity model, the threshold and its source, the split's ratio and seed.
* A record whose photo is gone, or changed since it was scanned (its file stamp differs), is left out with a
  warning: a manifest never points at a photo its record no longer describes.
"""
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from portraitisr.datasets.portrait_triplet_dataset import manifest_line
from portraitisr.registry import IDENTITY_EXTRACTORS

from .photos import builder_warning
from .records import RECORDS_FILE, SETTINGS_FILE, read_records_with_stats, read_settings, stamp_status

PathLike = Union[str, os.PathLike]

#: The splits, in the order they are built and reported.
SPLITS = ('train', 'test')

#: Decimal places kept for similarities in the manifests (float32 carries about 7 significant digits).
SIMILARITY_DECIMALS = 6


@dataclass(frozen=True)
class PairConfig:
    """How pairs, splits and references are made.

    Args:
        similarity_threshold: keep a pair when the cosine similarity of the two embeddings is strictly above this
            (HeadsUp: 0.65 with CVLFace). None (default): the ``verification_threshold`` of the identity model the
            scan used (see :func:`identity_threshold`).
        test_ratio: expected share of images in the test split (HeadsUp: 3k of 30k).
        seed: seed of the split hash. Changing it gives another split.
        max_references: most references per train face (the most similar ones); ``None`` keeps all of them.
        test_max_references: most references per test face; HeadsUp keeps only the most similar one.
        block_size: rows and columns per block of the similarity matrix (memory ``block_size ** 2`` floats).
        reference_kind: ``'crop'`` writes a reference as its aligned crop ``{"crop": PATH}``; ``'image'`` as
            ``{"image": PATH, "landmarks": [...]}``, aligned when the sample is read. A face without a crop is
            always written the ``'image'`` way.
    """

    similarity_threshold: Optional[float] = None
    test_ratio: float = 0.1
    seed: int = 0
    max_references: Optional[int] = None
    test_max_references: int = 1
    block_size: int = 4096
    reference_kind: str = 'crop'

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_ratio <= 1.0:
            raise ValueError(f'test_ratio must be in [0, 1], got {self.test_ratio}')
        if self.similarity_threshold is not None and not -1.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(f'similarity_threshold must be in [-1, 1], got {self.similarity_threshold}')
        if self.block_size < 1:
            raise ValueError(f'block_size must be positive, got {self.block_size}')
        if self.max_references is not None and self.max_references < 1:
            raise ValueError(f'max_references must be positive or None, got {self.max_references}')
        if self.test_max_references < 1:
            raise ValueError(f'test_max_references must be positive, got {self.test_max_references}')
        if self.reference_kind not in ('crop', 'image'):
            raise ValueError(f"reference_kind must be 'crop' or 'image', got {self.reference_kind!r}")


def identity_threshold(extractor: dict) -> Tuple[float, str]:
    """``(threshold, source)``: the verification threshold of the ``IDENTITY_EXTRACTORS`` config's class.

    Raises:
        KeyError: no such identity model.
        ValueError: the model has no published threshold (the message says to pass one).
    """
    name = extractor.get('type') if isinstance(extractor, dict) else None
    if not isinstance(name, str):
        raise KeyError(f'an identity model config names its type as a string, got {extractor!r}')
    cls = IDENTITY_EXTRACTORS.get(name)  # an unknown name raises KeyError listing the registered ones
    threshold = getattr(cls, 'verification_threshold', None)
    source = getattr(cls, 'verification_source', 'unknown source')
    if threshold is None:
        raise ValueError(f'{name} has no published verification threshold ({source}); pass a similarity threshold '
                         'chosen for it (PairConfig(similarity_threshold=...), --similarity)')
    return float(threshold), f'{name}: {source}'


# ---------------------------------------------------------------------------------------------- split
def split_of(image_id: str, test_ratio: float, seed: int = 0) -> str:
    """``'train'`` or ``'test'`` for one image, from a seeded hash of its id (stable, order-free)."""
    digest = hashlib.sha256(f'{seed}:{image_id}'.encode('utf-8')).digest()
    draw = int.from_bytes(digest[:8], 'big') / 2.0**64  # uniform in [0, 1)
    return 'test' if draw < test_ratio else 'train'


def split_images(image_ids: Iterable[str], test_ratio: float = 0.1, seed: int = 0) -> Dict[str, str]:
    """``{image_id: 'train' | 'test'}``, each image drawn independently from a seeded hash of its id.

    The same id always lands in the same split for a given ``seed``, whatever the other ids and their order, so
    reruns, resumed runs and grown collections keep their split. The test share is ``test_ratio`` in expectation.
    """
    return {image_id: split_of(image_id, test_ratio, seed) for image_id in image_ids}


# ---------------------------------------------------------------------------------------------- pairs
#: Screening margin: a float32 block keeps candidates above ``threshold - margin``; float64 decides.
SCREEN_MARGIN = 1e-4
#: Candidates measured again in float64 at a time (bounds the gathered rows' memory).
_RECHECK_CHUNK = 16384


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows left as they are), so that cosine = dot product."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def exact_similarities(exact: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """float64 dot products of the row pairs ``(i[k], j[k])`` of normalised float64 embeddings: the similarity
    every pair finder decides on, one dot product per pair (the same value however the pair was found)."""
    return np.concatenate([np.einsum('kd,kd->k', exact[i[k:k + _RECHECK_CHUNK]], exact[j[k:k + _RECHECK_CHUNK]])
                           for k in range(0, len(i), _RECHECK_CHUNK)] or [np.zeros(0)])


def find_pairs(embeddings: np.ndarray, image_index: Sequence[int], threshold: float,
               block_size: int = 4096) -> List[Tuple[int, int, float]]:
    """Faces of different images whose cosine similarity is above ``threshold``.

    Args:
        embeddings: ``M x D`` identity embeddings (normalised again here, so cosine = dot product).
        image_index: ``M`` ids of the image each face belongs to; faces with the same id are never paired.
        threshold: keep ``similarity > threshold`` (strictly); on the scale of the model that made the embeddings.
        block_size: the matrix is computed ``block_size x block_size`` at a time, upper triangle only; memory
            never grows with ``M ** 2``.

    Each block is screened in float32 (fast BLAS); the candidates are then measured again in float64, one dot
    product per pair, so the result does not depend on ``block_size`` or on how BLAS splits the product.

    Returns:
        ``(i, j, similarity)`` with ``i < j``, sorted by ``(i, j)``.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    image_index = np.asarray(image_index)
    if embeddings.ndim != 2 or image_index.shape != (len(embeddings),):
        raise ValueError(f'embeddings must be M x D and image_index M, got {embeddings.shape} and '
                         f'{image_index.shape}')
    if block_size < 1:
        raise ValueError(f'block_size must be positive, got {block_size}')
    exact = normalise(embeddings)
    screen = exact.astype(np.float32)
    count = len(embeddings)
    rows_out: List[np.ndarray] = []
    cols_out: List[np.ndarray] = []
    sims_out: List[np.ndarray] = []
    for r0 in range(0, count, block_size):
        r1 = min(r0 + block_size, count)
        rows, cols, sims = [], [], []
        for c0 in range(r0, count, block_size):
            c1 = min(c0 + block_size, count)
            block = screen[r0:r1] @ screen[c0:c1].T
            keep = block > threshold - SCREEN_MARGIN
            keep &= image_index[r0:r1, None] != image_index[None, c0:c1]
            if c0 == r0:  # the diagonal block: upper triangle only
                keep &= np.triu(np.ones(keep.shape, dtype=bool), k=1)
            i, j = np.nonzero(keep)
            i, j = i + r0, j + c0
            similarity = exact_similarities(exact, i, j)
            above = similarity > threshold
            rows.append(i[above])
            cols.append(j[above])
            sims.append(similarity[above])
        i, j, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
        order = np.lexsort((j, i))
        rows_out.append(i[order])
        cols_out.append(j[order])
        sims_out.append(s[order])
    if not rows_out:
        return []
    i, j, s = np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(sims_out)
    return [(int(a), int(b), float(c)) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())]


#: ``(embeddings M x D, image ids M, threshold) -> (pairs as find_pairs returns them, info)``; ``info`` describes
#: the search for the report: ``method`` and ``recall`` (measured against exact search; 1.0 for an exact method)
PairFinder = Callable[[np.ndarray, np.ndarray, float], Tuple[List[Tuple[int, int, float]], dict]]


def exact_pair_finder(block_size: int = 4096) -> PairFinder:
    """The exact, blockwise pair finder (:func:`find_pairs`): the default of :func:`build_manifests`. Its time grows
    with the square of the number of faces; ``ann.faiss_pair_finder`` is the web-scale one."""

    def find(embeddings: np.ndarray, image_index: np.ndarray, threshold: float) -> Tuple[list, dict]:
        start = time.perf_counter()
        pairs = find_pairs(embeddings, image_index, threshold, block_size)
        return pairs, dict(method='exact (blockwise)', faces=len(embeddings), recall=1.0,
                           seconds=round(time.perf_counter() - start, 3))

    return find


# ---------------------------------------------------------------------------------------------- manifests
def manifest_path(path: str, input_root: PathLike, out_dir: PathLike) -> str:
    """An image path relative to the input root -> the path written in a manifest of ``out_dir``.

    Relative to ``out_dir`` (the manifest's folder, the dataset's default ``data_root``), with ``/`` separators;
    absolute when no relative path exists (another drive on Windows).
    """
    full = os.path.abspath(os.path.join(os.fspath(input_root), path))
    try:
        relative = os.path.relpath(full, os.path.abspath(os.fspath(out_dir)))
    except ValueError:
        return Path(full).as_posix()
    return relative.replace(os.sep, '/')


def write_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        with os.fdopen(handle, 'w', encoding='utf-8', newline='\n') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@dataclass
class _Face:
    """One face of an ok record, with what a manifest and a reference need."""

    image: int  # index into the sorted images
    index: int  # row in the record's faces
    split: str
    record: dict  # the record's face entry
    image_path: str  # manifest path of its image


def _load_embeddings(out_dir: Path, record: dict) -> Optional[np.ndarray]:
    """The record's ``N x D`` embeddings, or ``None`` (with a warning) when missing or not matching its faces."""
    name = record.get('embeddings')
    faces = record.get('faces') or []
    if not name:
        warnings.warn(f'{record["image"]}: status ok with {len(faces)} faces but no embeddings; skipped')
        return None
    try:
        array = np.load(out_dir / name)
    except (OSError, ValueError) as error:
        warnings.warn(f'{record["image"]}: cannot read {name} ({error}); skipped')
        return None
    if array.ndim != 2 or len(array) != len(faces) or not np.isfinite(array).all():
        warnings.warn(f'{record["image"]}: {name} has shape {array.shape} (or non-finite values) for '
                      f'{len(faces)} faces; skipped')
        return None
    return array.astype(np.float32, copy=False)


def _reference(face: _Face, similarity: float, kind: str) -> dict:
    if kind == 'crop' and face.record.get('crop'):
        return {'crop': face.record['crop'], 'similarity': similarity}
    return {'image': face.image_path, 'landmarks': face.record['landmarks'], 'similarity': similarity}


def _reference_key(face: _Face, kind: str) -> Tuple[str, str, int]:
    """Tie-break of equal similarities: the path written in the manifest, then the face's row."""
    crop = face.record.get('crop') if kind == 'crop' else None
    return (crop or face.image_path, face.image_path, face.index)


def _resolve_threshold(config: PairConfig, out_dir: Path) -> Tuple[float, Optional[str], str]:
    """``(threshold, identity model name or None, source)`` of this build."""
    settings = read_settings(out_dir)
    extractor = (settings or {}).get('extractor')
    name = extractor.get('type') if isinstance(extractor, dict) else None
    if config.similarity_threshold is not None:
        return float(config.similarity_threshold), name, 'given (PairConfig.similarity_threshold / --similarity)'
    if extractor is None:
        raise ValueError(f'{out_dir} has no {SETTINGS_FILE} naming the identity model that made the embeddings; '
                         'pass a similarity threshold chosen for that model (PairConfig(similarity_threshold=...))')
    threshold, source = identity_threshold(extractor)
    return threshold, name, source


def _is_current(record: dict, input_root: PathLike) -> bool:
    """False (with a warning) when the record's photo is gone or changed since it was scanned. A record without a
    file stamp (written by hand or by an older builder) cannot be checked for changes: kept while its photo exists."""
    status = stamp_status(record, os.path.join(os.fspath(input_root), record['image']))
    if status == 'missing':
        builder_warning(f'{record["image"]}: the photo no longer exists; left out of the manifests')
    elif status == 'changed':
        builder_warning(f'{record["image"]}: changed since it was scanned; left out of the manifests (scan again)')
    return status in ('current', 'unstamped')


def _manifest_face(face: dict, references: List[dict]) -> dict:
    out = {key: face[key] for key in ('box', 'landmarks', 'score', 'crop', 'eye_distance') if key in face}
    out['references'] = references
    return out


def _read_all(paths: Sequence[PathLike]) -> Tuple[Dict[str, dict], Dict[str, int]]:
    """The records of several files (the shards of a web-scale scan) as one ``{image: record}``, stats summed."""
    records: Dict[str, dict] = {}
    total: Dict[str, int] = {}
    for path in paths:
        part, stats = read_records_with_stats(path)
        for image in set(part) & set(records):
            total['duplicates'] = total.get('duplicates', 0) + 1
            del records[image]
        records.update(part)
        for key, value in stats.items():
            total[key] = total.get(key, 0) + value
    return records, total


def build_manifests(out_dir: PathLike, input_root: PathLike,
                    records_path: Optional[Union[PathLike, Sequence[PathLike]]] = None,
                    config: Optional[PairConfig] = None, pair_finder: Optional[PairFinder] = None) -> dict:
    """Stage 2: ``records.jsonl`` -> ``<out_dir>/train.jsonl`` and ``<out_dir>/test.jsonl``.

    Args:
        out_dir: stage 1's output folder (crops and embeddings are relative to it); the manifests go there too.
        input_root: the folder the records' ``image`` paths are relative to (stage 1's input).
        records_path: the records, by default ``<out_dir>/records.jsonl``; or a list of records files (one per
            shard of a web-scale scan).
        config: thresholds, split and reference options.
        pair_finder: how pairs are found in each split (default :func:`exact_pair_finder`); the same pairs give
            the same manifests whatever found them.

    Only ``status == "ok"`` records with at least one face, whose photo is unchanged since the scan, are used.
    Both faces of a pair get the other as a reference, sorted by similarity (highest first, ties by path). Each
    manifest is sorted by image path and written atomically, after a ``#`` line recording the identity model and
    the threshold. Same records in any order give byte-identical files.

    Returns:
        A summary: image, face, pair and reference counts per split, skipped and stale images, what the records
        file held, the identity model, threshold and its source, ``pair_similarities``
        (``{split: [similarity, ...]}``, for the report) and ``pairing`` (``{split: info}`` of the pair finder:
        method, recall, time).

    Raises:
        ValueError: no threshold is given and none can be found (no ``scan.json``, or a model without one).
    """
    config = config or PairConfig()
    out_dir = Path(out_dir)
    threshold, identity_model, threshold_source = _resolve_threshold(config, out_dir)
    if records_path is None or isinstance(records_path, (str, os.PathLike)):
        records, read_stats = read_records_with_stats(records_path or out_dir / RECORDS_FILE)
    else:
        records, read_stats = _read_all(list(records_path))
    pair_finder = pair_finder or exact_pair_finder(config.block_size)

    faces: List[_Face] = []
    embeddings: List[np.ndarray] = []
    images: List[dict] = []  # kept records, sorted by image path
    skipped = stale = 0
    for path in sorted(records):
        record = records[path]
        if record.get('status') != 'ok' or not record.get('faces'):
            continue
        if not _is_current(record, input_root):
            stale += 1
            continue
        array = _load_embeddings(out_dir, record)
        if array is None:
            skipped += 1
            continue
        split = split_of(str(record.get('image_id') or path), config.test_ratio, config.seed)
        image_path = manifest_path(path, input_root, out_dir)
        for k, face in enumerate(record['faces']):
            faces.append(_Face(len(images), k, split, face, image_path))
        embeddings.append(array)
        images.append(dict(record=record, split=split, path=image_path))
    dims = {array.shape[1] for array in embeddings}
    if len(dims) > 1:
        raise ValueError(f'embeddings of different sizes {sorted(dims)} in {out_dir}: mixed identity models?')
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, 1), np.float32)
    # images with the same image_id (the same photo under two paths) count as one image for pairing
    group_of: Dict[str, int] = {}
    groups = np.array([group_of.setdefault(str(images[f.image]['record'].get('image_id') or images[f.image]['path']),
                                           len(group_of)) for f in faces], dtype=np.int64)

    references: List[List[Tuple[float, Tuple[str, str, int], int]]] = [[] for _ in faces]
    summary: dict = dict(records=len(records), **{f'records_{k}': v for k, v in read_stats.items()},
                         images_skipped=skipped, images_stale=stale, identity_model=identity_model,
                         similarity_threshold=threshold, threshold_source=threshold_source,
                         test_ratio=config.test_ratio, seed=config.seed, pair_similarities={}, pairing={})
    for split in SPLITS:
        members = np.array([n for n, f in enumerate(faces) if f.split == split], dtype=np.int64)
        pairs, info = pair_finder(matrix[members], groups[members], threshold) if len(members) else (
            [], dict(method='none (no faces)', faces=0, recall=None))
        summary['pairing'][split] = info
        sims = []
        for i, j, similarity in pairs:
            a, b = int(members[i]), int(members[j])
            similarity = round(similarity, SIMILARITY_DECIMALS)
            sims.append(similarity)
            references[a].append((similarity, _reference_key(faces[b], config.reference_kind), b))
            references[b].append((similarity, _reference_key(faces[a], config.reference_kind), a))
        limit = config.test_max_references if split == 'test' else config.max_references
        lines: List[List[dict]] = [[] for _ in images]
        written = faces_with_reference = 0
        for n in members.tolist():
            chosen = sorted(references[n], key=lambda r: (-r[0], r[1]))[:limit]
            refs = [_reference(faces[m], similarity, config.reference_kind) for similarity, _, m in chosen]
            written += len(refs)
            faces_with_reference += bool(refs)
            lines[faces[n].image].append(_manifest_face(faces[n].record, refs))
        header = dict(split=split, identity_model=identity_model, similarity_threshold=threshold,
                      threshold_source=threshold_source, test_ratio=config.test_ratio, seed=config.seed)
        text = f'# portrait builder: {json.dumps(header)}\n'
        text += ''.join(manifest_line(image['path'], lines[n], height=image['record'].get('height'),
                                      width=image['record'].get('width')) + '\n'
                        for n, image in enumerate(images) if image['split'] == split)
        write_atomic(out_dir / f'{split}.jsonl', text)
        summary.update({f'{split}_images': sum(image['split'] == split for image in images),
                        f'{split}_faces': int(len(members)), f'{split}_pairs': len(pairs),
                        f'{split}_references': written, f'{split}_faces_with_reference': faces_with_reference})
        summary['pair_similarities'][split] = sims
    return summary
