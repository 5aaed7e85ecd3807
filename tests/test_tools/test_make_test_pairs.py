"""tools/make_test_pairs.py: GT and degraded LQ pairs from photos, reproducible from the preset and the seed."""
import importlib.util
import json

import numpy as np
import torch
import torch.nn.functional as F

from portraitisr.utils.image_io import read_image, write_image
from tests.helpers.data_files import REPO_ROOT
from tests.helpers.images import png_bomb, smooth_image

spec = importlib.util.spec_from_file_location('make_test_pairs', REPO_ROOT / 'tools' / 'make_test_pairs.py')
make_test_pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_test_pairs)


def test_bicubic_pairs_are_the_antialiased_downscale(tmp_path, capsys):
    photo = write_image(tmp_path / 'photos' / 'a.png', smooth_image(50, 42, 0))  # cropped to 48 x 40 for x4
    png_bomb(tmp_path / 'photos' / 'bomb.png')
    out = tmp_path / 'pairs'
    assert make_test_pairs.main([str(tmp_path / 'photos'), '-o', str(out)]) == 1  # the bomb is left out
    assert 'skipped' in capsys.readouterr().err
    gt, lq = read_image(out / 'gt' / 'a.png').rgb, read_image(out / 'lq' / 'a.png').rgb
    assert gt.shape == (48, 40, 3) and lq.shape == (12, 10, 3)
    np.testing.assert_array_equal(gt, np.round(read_image(photo).rgb[1:49, 1:41] * 255) / 255)
    expected = F.interpolate(torch.from_numpy(gt.transpose(2, 0, 1))[None], size=(12, 10), mode='bicubic',
                             align_corners=False, antialias=True)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lq, np.round(expected * 255) / 255, atol=1 / 255 + 1e-6)
    record = json.loads((out / 'pairs.json').read_text())
    assert record['degradation'] == dict(preset='bicubic', scale=4, seed=0)
    assert record['pairs'] == [dict(name='a.png', source=str(photo), gt_size=[40, 48], lq_size=[10, 12])]


def test_presets_are_reproducible_from_the_seed(tmp_path):
    runs = {}
    for name, seed in (('first', 3), ('again', 3), ('other', 4)):
        out = tmp_path / name
        assert make_test_pairs.main(['sample://astronaut', 'sample://camera', '--preset', 'osediff', '--crop', '64',
                                     '--seed', str(seed), '-o', str(out)]) == 0
        runs[name] = [(out / 'lq' / f).read_bytes() for f in ('astronaut.png', 'camera.png')]
    assert runs['first'] == runs['again'] and runs['first'] != runs['other']
    assert read_image(tmp_path / 'first' / 'lq' / 'camera.png').rgb.shape == (16, 16, 3)
    settings = json.loads((tmp_path / 'first' / 'pairs.json').read_text())['degradation']['degradation']
    assert settings['resize_back'] is False and settings['seed'] == 3 and settings['type'] == 'RealESRGANDegradation'


def test_setup_errors(tmp_path, capsys):
    assert make_test_pairs.main([str(tmp_path / 'missing'), '-o', str(tmp_path / 'o')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert make_test_pairs.main(['sample://nope', '-o', str(tmp_path / 'o')]) == 2
    assert not (tmp_path / 'o').exists()
