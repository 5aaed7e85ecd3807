"""The ``portraitisr`` command: restore a folder end to end, fail fast without weights, list and download the zoo."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from portraitisr import cli
from portraitisr.apis import model_zoo
from portraitisr.utils.image_io import write_image

pytest_plugins = ('tests.helpers.file_server',)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_HEADSUP = REPO_ROOT / 'configs' / 'debug' / 'headsup_tiny.py'


@pytest.fixture(autouse=True)
def offline(no_internet):
    """Connections beyond loopback fail."""


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A trainable-only checkpoint of the tiny HeadsUp config, in the layout TrainableCheckpointHook saves."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.registry import MODELS

    init_default_scope('portraitisr')
    model = MODELS.build(Config.fromfile(str(TINY_HEADSUP)).model)
    names = trainable_names(model)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items() if k in names}
    path = tmp_path_factory.mktemp('run') / 'iter_2.pth'
    torch.save({'meta': {'trainable_only': True}, 'state_dict': state}, path)
    return path


def _smooth(h, w, seed):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def test_restore_folder_keeps_modes_reports_corrupt_file(tiny_checkpoint, tmp_path, capsys):
    photos = tmp_path / 'photos'
    alpha = np.ones((20, 24), np.float32)
    alpha[:, :6] = 0
    write_image(photos / 'rgba16.png', _smooth(20, 24, 0), alpha, bit_depth=16)
    write_image(photos / 'photo.jpg', _smooth(16, 12, 1))
    write_image(photos / 'gray.png', _smooth(12, 12, 2)[..., 0])
    (photos / 'broken.jpg').write_bytes((photos / 'photo.jpg').read_bytes()[:200])  # truncated JPEG
    write_image(photos / 'nested' / 'deep.png', _smooth(8, 8, 3))  # only with --recursive
    out = tmp_path / 'out'
    status = cli.main(['restore', str(photos), '-o', str(out), '--config', str(TINY_HEADSUP),
                       '--checkpoint', str(tiny_checkpoint), '--device', 'cpu', '--compare'])
    captured = capsys.readouterr()
    assert status == 1  # one file failed
    assert 'skipped' in captured.err and 'broken.jpg' in captured.err
    assert '3 of 4 images restored' in captured.out

    rgba = cv2.imread(str(out / 'rgba16.png'), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (80, 96, 4) and rgba.dtype == np.uint16
    assert rgba[:, :20, 3].max() == 0 and rgba[:, 28:, 3].min() == 65535
    assert cv2.imread(str(out / 'photo.jpg'), cv2.IMREAD_UNCHANGED).shape == (64, 48, 3)
    assert cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED).shape == (48, 48)
    assert cv2.imread(str(out / 'photo_compare.png')).shape == (64, 96, 3)
    assert not (out / 'broken.jpg').exists() and not (out / 'nested').exists()

    # resume: only the missing output is made again; the others are not rewritten
    (out / 'photo.jpg').unlink()
    before = {name: (out / name).stat().st_mtime_ns for name in ('rgba16.png', 'gray.png', 'rgba16_compare.png')}
    status = cli.main(['restore', str(photos), '-o', str(out), '--config', str(TINY_HEADSUP),
                       '--checkpoint', str(tiny_checkpoint), '--device', 'cpu', '--compare', '--skip-existing'])
    captured = capsys.readouterr()
    assert status == 1 and '1 of 4 images restored' in captured.out and '2 already there' in captured.out
    assert (out / 'photo.jpg').is_file()
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before


def test_inputs_that_would_share_an_output_are_refused(tmp_path):
    for folder in ('a', 'b'):
        write_image(tmp_path / folder / 'same.png', _smooth(8, 8, 0))
    with pytest.raises(ValueError, match='same.png'):
        cli.collect_inputs([str(tmp_path / 'a'), str(tmp_path / 'b')])
    assert len(cli.collect_inputs([str(tmp_path / 'a'), str(tmp_path / 'a' / 'same.png')])) == 2  # same file


def test_missing_zoo_weights_fail_at_once_naming_files(weight_env, tmp_path, capsys):
    status = cli.main(['restore', 'x.jpg', '--model', 'headsup_sd21', '-o', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 2
    for expected in ('stabilityai/stable-diffusion-2-1-base', 'cvlface_adaface_ir101_webface12m.safetensors',
                     'portraitisr download headsup_sd21', 'tools/dist_train.sh'):
        assert expected in err, expected
    assert not (tmp_path / 'out').exists()


def test_models_lists_the_zoo(capsys):
    assert cli.main(['models']) == 0
    out = capsys.readouterr().out
    assert 'headsup_sd21' in out and 'NOT RELEASED' in out and 'configs/osediff/osediff_sd21.py' in out
    assert cli.main(['models', '--weights']) == 0
    out = capsys.readouterr().out
    assert 'RealESRGAN_x4plus.pth' in out and 'sha256 pinned' in out and 'TOFU (no sha256)' in out


def test_download_command_goes_through_the_resolver(weight_env, file_server, monkeypatch, capsys):
    data = b'codeformer weights'
    url, _ = file_server.serve('codeformer.pth', data)
    zoo = model_zoo.load_index()
    zoo.weights['codeformer'] = dataclasses.replace(zoo.weights['codeformer'], url=url, sha256='f' * 64)
    monkeypatch.setattr(model_zoo, 'load_index', lambda path=None: zoo)
    assert cli.main(['download', 'codeformer']) == 1  # wrong sha256: rejected, nothing kept
    assert 'sha256 mismatch' in capsys.readouterr().err
    assert not (weight_env['home'] / 'codeformer.pth').exists()

    zoo.weights['codeformer'] = dataclasses.replace(zoo.weights['codeformer'], sha256=None)
    with pytest.warns(UserWarning, match='without a sha256'):
        assert cli.main(['download', 'codeformer']) == 0
    assert (weight_env['home'] / 'codeformer.pth').read_bytes() == data
    assert cli.main(['download', 'no_such_model']) == 1


def test_python_dash_m_and_light_import():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, '-m', 'portraitisr', 'models'], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=env, timeout=60)
    assert result.returncode == 0 and 'osediff_sd21' in result.stdout
    code = "import sys, portraitisr.cli, portraitisr.apis.model_zoo; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=60)
    assert light.stdout.strip() == 'False'
