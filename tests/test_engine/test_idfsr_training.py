"""IDFSR end to end through tools/ on CPU: the tiny config trains and resumes exactly (tools/train.py --resume),
tests (tools/test.py), and a person's identity is fitted by tools/fit_identity.py, which resumes exactly after being
killed and leaves every network tensor untouched."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from portraitisr.models.conditioning import load_identity_embedding
from tests.helpers.data_files import REPO_ROOT

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


def test_portrait_restorer_restores_aligned_faces_with_a_fitted_identity(straight_run, tmp_path):
    from portraitisr.apis import PortraitRestorer
    from portraitisr.datasets import IdentityFaceDataset
    from portraitisr.models.conditioning import save_identity_embedding

    restorer = PortraitRestorer(TINY, checkpoint=str(straight_run / 'iter_4.pth'), device='cpu', scale=8,
                                cfg_options={'model.sample_steps': 2})
    item = IdentityFaceDataset(manifest='sample://portraits', size=64, scale=8, ref_choice='next')[0]
    lq = item['lq'][None]  # an FFHQ-aligned 8 x 8 LR face
    plain = restorer.restore_tensor(lq)
    assert plain.shape == (1, 3, 64, 64) and torch.equal(plain, restorer.restore_tensor(lq))
    identity = torch.nn.functional.normalize(torch.randn(128), dim=0)
    save_identity_embedding(tmp_path / 'person.safetensors', identity)
    restorer.set_identity(tmp_path / 'person.safetensors')
    fitted = restorer.restore_tensor(lq)
    upscaled = torch.nn.functional.interpolate(lq, size=(64, 64), mode='bicubic', align_corners=False).clamp(0, 1)
    expected = restorer.model.restore(upscaled, identity=identity)
    assert torch.equal(fitted, expected.clamp(0, 1)) and not torch.equal(fitted, plain)
    restorer.set_identity(None)  # back to the reference-free identity of the LR itself
    assert torch.equal(restorer.restore_tensor(lq), plain)


def test_cli_restores_with_an_identity_file_and_refuses_bad_ones(straight_run, tmp_path, capsys):
    from portraitisr import cli
    from portraitisr.apis import PortraitRestorer
    from portraitisr.datasets import IdentityFaceDataset
    from portraitisr.models.conditioning import save_identity_embedding

    item = IdentityFaceDataset(manifest='sample://portraits', size=64, scale=8, ref_choice='next')[0]
    lr = (item['lq'].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(lr).save(tmp_path / 'face.png')
    identity = torch.nn.functional.normalize(torch.randn(128), dim=0)
    save_identity_embedding(tmp_path / 'person.safetensors', identity)
    common = [str(tmp_path / 'face.png'), '--config', TINY, '--checkpoint', str(straight_run / 'iter_4.pth'),
              '--scale', '8', '--device', 'cpu']
    assert cli.main(['restore', *common, '-o', str(tmp_path / 'out'), '--identity',
                     str(tmp_path / 'person.safetensors')]) == 0
    restored = np.asarray(Image.open(tmp_path / 'out' / 'face.png'))
    restorer = PortraitRestorer(TINY, checkpoint=str(straight_run / 'iter_4.pth'), device='cpu', scale=8)
    restorer.set_identity(tmp_path / 'person.safetensors')
    expected = restorer.restore_file(tmp_path / 'face.png', tmp_path / 'api.png')
    assert np.array_equal(restored, np.asarray(Image.open(expected)))
    capsys.readouterr()  # the progress bar of the run above

    (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
    save_identity_embedding(tmp_path / 'wide.safetensors', torch.nn.functional.normalize(torch.randn(512), dim=0))
    no_identity = tmp_path / 'no_identity.py'
    no_identity.write_text(f"_base_ = [{str(REPO_ROOT / TINY)!r}]\n"
                           "model = dict(identity_embedder=None, unet=dict(attention='self'))\n")
    for config, identity, message in (
            (TINY, 'junk.safetensors', 'is not a safetensors file'),
            (TINY, 'wide.safetensors', 'the identity has 512 channels, the model takes 128'),
            (TINY, 'missing.safetensors', 'identity embedding .*missing.safetensors does not exist'),
            (str(no_identity), 'person.safetensors', 'IDFSR takes no identity embedding')):
        argv = [str(tmp_path / 'face.png'), '--config', config, '--scale', '8', '--device', 'cpu',
                '-o', str(tmp_path / 'refused'), '--identity', str(tmp_path / identity)]
        assert cli.main(['restore', *argv]) == 2
        # one line of error; an untrained model (no --checkpoint here) adds its own 'note:' line first
        error = '\n'.join(line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith('note:'))
        assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert not (tmp_path / 'refused').exists()


def test_fit_identity_refuses_bad_checkpoints_and_models_without_identity(straight_run, photos, tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    no_identity = tmp_path / 'no_identity.py'
    no_identity.write_text(f"_base_ = [{str(REPO_ROOT / TINY)!r}]\n"
                           "model = dict(identity_embedder=None, unet=dict(attention='self'))\n")
    for config, checkpoint, message in (
            (TINY, junk, 'junk.pth is not a readable torch checkpoint'),
            (TINY, tmp_path / 'missing.pth', 'missing.pth does not exist'),
            (no_identity, straight_run / 'iter_4.pth', 'IDFSR of .*no_identity.py has no identity embedding to fit')):
        result = subprocess.run([sys.executable, 'tools/fit_identity.py', str(photos), '--config', str(config),
                                 '--checkpoint', str(checkpoint), '-o', str(tmp_path / 'person.safetensors')],
                                cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 1 and re.search(f'fit_identity: .*{message}', result.stderr), result.stderr
    assert not (tmp_path / 'person.safetensors').exists()
