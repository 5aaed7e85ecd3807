"""tools/build_portrait_dataset.py end to end on real photos: with its defaults it pairs only faces of the same person;
corrupt files and decompression bombs are reported in one line each and the good photos are built with bounded memory;
a killed build resumes; the exit status says whether every photo could be read."""
import json
import os
import subprocess
import sys

import dlib  # noqa: F401  (dlib-bin is an install_requires: missing, it fails)
import numpy as np
import pytest
import skimage  # noqa: F401  (scikit-image is an install_requires: missing, it fails)

from portraitisr.datasets.builder.pairs import split_of
from portraitisr.datasets.builder.scan import image_id_of
from portraitisr.face.identity import DlibResNet

from tests.helpers.data_files import REPO_ROOT
from tests.helpers.images import png_claiming

pytestmark = pytest.mark.slow  # every test runs the tool end to end, in its own process

HEADER = '# portrait builder: '


def _sample_faces():
    """The two real people that ship with the sample packages: skimage's astronaut and matplotlib's Grace Hopper."""
    import cv2
    import skimage.data
    from matplotlib import cbook

    with cbook.get_sample_data('grace_hopper.jpg') as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return skimage.data.astronaut(), hopper


def _photo_folder(root):
    """Real photos (about 1200 px), upscaled / flipped / cropped so that the same person appears in several files."""
    import cv2
    import skimage.data

    from portraitisr.utils.image_io import write_image

    astronaut, hopper = (image.astype(np.float32) / 255 for image in _sample_faces())

    def resized(image, scale):
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC).clip(0, 1)

    photos = root / 'photos'
    write_image(photos / 'astronaut.png', resized(astronaut, 2))
    write_image(photos / 'people' / 'astronaut_flipped.png', resized(astronaut[:, ::-1], 2))
    write_image(photos / 'people' / 'astronaut_crop.png', resized(astronaut[20:460, 60:500], 2.2))
    write_image(photos / 'hopper.png', resized(hopper, 1.6))
    write_image(photos / 'hopper_flipped.jpg', resized(hopper[:, ::-1], 1.7))
    write_image(photos / 'camera.png', resized(np.repeat(skimage.data.camera()[..., None], 3, 2) / 255.0, 2))
    write_image(photos / 'small.png', astronaut)  # 512 x 512: below the lowered size threshold
    (photos / 'corrupt.jpg').write_bytes((photos / 'hopper_flipped.jpg').read_bytes()[:4000])
    return photos


#: thresholds scaled down for ~1200 px photos; the similarity threshold is the identity model's default
SMALL = ('--min-long-side', '800', '--min-short-side', '700', '--min-eye-distance', '30')


def _build(photos, out, *extra, workers=1):
    command = [sys.executable, 'tools/build_portrait_dataset.py', str(photos), str(out), '--no-progress',
               '--workers', str(workers), *extra]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


