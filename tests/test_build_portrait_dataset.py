"""tools/build_portrait_dataset.py end to end on real photos: faces, identity pairs, corrupt files, resume."""
import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO_ROOT


def _photo_folder(root):
    """Real photos, upscaled / flipped / cropped so that the same person appears in several files."""
    import cv2
    import skimage.data
    from matplotlib import cbook

    from portraitisr.utils.image_io import write_image

    astronaut = skimage.data.astronaut().astype(np.float32) / 255
    with cbook.get_sample_data('grace_hopper.jpg') as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR),
                              cv2.COLOR_BGR2RGB).astype(np.float32) / 255

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


def _build(photos, out, *extra):
    command = [sys.executable, 'tools/build_portrait_dataset.py', str(photos), str(out), '--min-long-side', '800',
               '--min-short-side', '700', '--min-eye-distance', '30', '--similarity', '0.9', '--test-ratio', '0',
               '--no-progress', *extra]
    return subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp('builder')
    photos = _photo_folder(root)
    result = _build(photos, root / 'out')
    return photos, root / 'out', result


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_manifest_holds_the_faces_and_identity_pairs(built):
    photos, out, _ = built
    train = {line['image'].rsplit('/', 1)[-1]: line for line in _manifest(out / 'train.jsonl')}
    assert _manifest(out / 'test.jsonl') == []  # --test-ratio 0
    assert sorted(train) == ['astronaut.png', 'astronaut_crop.png', 'astronaut_flipped.png', 'hopper.png',
                             'hopper_flipped.jpg']
    for name, line in train.items():
        assert len(line['faces']) == 1, name
        face = line['faces'][0]
        assert (out / face['crop']).is_file() and face['eye_distance'] >= 30
        refs = {ref['crop'].rsplit('/', 1)[-1].split('_')[0] for ref in face['references']}
        others = {train[n]['faces'][0]['crop'].rsplit('/', 1)[-1].split('_')[0] for n in train
                  if n != name and n.split('_')[0].split('.')[0] == name.split('_')[0].split('.')[0]}
        assert refs == others, name  # exactly the other photos of the same person
        assert all(ref['similarity'] > 0.9 for ref in face['references'])


def test_corrupt_and_rejected_files_are_reported_not_fatal(built):
    photos, out, result = built
    records = {r['image']: r for r in map(json.loads, (out / 'records.jsonl').read_text().splitlines())}
    assert records['corrupt.jpg']['status'] == 'error'
    assert records['small.png']['status'] == 'rejected' and records['small.png']['reason'] == 'too_small'
    assert records['camera.png']['status'] == 'rejected' and records['camera.png']['reason'] == 'no_face'
    report = (out / 'report.txt').read_text()
    assert 'error' in report and (out / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'report' in result.stdout.lower()


def test_an_interrupted_build_resumes_to_the_same_manifests(built):
    photos, out, _ = built
    resumed = out.parent / 'resumed'  # beside `out`: the manifests' relative paths to the photos are the same
    _build(photos, resumed, '--limit', '3')  # stops after three photos, as a killed run would
    first = (resumed / 'records.jsonl').read_text().splitlines()
    assert len(first) == 3
    _build(photos, resumed)
    for name in ('train.jsonl', 'test.jsonl'):
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name
