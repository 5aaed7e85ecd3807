"""Web-scale pairing: faiss range search equals the exact blockwise search (flat index, sharded or not), the IVF index
finds a subset with a correctly measured recall, and the manifests do not depend on the search that found the pairs."""
import json

import numpy as np
import pytest

faiss = pytest.importorskip('faiss', reason='faiss is missing: pip install -e ".[webscale]"')

from portraitisr.datasets.builder.ann import AnnConfig, ann_pairs, faiss_pair_finder  # noqa: E402
from portraitisr.datasets.builder.pairs import PairConfig, build_manifests, find_pairs  # noqa: E402
from portraitisr.datasets.builder.report import write_report  # noqa: E402

from tests.test_datasets.test_builder.test_pairs import make_records, write_records  # noqa: E402


def identities(count: int, people: int, dim: int = 128, noise: float = 0.55, seed: int = 0):
    """``count`` unit embeddings of ``people`` identities (identity vector + noise), two faces per image."""
    rng = np.random.default_rng(seed)
    bases = rng.standard_normal((people, dim))
    labels = rng.integers(0, people, count)
    vectors = bases[labels] + noise * rng.standard_normal((count, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return vectors, np.arange(count) // 2


@pytest.fixture(scope='module')
def faces():
    vectors, images = identities(4000, 1000)
    return vectors, images, find_pairs(vectors, images, 0.65)


def test_flat_index_equals_exact_pairing(faces):
    vectors, images, exact = faces
    assert len(exact) > 2000
    got, info = ann_pairs(vectors, images, 0.65, AnnConfig())  # auto: flat below 50 000 faces
    assert got == exact  # same pairs, same float64 similarities
    assert info['method'] == 'faiss IndexFlatIP (exact)' and info['recall'] == 1.0
    # the database in shards searched in turn, the queries in chunks: the same pairs
    got, info = ann_pairs(vectors, images, 0.65, AnnConfig(method='flat', shard_faces=900, query_chunk=700))
    assert got == exact and info['shards'] == 5


def test_ivf_finds_a_subset_with_its_measured_recall(faces):
    vectors, images, exact = faces
    config = AnnConfig(method='ivf', nlist=64, nprobe=2, recall_sample=4000)  # few cells searched: misses some
    got, info = ann_pairs(vectors, images, 0.65, config)
    assert set(got) < set(exact) and info['method'] == 'faiss IndexIVFFlat' and info['nlist'] == 64
    # with every face sampled, the measured recall is the true one
    assert info['recall_faces'] == 4000 and info['recall_pairs'] == len(exact)
    assert info['recall'] == pytest.approx(len(got) / len(exact), abs=1e-6) and info['recall'] < 1.0
    # a sample of faces estimates it (seeded, reproducible)
    sampled = ann_pairs(vectors, images, 0.65, AnnConfig(method='ivf', nlist=64, nprobe=2, recall_sample=500))[1]
    assert sampled['recall_faces'] == 500 and abs(sampled['recall'] - info['recall']) < 0.05
    # sharded IVF (one trained quantizer shared by the shards) finds the same pairs
    sharded, _ = ann_pairs(vectors, images, 0.65, AnnConfig(method='ivf', nlist=64, nprobe=2, shard_faces=1500,
                                                           recall_sample=0))
    assert sharded == got
    # all cells searched: exact again
    full, info = ann_pairs(vectors, images, 0.65, AnnConfig(method='ivf', nlist=64, nprobe=64))
    assert full == exact and info['recall'] == 1.0


def test_faces_of_one_image_are_never_paired():
    vectors = np.tile(np.eye(8, dtype=np.float32)[:1], (4, 1))  # four identical faces
    pairs, _ = ann_pairs(vectors, np.array([0, 0, 1, 1]), 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert ann_pairs(np.zeros((0, 8), np.float32), np.zeros(0), 0.5)[0] == []
    with pytest.raises(ValueError, match="method must be 'auto', 'flat' or 'ivf'"):
        AnnConfig(method='hnsw')


def test_manifests_do_not_depend_on_the_search(tmp_path):
    out_dir, input_root = tmp_path / 'out', tmp_path / 'input'
    records, _ = make_records(out_dir, input_root, with_files=True)
    write_records(out_dir / 'records.jsonl', records)
    config = PairConfig(similarity_threshold=0.65, test_ratio=0.4, seed=3)
    build_manifests(out_dir, input_root, config=config)
    exact = {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')}
    for ann in (AnnConfig(), AnnConfig(method='ivf', nlist=2, nprobe=2)):
        summary = build_manifests(out_dir, input_root, config=config, pair_finder=faiss_pair_finder(ann))
        assert {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')} == exact
    assert summary['pairing']['train']['method'] == 'faiss IndexIVFFlat'
    info = summary['pairing']['train']
    assert info['recall'] == 1.0 and (info['nlist'], info['nprobe']) == (1, 1)  # nlist <= faces / 39: one cell
    write_report(out_dir, records, summary)
    lines = (out_dir / 'report.txt').read_text().splitlines()
    train = next(line for line in lines if line.startswith('  train: faiss IndexIVFFlat'))
    pairs = summary['train_pairs']
    assert f'recall 1.0000 on {pairs} exact pairs of' in train and 'nlist 1, nprobe 1' in train
    assert json.dumps(summary['pairing'])  # JSON-able, for logs