def _manifest(path):
    """The JSON lines of a manifest and its ``#`` header."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith(HEADER)
    return json.loads(lines[0][len(HEADER):]), [json.loads(line) for line in lines[1:] if line.strip()]


def _person(path):
    return path.rsplit('/', 1)[-1].split('_')[0].split('.')[0]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp('builder')
    photos = _photo_folder(root)
    result = _build(photos, root / 'out', *SMALL, '--test-ratio', '0')
    return photos, root / 'out', result


def test_manifest_holds_the_faces_and_identity_pairs(built):
    photos, out, _ = built
    header, lines = _manifest(out / 'train.jsonl')
    train = {line['image'].rsplit('/', 1)[-1]: line for line in lines}
    assert _manifest(out / 'test.jsonl')[1] == []  # --test-ratio 0
    assert header == dict(split='train', identity_model='DlibResNet', similarity_threshold=0.91,
                          threshold_source=header['threshold_source'], test_ratio=0.0, seed=0)
    assert sorted(train) == ['astronaut.png', 'astronaut_crop.png', 'astronaut_flipped.png', 'hopper.png',
                             'hopper_flipped.jpg']
    crops = {name: line['faces'][0]['crop'] for name, line in train.items()}
    for name, line in train.items():
        assert len(line['faces']) == 1, name
        face = line['faces'][0]
        assert (out / face['crop']).is_file() and face['eye_distance'] >= 30
        refs = {ref['crop'] for ref in face['references']}
        assert refs == {crops[n] for n in train if n != name and _person(n) == _person(name)}, name
        assert all(ref['similarity'] > DlibResNet.verification_threshold for ref in face['references'])


def test_corrupt_and_rejected_files_are_reported_not_fatal(built):
    photos, out, result = built
    records = {r['image']: r for r in map(json.loads, (out / 'records.jsonl').read_text().splitlines())}
    assert records['corrupt.jpg']['status'] == 'error' and records['corrupt.jpg']['reason'].startswith('unreadable')
    assert records['small.png']['status'] == 'rejected' and records['small.png']['reason'] == 'too_small'
    assert records['camera.png']['status'] == 'rejected' and records['camera.png']['reason'] == 'no_face'
    report = (out / 'report.txt').read_text()
    assert 'error: unreadable' in report and (out / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'identity model: DlibResNet' in report and 'pairs: cosine similarity > 0.91 (DlibResNet: ' in report
    # one unreadable photo: the build finishes, says so in its summary and exits with status 1
    assert result.returncode == 1, result.stderr
    assert '1 of 8 photos could not be read (unreadable: 1); the others were built:' in result.stderr
    assert 'Traceback' not in result.stderr and 'report' in result.stdout.lower()


def test_an_interrupted_build_resumes_to_the_same_manifests(built):
    photos, out, _ = built
    resumed = out.parent / 'resumed'  # beside `out`: the manifests' relative paths to the photos are the same
    _build(photos, resumed, *SMALL, '--test-ratio', '0', '--limit', '3')  # stops after three, as a killed run
    first = (resumed / 'records.jsonl').read_text().splitlines()
    assert len(first) == 3
    result = _build(photos, resumed, *SMALL, '--test-ratio', '0')
    assert result.returncode == 1  # corrupt.jpg
    for name in ('train.jsonl', 'test.jsonl'):
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name


def test_other_settings_are_refused_in_one_line(built):
    photos, out, _ = built
    result = _build(photos, out, *SMALL[:-1], '20', '--test-ratio', '0')
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') and 'min_eye_distance: 30.0 before, 20.0 now' in result.stderr
    assert 'Traceback' not in result.stderr


# ------------------------------------------------------------------------------------------- the defaults
W, H = 3840, 2880


def _photo(face, height, x0, y0=0, flip=False):
    """A W x H photo: ``face`` scaled to ``height`` pixels tall at ``(x0, y0)`` on a gray background."""
    import cv2

    face = np.ascontiguousarray(face[:, ::-1] if flip else face)
    big = cv2.resize(face, None, fx=height / face.shape[0], fy=height / face.shape[0], interpolation=cv2.INTER_CUBIC)
    photo = np.full((H, W, 3), 128, np.uint8)
    h, w = min(big.shape[0], H - y0), min(big.shape[1], W - x0)
    photo[y0:y0 + h, x0:x0 + w] = big[:h, :w]
    return photo


def test_the_defaults_link_only_the_same_person_in_4k_photos(tmp_path):
    """Issue 16: with the old default (0.65 on dlib's scale) the astronaut and Grace Hopper became each other's
    references. Two 3840 x 2880 photos of each, with different crops, scales and flips; no option but the defaults."""
    from portraitisr.utils.image_io import write_image

    astronaut, hopper = _sample_faces()
    photos = tmp_path / 'photos'
    write_image(photos / 'astronaut_1.jpg', _photo(astronaut, 2880, 300))
    write_image(photos / 'astronaut_2.jpg', _photo(astronaut[20:400, 80:460], 2600, 1100, 200, flip=True))
    write_image(photos / 'hopper_1.jpg', _photo(hopper, 2880, 1200))
    write_image(photos / 'hopper_2.jpg', _photo(hopper[30:480, 40:480], 2700, 200, 100, flip=True))
    names = sorted(p.name for p in photos.iterdir())
    assert all(split_of(image_id_of(n), 0.1, 0) == 'train' for n in names)  # the default split keeps them together
    result = _build(photos, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'out'
    header, lines = _manifest(out / 'train.jsonl')
    assert (header['identity_model'], header['similarity_threshold']) == ('DlibResNet', 0.91)
    train = {line['image'].rsplit('/', 1)[-1]: line for line in lines}
    assert sorted(train) == names and _manifest(out / 'test.jsonl')[1] == []
    crops = {name: line['faces'][0]['crop'] for name, line in train.items()}
    for name, line in train.items():
        assert len(line['faces']) == 1 and line['faces'][0]['eye_distance'] >= 64, name
        refs = [ref['crop'] for ref in line['faces'][0]['references']]
        other = next(n for n in names if n != name and _person(n) == _person(name))
        assert refs == [crops[other]], name  # exactly the other photo of the same person
    # the different people are close on dlib's scale: the paper's 0.65 (CVLFace's scale) would have paired them
    records = {r['image']: r for r in map(json.loads, (out / 'records.jsonl').read_text().splitlines())}
    emb = {name: np.load(out / records[name]['embeddings'])[0] for name in names}
    across = [float(emb[a] @ emb[b]) for a in names for b in names if _person(a) < _person(b)]
    within = [float(emb[a] @ emb[b]) for a in names for b in names if a < b and _person(a) == _person(b)]
    assert 0.65 < min(across) and max(across) < 0.91 < min(within)  # measured 0.88-0.90 and 0.99


# ------------------------------------------------------------------------------------------- bombs
#: Runs the tool in this process and writes its peak memory (and its workers' largest) to $RUSAGE_OUT.
_MEASURED = '''
import json, os, resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
    code = 0
except SystemExit as stop:
    code = stop.code
scale = 1 if sys.platform == 'darwin' else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
try:  # Linux: ru_maxrss keeps the peak of the process that forked us (pytest's, after the tests before this one)
    with open('/proc/self/status') as status:
        main = next(int(line.split()[1]) * 1024 for line in status if line.startswith('VmHWM:'))
except OSError:
    pass
peaks = dict(code=code, main=main, worker=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)
with open(os.environ['RUSAGE_OUT'], 'w') as f:
    json.dump(peaks, f)
'''


@pytest.fixture(scope='module')
def bomb_folder(tmp_path_factory):
    """Two good photos, a corrupt one and three bombs (16384^2 with its data, 30000^2 and 60000^2 headers)."""
    import cv2

    from portraitisr.utils.image_io import write_image

    photos = tmp_path_factory.mktemp('bombs') / 'photos'
    astronaut, hopper = _sample_faces()
    write_image(photos / 'astronaut.jpg', cv2.resize(astronaut, (1200, 1200), interpolation=cv2.INTER_CUBIC))
    write_image(photos / 'hopper.jpg', cv2.resize(hopper, (1024, 1200), interpolation=cv2.INTER_CUBIC))
    (photos / 'corrupt.jpg').write_bytes((photos / 'hopper.jpg').read_bytes()[:3000])
    (photos / 'bomb_16k.png').write_bytes(png_claiming(16384, 16384, gray=True, rows=True))
    (photos / 'bomb_30k.png').write_bytes(png_claiming(30000, 30000, gray=True))
    (photos / 'bomb_60k.png').write_bytes(png_claiming(60000, 60000, gray=True))
    return photos


@pytest.mark.parametrize('workers', [1, 2])
def test_bombs_are_reported_and_the_good_photos_built_in_bounded_memory(bomb_folder, tmp_path, workers):
    out = tmp_path / 'out'
    limit = ['--max-pixels', '200000000'] if workers == 2 else []  # the flag, and the default (134.2 MP)
    command = [sys.executable, '-c', _MEASURED, 'tools/build_portrait_dataset.py', str(bomb_folder), str(out),
               '--no-progress', '--workers', str(workers), *SMALL, *limit]
    env = dict(os.environ, RUSAGE_OUT=str(tmp_path / 'rusage.json'))
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    peaks = json.loads((tmp_path / 'rusage.json').read_text())
    output = result.stdout + result.stderr
    assert peaks['code'] == 1, output  # some photos could not be read
    assert 'Traceback' not in output
    megapixels = '200.0' if workers == 2 else '134.2'
    for name, side in (('bomb_16k.png', 16384), ('bomb_30k.png', 30000), ('bomb_60k.png', 60000)):
        # one line per bomb in the log, naming the file, its size, the reason and the limit
        lines = [line for line in result.stdout.splitlines() if f'scan: {name}: too_large: ' in line]
        assert len(lines) == 1, output
        assert f'{side}x{side}' in lines[0] and f'limit of {megapixels} MP' in lines[0]
    assert '4 of 6 photos could not be read (too_large: 3, unreadable: 1); the others were built:' in result.stderr
    _, lines = _manifest(out / 'train.jsonl')
    _, test_lines = _manifest(out / 'test.jsonl')
    built = sorted(line['image'].rsplit('/', 1)[-1] for line in lines + test_lines)
    assert built == ['astronaut.jpg', 'hopper.jpg']
    report = (out / 'report.txt').read_text().splitlines()
    assert [line.split() for line in report if line.strip().startswith('error: ')] == [
        ['error:', 'too_large', '3'], ['error:', 'unreadable', '1']]
    # bounded memory: decoding the 16384^2 bomb alone would take 3.2 GB in one process (30000^2: 11 GB). Peak
    # resident memory, exactly (no sampling): the build's own process (VmHWM of its own address space; its
    # ru_maxrss would include the peak of this test process, which forked it) and its largest child process
    # (the scan workers; with one worker there is none, and the largest child is a short helper forked by a library)
    assert peaks['main'] < 2 * 2**30 and peaks['worker'] < 2 * 2**30, peaks
