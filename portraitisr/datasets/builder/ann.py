"""Identity pairs at web scale: faiss range search instead of all-pairs comparison (stage 2 of the builder).

:func:`~.pairs.find_pairs` compares every face with every other one: 10^12 dot products at a million faces. Here
the faces of one split are put in a faiss index and each face asks it for the faces whose inner product (the
cosine of normalised embeddings) is above the threshold, a range search:

* up to ``exact_max_faces`` faces (default 50 000, our choice: the faces of PortraitSR-4K's 30k photos, one or a
  few per photo, are then paired exactly): ``IndexFlatIP``, exact. It still compares all pairs: 9 s for 10 000 faces,
  77 s for 30 000 (128-d, 2 heavily shared CPU cores; ``tools/benchmarks/webscale_builder.py``);
* above: ``IndexIVFFlat`` (inner product): k-means cells (``nlist``, default ``4 sqrt(N)``), each face searching
  the ``nprobe`` cells nearest to it (default 32). Work per face ``nprobe / nlist`` of the faces, so the total grows
  as ``N^1.5``, not ``N^2``. Approximate: a pair whose faces fall in cells too far apart is missed.

Both ways, the candidates (screened in float32 at ``threshold - 1e-4``) are measured again in float64, one dot product
per pair, as :func:`~.pairs.find_pairs` does, so the flat index gives exactly its pairs and similarities, and the
IVF index a subset of them (no false pair, some missed). A pair is found when either face's search finds the other.

**Recall**, measured on every run: ``recall_sample`` faces (seeded) are searched exactly (a flat index over all
faces: linear in N); the recall is the share of their exact pairs that the index found. It is reported (the report's
pairing section) with the number of exact pairs it was measured on.

**Sharding**, for sets whose index does not fit one machine (``shard_faces``): the faces are cut into database shards
of ``shard_faces`` rows; for IVF one quantizer is trained once (on a sample) and shared by all shards. Every face is
then searched against each shard in turn, and the pairs of all shards merged (a union: pair ``(i, j)`` is found in
the shard that holds ``j`` when ``i`` is searched, or the other way round). The memory is one shard's index plus
the query chunk. Across machines the same scheme runs with one shard per machine, each searching all the faces
(``query_chunk`` at a time) and writing its candidate pairs; merging is the union of the pair lists, followed by the
float64 check. This module runs the shards in turn on one machine.

``faiss`` is imported here, at the top: this module is imported only by the web-scale entry points, and
``portraitisr.datasets.builder`` imports without it.
"""
import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import faiss
import numpy as np

from .pairs import SCREEN_MARGIN, PairFinder, exact_similarities, normalise

__all__ = ['AnnConfig', 'ann_pairs', 'faiss_pair_finder', 'exact_pairs_of', 'measure_recall']


