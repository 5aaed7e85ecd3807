"""IDFSR end to end through tools/ on CPU: the tiny config trains and resumes exactly (tools/train.py --resume),
tests (tools/test.py), and a person's identity is fitted by tools/fit_identity.py, which resumes exactly after being
killed and leaves every network tensor untouched."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from portraitisr.models.conditioning import load_identity_embedding
from .conftest import REPO_ROOT

TINY = 'configs/debug/idfsr_tiny.py'
ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))

pytestmark = pytest.mark.slow


def _run(args, timeout=900):
    result = subprocess.run(args, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _train(work_dir, *options):
    return _run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(work_dir), '--cfg-options',
                 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
                 'default_hooks.checkpoint.max_keep_ckpts=3', *options])


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('idfsr_straight')
    _train(work_dir, 'train_cfg.max_iters=4')
    return work_dir


def test_tiny_config_resumes_exactly(straight_run, tmp_path):
    _train(tmp_path, 'train_cfg.max_iters=2')
    result = _train(tmp_path, 'train_cfg.max_iters=4', '--resume')
    assert 'resumed' in (result.stdout + result.stderr).lower()
    straight, resumed = _load(straight_run / 'iter_4.pth'), _load(tmp_path / 'iter_4.pth')
    assert straight.keys() == resumed.keys() and all(k.startswith('unet.') for k in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    first = _load(tmp_path / 'iter_2.pth')
    assert any(not torch.equal(first[k], straight[k]) for k in straight), 'weights did not train'


def test_test_tool_restores_and_scores(straight_run, tmp_path):
    result = _run([sys.executable, 'tools/test.py', TINY, str(straight_run / 'iter_4.pth'), '--work-dir',
                   str(tmp_path), '--save-dir', str(tmp_path / 'images')])
    assert 'PSNR' in result.stdout + result.stderr
    assert len(os.listdir(tmp_path / 'images')) == 2


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Three photos of the astronaut: the original, mirrored, and rotated by 8 degrees."""
    from skimage import data, transform

    folder = tmp_path_factory.mktemp('person')
    image = data.astronaut()
    Image.fromarray(image).save(folder / 'a0.png')
    Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(folder / 'a1.png')
    rotated = (transform.rotate(image, 8, center=(225, 120)) * 255).round().astype(np.uint8)
    Image.fromarray(rotated).save(folder / 'a2.png')
    return folder


def _fit(straight_run, photos, output, *options):
    return [sys.executable, 'tools/fit_identity.py', str(photos), '--config', TINY, '--checkpoint',
            str(straight_run / 'iter_4.pth'), '-o', str(output), '--steps', '6', '--checkpoint-interval', '2',
            '--batch-size', '2', *options]


def test_fit_identity_resumes_exactly_after_a_kill(straight_run, photos, tmp_path):
    straight = tmp_path / 'straight.safetensors'
    result = _run(_fit(straight_run, photos, straight))
    assert 'loss' in result.stdout and not (tmp_path / 'straight.safetensors.fitting.safetensors').exists()
    fitted, meta = load_identity_embedding(straight)
    assert fitted.shape == (128, ) and meta['steps'] == '6' and len(json.loads(meta['photos'])) == 3

    killed = tmp_path / 'killed.safetensors'
    state = tmp_path / 'killed.safetensors.fitting.safetensors'
    process = subprocess.Popen(_fit(straight_run, photos, killed), cwd=REPO_ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not killed.exists(), 'the fit finished before it could be killed'
    result = _run(_fit(straight_run, photos, killed))
    assert 'resumed' in result.stdout
    assert torch.equal(load_identity_embedding(killed)[0], fitted)
    again = _run(_fit(straight_run, photos, killed))
    assert 'exists: kept' in again.stdout
