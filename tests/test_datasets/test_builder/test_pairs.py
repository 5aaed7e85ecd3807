"""PortraitSR-4K builder, stage 2: records -> identity pairs, split and manifests, and the report."""
import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from portraitisr.datasets.builder.pairs import (PairConfig, build_manifests, find_pairs, identity_threshold,
                                                split_images, split_of)
from portraitisr.datasets.builder.photos import BuilderWarning
from portraitisr.datasets.builder.records import load_records, read_records
from portraitisr.datasets.builder.report import write_report
from portraitisr.datasets.portrait_triplet_dataset import PortraitTripletDataset, load_manifest
from portraitisr.utils.image_io import write_image

DIM = 128
SIZE = 96  # side of the synthetic photos
# identities of the faces of each photo; photo 0 holds the same person twice (never a pair with itself)
LAYOUT = [['A', 'A'], ['A', 'B'], ['B'], ['C', 'B'], ['C'], ['D'], ['A'], ['B', 'C'], ['C'], ['A', 'E'],
          ['B'], ['E'], ['A', 'C'], ['F'], ['B', 'A'], ['C'], ['A'], ['E', 'B'], ['G'], ['C', 'A']]
LANDMARKS = [[[30.0, 40.0], [60.0, 40.0], [45.0, 55.0], [33.0, 68.0], [57.0, 68.0]],
             [[20.0, 30.0], [40.0, 30.0], [30.0, 40.0], [22.0, 48.0], [38.0, 48.0]]]


def make_records(out_dir: Path, input_root: Path, layout=LAYOUT, seed: int = 0,
                 with_files: bool = False) -> Tuple[List[dict], Dict[Tuple[int, int], str]]:
    """Stage-1-like output: records, embeddings (identity + noise) and, optionally, real photos and crops.

    Returns the records and ``{(photo, face): identity}``.
    """
    rng = np.random.default_rng(seed)
    names = sorted({name for faces in layout for name in faces})
    bases = {name: v / np.linalg.norm(v) for name, v in zip(names, rng.standard_normal((len(names), DIM)))}
    (out_dir / 'embeddings').mkdir(parents=True, exist_ok=True)
    (out_dir / 'faces').mkdir(exist_ok=True)
    (input_root / 'photos').mkdir(parents=True, exist_ok=True)
    records, identity = [], {}
    for p, faces in enumerate(layout):
        image_id = f'{p:016x}'
        vectors = np.stack([bases[name] + 0.25 * rng.standard_normal(DIM) / np.sqrt(DIM) for name in faces])
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        np.save(out_dir / 'embeddings' / f'{image_id}.npy', vectors)
        entries = []
        for k, name in enumerate(faces):
            identity[(p, k)] = name
            crop = f'faces/{image_id}_{k}.png'
            entries.append(dict(box=[10.0 + k, 20.0, 80.0, 90.0], landmarks=LANDMARKS[k], score=0.99,
                                eye_distance=30.0 - 10.0 * k + p, crop=crop))
            if with_files:
                write_image(str(out_dir / crop), rng.random((64, 64, 3), dtype=np.float32))
        image = f'photos/img_{p:02d}.png'
        if with_files:
            write_image(str(input_root / image), rng.random((SIZE, SIZE, 3), dtype=np.float32))
        records.append(dict(image=image, image_id=image_id, status='ok', reason=None, width=SIZE, height=SIZE,
                            score=4.2, faces=entries, embeddings=f'embeddings/{image_id}.npy',
                            dropped_small_faces=p % 2))
    return records, identity


def write_records(path: Path, records: List[dict], tail: str = '') -> Path:
    path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)
    return path


def brute_pairs(embeddings: np.ndarray, image_index: np.ndarray, threshold: float) -> List[Tuple[int, int, float]]:
    full = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    return [(i, j, full[i, j]) for i in range(len(full)) for j in range(i + 1, len(full))
            if full[i, j] > threshold and image_index[i] != image_index[j]]