@dataclass(frozen=True)
class AnnConfig:
    """How the faiss pair search runs.

    Attributes:
        method: ``'auto'`` (flat up to ``exact_max_faces``, IVF above), ``'flat'`` or ``'ivf'``.
        exact_max_faces: the largest set searched exactly with ``method='auto'`` (our choice, see the module doc).
        nlist: IVF cells; None: ``4 sqrt(N)``, at most ``N / 39`` (faiss wants 39 training points per cell).
        nprobe: cells searched per face (more: higher recall, slower).
        train_size: faces the k-means is trained on; None: ``min(N, 40 nlist)`` (faiss wants at least 39 a cell).
        shard_faces: faces per database shard (see the module doc); None: one shard.
        query_chunk: faces searched at a time (bounds the memory of the results).
        recall_sample: faces whose pairs are also found exactly, for the recall; 0 skips it.
        seed: seed of the training and recall samples.
    """

    method: str = 'auto'
    exact_max_faces: int = 50_000
    nlist: Optional[int] = None
    nprobe: int = 32
    train_size: Optional[int] = None
    shard_faces: Optional[int] = None
    query_chunk: int = 65536
    recall_sample: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ('auto', 'flat', 'ivf'):
            raise ValueError(f"method must be 'auto', 'flat' or 'ivf', got {self.method!r}")
        for name in ('exact_max_faces', 'nprobe', 'query_chunk'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.shard_faces is not None and self.shard_faces < 1:
            raise ValueError(f'shard_faces must be positive or None, got {self.shard_faces}')

    def method_for(self, count: int) -> str:
        if self.method != 'auto':
            return self.method
        return 'flat' if count <= self.exact_max_faces else 'ivf'

    def nlist_for(self, count: int) -> int:
        nlist = self.nlist or int(round(4 * math.sqrt(count)))
        return max(1, min(nlist, count // 39 or 1))


def _train_ivf(screen: np.ndarray, config: AnnConfig) -> Tuple[faiss.Index, int]:
    """An empty, trained ``IndexIVFFlat`` (inner product) for these faces, and its ``nlist``."""
    count, dim = screen.shape
    nlist = config.nlist_for(count)
    size = min(count, config.train_size or 40 * nlist)
    rng = np.random.default_rng(config.seed)
    sample = screen[np.sort(rng.choice(count, size, replace=False))] if size < count else screen
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    index.train(np.ascontiguousarray(sample))
    index.nprobe = min(config.nprobe, nlist)
    return index, nlist


def _search(index_for_shard, screen: np.ndarray, queries: np.ndarray, image_index: np.ndarray, radius: float,
            config: AnnConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Candidate pairs ``(i, j)``, ``i < j``, of different images, whose float32 inner product is above ``radius``:
    each query row against each database shard in turn (``index_for_shard(start, stop)`` builds a shard's index)."""
    count = len(screen)
    shard = config.shard_faces or count
    found_i: List[np.ndarray] = []
    found_j: List[np.ndarray] = []
    for s0 in range(0, count, shard):
        s1 = min(s0 + shard, count)
        index = index_for_shard(s0, s1)
        for q0 in range(0, len(queries), config.query_chunk):
            rows = queries[q0:q0 + config.query_chunk]
            lims, _, labels = index.range_search(np.ascontiguousarray(screen[rows]), radius)
            i = np.repeat(rows, np.diff(lims).astype(np.int64))
            j = labels.astype(np.int64) + s0
            keep = (i != j) & (image_index[i] != image_index[j])
            i, j = i[keep], j[keep]
            found_i.append(np.minimum(i, j))
            found_j.append(np.maximum(i, j))
        del index
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    key = np.unique(np.concatenate(found_i) * count + np.concatenate(found_j))
    return key // count, key % count


#: rows normalised in float64 at a time (the float64 copy of a million faces would be 1 GB at 128-d, 4 GB at 512-d)
_ROWS = 65536


def _similarities(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """:func:`~.pairs.exact_similarities` of the pairs, with the rows normalised in float64 as they are gathered
    (row by row the same values as normalising the whole matrix first, as ``find_pairs`` does)."""
    out = np.empty(len(i), np.float64)
    for k in range(0, len(i), _ROWS):
        a = normalise(np.asarray(embeddings[i[k:k + _ROWS]], dtype=np.float64))
        b = normalise(np.asarray(embeddings[j[k:k + _ROWS]], dtype=np.float64))
        out[k:k + _ROWS] = exact_similarities(np.concatenate([a, b]), np.arange(len(a)),
                                              np.arange(len(a), 2 * len(a)))
    return out


def _screen(embeddings: np.ndarray) -> np.ndarray:
    """float32 copy of the normalised embeddings, for the index (normalised in float64, ``_ROWS`` at a time)."""
    screen = np.empty(embeddings.shape, np.float32)
    for k in range(0, len(embeddings), _ROWS):
        screen[k:k + _ROWS] = normalise(np.asarray(embeddings[k:k + _ROWS], dtype=np.float64))
    return screen


def _decide(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float) -> Tuple[np.ndarray, ...]:
    """The float64 decision on candidates: pairs strictly above ``threshold``, sorted by ``(i, j)``."""
    similarity = _similarities(embeddings, i, j)
    above = similarity > threshold
    i, j, similarity = i[above], j[above], similarity[above]
    order = np.lexsort((j, i))
    return i[order], j[order], similarity[order]


def _flat_for(screen: np.ndarray):
    def build(s0: int, s1: int) -> faiss.Index:
        index = faiss.IndexFlatIP(screen.shape[1])
        index.add(np.ascontiguousarray(screen[s0:s1]))
        return index
    return build


def _ivf_for(screen: np.ndarray, trained: faiss.Index):
    def build(s0: int, s1: int) -> faiss.Index:
        index = faiss.clone_index(trained)
        index.add(np.ascontiguousarray(screen[s0:s1]))
        return index
    return build


def exact_pairs_of(screen: np.ndarray, embeddings: np.ndarray, image_index: np.ndarray, queries: np.ndarray,
                   threshold: float, config: AnnConfig) -> set:
    """``{(i, j)}`` of every pair (above ``threshold``, i < j) that has one face in ``queries``: exact search."""
    i, j = _search(_flat_for(screen), screen, queries, image_index, threshold - SCREEN_MARGIN, config)
    i, j, _ = _decide(embeddings, i, j, threshold)
    return set(zip(i.tolist(), j.tolist()))


def measure_recall(found: Sequence[Tuple[int, int]], screen: np.ndarray, embeddings: np.ndarray,
                   image_index: np.ndarray, threshold: float, config: AnnConfig) -> dict:
    """Recall of ``found`` pairs: the share of the exact pairs of ``recall_sample`` random faces that are in it."""
    count = len(screen)
    size = min(config.recall_sample, count)
    rng = np.random.default_rng(config.seed + 1)
    queries = np.sort(rng.choice(count, size, replace=False)).astype(np.int64)
    truth = exact_pairs_of(screen, embeddings, image_index, queries, threshold, config)
    chosen = set(queries.tolist())
    approx = {(i, j) for i, j in found if i in chosen or j in chosen}
    hit = len(truth & approx)
    return dict(recall=round(hit / len(truth), 6) if truth else None, recall_pairs=len(truth), recall_faces=size)


def ann_pairs(embeddings: np.ndarray, image_index: Sequence[int], threshold: float,
              config: Optional[AnnConfig] = None) -> Tuple[List[Tuple[int, int, float]], dict]:
    """Faces of different images whose cosine similarity is above ``threshold``, found with faiss.

    Args:
        embeddings: ``M x D`` identity embeddings (normalised again here).
        image_index: ``M`` ids of the image of each face; faces of one image are never paired.
        threshold: keep ``similarity > threshold`` (strictly), on the identity model's scale.
        config: index and search options.

    Returns:
        ``(pairs, info)``: pairs ``(i, j, similarity)``, ``i < j``, sorted, as :func:`~.pairs.find_pairs` returns
        them (the same list with the flat index); ``info``: method, faces, nlist / nprobe, shards, recall (1.0 for
        the flat index; measured for IVF, see the module doc), seconds.
    """
    config = config or AnnConfig()
    start = time.perf_counter()
    embeddings = np.asarray(embeddings)
    image_index = np.asarray(image_index)
    if embeddings.ndim != 2 or image_index.shape != (len(embeddings),):
        raise ValueError(f'embeddings must be M x D and image_index M, got {embeddings.shape} and '
                         f'{image_index.shape}')
    count = len(embeddings)
    screen = _screen(embeddings)
    method = config.method_for(count)
    shards = max(1, math.ceil(count / (config.shard_faces or max(count, 1))))
    info = dict(method=f'faiss {"IndexFlatIP (exact)" if method == "flat" else "IndexIVFFlat"}', faces=count,
                shards=shards)
    if count == 0:
        return [], dict(info, recall=1.0, seconds=0.0)
    queries = np.arange(count, dtype=np.int64)
    radius = threshold - SCREEN_MARGIN
    if method == 'flat':
        i, j = _search(_flat_for(screen), screen, queries, image_index, radius, config)
    else:
        trained, nlist = _train_ivf(screen, config)
        info.update(nlist=nlist, nprobe=int(trained.nprobe))
        i, j = _search(_ivf_for(screen, trained), screen, queries, image_index, radius, config)
    i, j, similarity = _decide(embeddings, i, j, threshold)
    pairs = list(zip(i.tolist(), j.tolist(), similarity.tolist()))
    info['search_seconds'] = round(time.perf_counter() - start, 3)
    if method == 'flat':
        info.update(recall=1.0, recall_pairs=None, recall_faces=None)
    elif config.recall_sample > 0:
        info.update(measure_recall(list(zip(i.tolist(), j.tolist())), screen, embeddings, image_index, threshold,
                                   config))
    else:
        info.update(recall=None, recall_pairs=0, recall_faces=0)
    info['seconds'] = round(time.perf_counter() - start, 3)
    return pairs, info


def faiss_pair_finder(config: Optional[AnnConfig] = None) -> PairFinder:
    """A :data:`~.pairs.PairFinder` for :func:`~.pairs.build_manifests` that searches with faiss."""

    def find(embeddings: np.ndarray, image_index: np.ndarray, threshold: float) -> Tuple[list, dict]:
        return ann_pairs(embeddings, image_index, threshold, config)

    return find
