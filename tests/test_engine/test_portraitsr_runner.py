"""PortraitSR end to end through tools/: the debug config trains, validates with PSNR and its checkpoint restores."""
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.data_files import REPO_ROOT, require_pypi_weights

TINY = 'configs/debug/portraitsr_tiny.py'


def _run(args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    require_pypi_weights('vgg16.ckpt')
    work_dir = tmp_path_factory.mktemp('portraitsr_tiny')
    log = _run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(work_dir), '--cfg-options',
                'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
                'default_hooks.logger.interval=1',
                'train_dataloader.batch_size=2', 'val_dataloader.dataset.lfw_range=[80,84]'])
    return work_dir, log


def test_tiny_config_trains_without_parsing_and_validates_psnr(tiny_run):
    work_dir, log = tiny_run
    assert 'training without L_pm' in log  # no parsing maps offline: the documented fallback is logged
    assert 'loss_rec' in log and 'loss_perceptual' in log and 'loss_dict' in log
    assert 'PSNR' in log
    checkpoint = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=True)
    keys = list(checkpoint['state_dict'])
    assert keys and all(k.startswith('generator.') for k in keys)  # the frozen VGG is not saved
    assert 'generator.atp.dictionary' in keys and any(k.startswith('generator.rec_encoder.') for k in keys)


def test_bicubic_tool_scores_the_checkpoint(tiny_run):
    work_dir, _ = tiny_run
    out = _run([sys.executable, 'tools/experiments/portraitsr_vs_bicubic.py', TINY, '--checkpoint',
                str(work_dir / 'iter_2.pth')])
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(('bicubic', 'PortraitSR'))}
    assert set(rows) == {'bicubic', 'PortraitSR'}
    bicubic_psnr = float(rows['bicubic'][rows['bicubic'].index('PSNR') + 1])
    assert bicubic_psnr == pytest.approx(_bicubic_psnr_reference(), abs=5e-4)  # printed with 3 decimals


def _bicubic_psnr_reference() -> float:
    """Mean PSNR of bicubic x4 over the debug config's 20 held-out LFW faces, computed here from scratch: torch
    bicubic to 64 x 64 (as the data preprocessor), 8-bit rounding, BT.601 Y with the +16 offset, data range 1."""
    import math

    import torch.nn.functional as F

    from portraitisr.datasets import AlignedFaceDataset
    dataset = AlignedFaceDataset(lfw_range=(80, 100), size=64, scale=4)
    values = []
    for item in (dataset[i] for i in range(len(dataset))):
        up = F.interpolate(item['lq'][None].double(), size=(64, 64), mode='bicubic', align_corners=False)
        pred = torch.round(up.clamp(0, 1) * 255) / 255
        weights = pred.new_tensor([65.481, 128.553, 24.966]).view(3, 1, 1)
        y_pred, y_gt = (((t[0] * weights).sum(0) + 16) / 255 for t in (pred, item['gt'][None].double()))
        values.append(10 * math.log10(1 / float(((y_pred - y_gt) ** 2).mean())))
    return sum(values) / len(values)