@pytest.fixture
def built(tmp_path):
    out_dir, input_root = tmp_path / 'out', tmp_path / 'input'
    records, identity = make_records(out_dir, input_root, with_files=True)
    write_records(out_dir / 'records.jsonl', records)
    config = PairConfig(similarity_threshold=0.65, test_ratio=0.4, seed=3)
    summary = build_manifests(out_dir, input_root, config=config)
    return dict(out_dir=out_dir, input_root=input_root, records=records, identity=identity, config=config,
                summary=summary)


def _photo(path: str) -> int:
    return int(Path(path).stem.split('_')[1])


def manifest_faces(out_dir: Path, split: str) -> Dict[Tuple[int, int], List[dict]]:
    """``{(photo, face): references}`` of one manifest, references as written."""
    faces = {}
    for line in manifest_lines(out_dir / f'{split}.jsonl'):
        record = json.loads(line)
        for k, face in enumerate(record['faces']):
            faces[(_photo(record['image']), k)] = face['references']
    return faces


def manifest_lines(path: Path) -> List[str]:
    """The JSON lines of a manifest, after checking its ``#`` header line (what made the pairs)."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith('# portrait builder: ')
    header = json.loads(lines[0][len('# portrait builder: '):])
    assert header['split'] == path.stem and isinstance(header['similarity_threshold'], float)
    assert not any(line.startswith('#') for line in lines[1:])
    return lines[1:]


def _ref_face(ref: dict) -> Tuple[int, int]:
    stem = Path(ref['crop']).stem  # <image_id>_<k>
    image_id, k = stem.rsplit('_', 1)
    return int(image_id, 16), int(k)


# ---------------------------------------------------------------------------------------------- pairs
def test_find_pairs_exactly_same_identity_across_images():
    rng = np.random.default_rng(1)
    bases = rng.standard_normal((4, DIM))
    labels = [0, 0, 1, 2, 0, 1, 3, 2, 1, 0]
    images = np.array([0, 0, 1, 1, 2, 3, 4, 5, 5, 6])  # faces 0 and 1: same person in one photo
    vectors = bases[labels] + 0.25 * rng.standard_normal((len(labels), DIM)) / np.sqrt(DIM)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    pairs = find_pairs(vectors, images, threshold=0.65, block_size=3)
    expected = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))
                if labels[i] == labels[j] and images[i] != images[j]]
    assert [(i, j) for i, j, _ in pairs] == expected
    assert (0, 1) not in [(i, j) for i, j, _ in pairs]
    assert all(s > 0.65 for _, _, s in pairs)
    assert all(images[i] != images[j] for i, j, _ in pairs)


@pytest.mark.parametrize('block_size', [1, 3, 7, 64])
def test_blocked_similarity_equals_full_matrix(block_size):
    rng = np.random.default_rng(2)
    bases = rng.standard_normal((5, 16))
    vectors = bases[rng.integers(0, 5, 60)] + 0.6 * rng.standard_normal((60, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    images = rng.integers(0, 25, 60)
    expected = brute_pairs(vectors, images, 0.65)
    got = find_pairs(vectors, images, 0.65, block_size=block_size)
    assert len(expected) > 20
    assert [(i, j) for i, j, _ in got] == [(i, j) for i, j, _ in expected]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in expected], atol=1e-5)
    assert got == find_pairs(vectors, images, 0.65, block_size=1000)
    assert find_pairs(np.zeros((0, 16), np.float32), np.zeros(0), 0.65) == []


# ---------------------------------------------------------------------------------------------- split
def test_split_deterministic_stable_and_about_right():
    ids = [f'{random.Random(i).getrandbits(64):016x}' for i in range(1500)]
    first = split_images(ids[:1000], test_ratio=0.1, seed=0)
    assert first == split_images(list(reversed(ids[:1000])), test_ratio=0.1, seed=0)
    grown = split_images(ids, test_ratio=0.1, seed=0)
    assert all(grown[i] == first[i] for i in ids[:1000])  # adding images moves none
    share = sum(s == 'test' for s in first.values()) / 1000
    assert 0.07 <= share <= 0.13
    assert split_images(ids[:1000], test_ratio=0.1, seed=1) != first
    assert set(split_images(ids[:50], test_ratio=0.0).values()) == {'train'}
    assert set(split_images(ids[:50], test_ratio=1.0).values()) == {'test'}


# ---------------------------------------------------------------------------------------------- manifests
def test_manifests_pairs_within_split_and_test_keeps_best(built):
    out_dir, records, identity, config = built['out_dir'], built['records'], built['identity'], built['config']
    split = {p: split_of(r['image_id'], config.test_ratio, config.seed) for p, r in enumerate(records)}
    assert {'train', 'test'} <= set(split.values())
    embeddings = {(p, k): v for p, r in enumerate(records)
                  for k, v in enumerate(np.load(out_dir / r['embeddings']))}
    for name in ('train', 'test'):
        faces = manifest_faces(out_dir, name)
        assert set(faces) == {f for f in identity if split[f[0]] == name}
        for face, refs in faces.items():
            others = [g for g in faces if g[0] != face[0] and identity[g] == identity[face]]
            sims = {g: float(embeddings[face] @ embeddings[g]) for g in others}
            got = [_ref_face(r) for r in refs]
            assert all(split[g[0]] == name and g[0] != face[0] for g in got)  # never across splits or images
            assert [r['similarity'] for r in refs] == sorted((r['similarity'] for r in refs), reverse=True)
            for ref, g in zip(refs, got):
                assert ref['similarity'] == pytest.approx(sims[g], abs=1e-5)
            if name == 'train':
                assert sorted(got) == sorted(others)  # every valid pair, both ways
            else:
                assert len(refs) <= 1
                assert got == ([max(sims, key=sims.get)] if sims else [])
    summary = built['summary']
    assert summary['train_images'] + summary['test_images'] == len(records)
    assert summary['test_faces_with_reference'] > 0 and summary['train_pairs'] > 0
    assert summary['train_references'] == 2 * summary['train_pairs']


def test_manifests_load_in_the_dataset(built):
    out_dir = built['out_dir']
    for name in ('train', 'test'):
        entries = load_manifest(str(out_dir / f'{name}.jsonl'))
        assert entries and all(Path(e.image).is_file() for e in entries)
        assert [e.image for e in entries] == sorted(e.image for e in entries)
        assert all(Path(r.crop).is_file() for e in entries for f in e.faces for r in f.references)
    dataset = PortraitTripletDataset(str(out_dir / 'train.jsonl'), crop_size=64, ref_size=32, crop_mode='center')
    item = dataset[0]
    assert item['ref'].shape == (3, 32, 32) and item['metainfo']['has_ref']


def test_reference_kind_image(tmp_path):
    out_dir, input_root = tmp_path / 'out', tmp_path / 'input'
    records, _ = make_records(out_dir, input_root, with_files=True)
    write_records(out_dir / 'records.jsonl', records)
    build_manifests(out_dir, input_root, config=PairConfig(similarity_threshold=0.65, test_ratio=0.0,
                                                           reference_kind='image'))
    entries = load_manifest(str(out_dir / 'train.jsonl'))
    refs = [r for e in entries for f in e.faces for r in f.references]
    assert refs and all(r.crop is None and Path(r.image).is_file() and r.landmarks.shape == (5, 2) for r in refs)
    assert manifest_lines(out_dir / 'test.jsonl') == []
    line = manifest_lines(out_dir / 'train.jsonl')[0]
    assert json.loads(line)['image'].startswith('../input/photos/')


def test_same_records_any_order_give_identical_bytes(built):
    out_dir, input_root, config = built['out_dir'], built['input_root'], built['config']
    before = {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')}
    shuffled = list(built['records'])
    random.Random(5).shuffle(shuffled)
    write_records(out_dir / 'shuffled.jsonl', shuffled)
    build_manifests(out_dir, input_root, records_path=out_dir / 'shuffled.jsonl', config=config)
    assert {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')} == before
    assert not [p for p in out_dir.iterdir() if p.name.endswith('.tmp')]


def test_duplicate_and_truncated_records(tmp_path, built):
    out_dir, input_root, config, records = built['out_dir'], built['input_root'], built['config'], built['records']
    before = {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')}
    crashed = dict(records[1], status='error', reason='crash', faces=[], embeddings=None)
    stale = dict(records[4], status='rejected', reason='no_faces', faces=[], embeddings=None)
    lines = [crashed, stale] + records
    path = write_records(tmp_path / 'resumed.jsonl', lines, tail=json.dumps(records[7])[:40])
    loaded = read_records(path)
    assert len(loaded) == len(records)
    assert loaded[records[1]['image']]['status'] == 'ok'  # the last record wins
    build_manifests(out_dir, input_root, records_path=path, config=config)
    assert {name: (out_dir / f'{name}.jsonl').read_bytes() for name in ('train', 'test')} == before
    # the other way round: an ok record superseded by a later rejection drops the image
    path = write_records(tmp_path / 'later.jsonl', records + [stale])
    summary = build_manifests(out_dir, input_root, records_path=path, config=config)
    assert summary['train_images'] + summary['test_images'] == len(records) - 1
    assert summary['records_duplicates'] == 1


def test_repair_rewrites_what_the_pairing_stage_reads(tmp_path, built):
    """The scan's resume (``load_records(repair=True)``) and the pairing stage read the file the same way."""
    records = built['records']
    path = write_records(tmp_path / 'records.jsonl', [records[2]] + records[:4], tail=json.dumps(records[5])[:30])
    expected = read_records(path)
    repaired = load_records(path, repair=True)
    assert [r['image'] for r in repaired] == list(expected) == [r['image'] for r in records[:4]]
    assert path.read_text().endswith('\n') and len(path.read_text().splitlines()) == 4
    assert read_records(path) == expected
    assert load_records(tmp_path / 'missing.jsonl') == []


# ---------------------------------------------------------------------------------------------- report
def test_report_counts_and_png(built):
    out_dir, summary = built['out_dir'], built['summary']
    records = list(built['records']) + [
        dict(image='photos/small.jpg', image_id='f' * 16, status='rejected', reason='too_small', faces=[]),
        dict(image='photos/wide.jpg', image_id='e' * 16, status='rejected', reason='aspect', faces=[]),
        dict(image='photos/ugly.jpg', image_id='d' * 16, status='rejected', reason='low_score', faces=[]),
        dict(image='photos/none.jpg', image_id='b' * 16, status='rejected', reason='small_faces', faces=[],
             dropped_small_faces=2),
        dict(image='photos/bad.jpg', image_id='c' * 16, status='error', reason='unreadable: cannot decode', faces=[]),
        dict(image='photos/bomb.png', image_id='a' * 16, status='error', reason='too_large: 60000x60000', faces=[])]
    result = write_report(out_dir, {r['image']: r for r in records}, summary)
    counts = dict(result['counts'])
    assert counts['scanned images'] == len(built['records']) + 6
    assert counts['errors (could not be read)'] == 2
    assert counts['candidates (size and aspect ratio)'] == len(built['records']) + 2
    assert counts['passed quality scorer'] == len(built['records']) + 1
    assert counts['images with faces'] == len(built['records'])
    assert counts['dropped small faces'] == sum(r['dropped_small_faces'] for r in built['records']) + 2
    assert counts['kept faces'] == sum(len(f) for f in LAYOUT)
    assert counts['test faces with >= 1 reference'] == summary['test_faces_with_reference']
    text = (out_dir / 'report.txt').read_text()
    assert any(line.split() == ['scanned', 'images', str(len(records))] for line in text.splitlines())
    assert f"{summary['train_pairs']:>8}" in text and 'too_small' in text and '#' in text
    assert 'error: unreadable' in text and 'error: too_large' in text
    assert '  photos/bomb.png: too_large: 60000x60000' in text.splitlines()
    assert 'pairs: cosine similarity > 0.65 (given' in text
    assert 'pair similarity, train' in text and 'face size' in text
    assert (out_dir / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_corrupt_middle_line_is_skipped_with_a_warning(tmp_path, built):
    records = built['records']
    path = tmp_path / 'corrupt.jsonl'
    path.write_text(json.dumps(records[0]) + '\n' + '{"image": "photos/x.png", "sta\n' + json.dumps(records[1]) + '\n')
    with pytest.warns(UserWarning, match='corrupt.jsonl:2'):
        loaded = read_records(path)
    assert list(loaded) == [records[0]['image'], records[1]['image']]


# ---------------------------------------------------------------------------------------------- thresholds
def test_the_threshold_is_the_identity_models_own(tmp_path):
    out_dir, input_root = tmp_path / 'out', tmp_path / 'input'
    records, _ = make_records(out_dir, input_root, with_files=True)
    write_records(out_dir / 'records.jsonl', records)
    with pytest.raises(ValueError, match='no scan.json naming the identity model'):
        build_manifests(out_dir, input_root)
    (out_dir / 'scan.json').write_text(json.dumps(dict(extractor=dict(type='DlibResNet'))))
    summary = build_manifests(out_dir, input_root, config=PairConfig(test_ratio=0.0))
    assert (summary['identity_model'], summary['similarity_threshold']) == ('DlibResNet', 0.91)
    assert summary['threshold_source'].startswith("DlibResNet: dlib's euclidean distance 0.6")
    header = (out_dir / 'train.jsonl').read_text().splitlines()[0]
    assert json.loads(header[len('# portrait builder: '):]) == dict(
        split='train', identity_model='DlibResNet', similarity_threshold=0.91,
        threshold_source=summary['threshold_source'], test_ratio=0.0, seed=0)
    sims = summary['pair_similarities']['train']
    assert sims and min(sims) > 0.91
    assert identity_threshold(dict(type='AdaFaceIR', depth=101)) == (
        0.65, 'AdaFaceIR: HeadsUp (arXiv 2510.09924) appendix C: CVLFace similarity 0.65')
    # a threshold given explicitly wins, and is recorded as given
    summary = build_manifests(out_dir, input_root, config=PairConfig(similarity_threshold=0.5, test_ratio=0.0))
    assert summary['similarity_threshold'] == 0.5 and summary['threshold_source'].startswith('given')
    assert summary['identity_model'] == 'DlibResNet'
    (out_dir / 'scan.json').write_text(json.dumps(dict(extractor=dict(type='ResNetArcFace'))))
    with pytest.raises(ValueError, match='ResNetArcFace has no published verification threshold.*--similarity'):
        build_manifests(out_dir, input_root, config=PairConfig(test_ratio=0.0))
    with pytest.raises(KeyError, match="'Nope' is not registered.*DlibResNet"):
        identity_threshold(dict(type='Nope'))


def test_photos_changed_or_gone_since_the_scan_stay_out_of_the_manifests(tmp_path):
    import os

    out_dir, input_root = tmp_path / 'out', tmp_path / 'input'
    records, _ = make_records(out_dir, input_root, layout=[['A'], ['A'], ['A'], ['B']], with_files=True)
    for record in records:
        st = os.stat(input_root / record['image'])
        record.update(file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)
    write_records(out_dir / 'records.jsonl', records)
    config = PairConfig(similarity_threshold=0.65, test_ratio=0.0)
    summary = build_manifests(out_dir, input_root, config=config)
    assert summary['train_images'] == 4 and summary['images_stale'] == 0 and summary['train_pairs'] == 3
    (input_root / records[1]['image']).unlink()
    with open(input_root / records[2]['image'], 'ab') as f:
        f.write(b'edited')
    with pytest.warns(BuilderWarning) as caught:
        summary = build_manifests(out_dir, input_root, config=config)
    assert sorted(str(w.message) for w in caught) == [
        'photos/img_01.png: the photo no longer exists; left out of the manifests',
        'photos/img_02.png: changed since it was scanned; left out of the manifests (scan again)']
    assert summary['train_images'] == 2 and summary['images_stale'] == 2 and summary['train_pairs'] == 0
    images = [e.image for e in load_manifest(str(out_dir / 'train.jsonl'))]
    assert [Path(image).name for image in images] == ['img_00.png', 'img_03.png']
