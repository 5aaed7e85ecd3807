"""tools/eval_folders.py: one line per bad image and the rest scored (exit 1), setup errors in one line (exit 2)."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from portraitisr.evaluation.folder_evaluation import build_metrics, evaluate_folders
from portraitisr.utils.image_io import write_image
from tests.helpers.data_files import REPO_ROOT
from tests.helpers.images import png_bomb, smooth_image

TOOL = REPO_ROOT / 'tools' / 'eval_folders.py'


def _folders(tmp_path):
    pred, gt = tmp_path / 'pred', tmp_path / 'gt'
    for index in range(3):
        image = smooth_image(24, 20, index)
        write_image(gt / f'{index}.png', image)
        write_image(pred / f'{index}.png', np.clip(image + 0.02, 0, 1))
    write_image(gt / 'corrupt.png', smooth_image(24, 20, 5))
    (pred / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')
    write_image(gt / 'bomb.png', smooth_image(24, 20, 6))
    png_bomb(pred / 'bomb.png')
    write_image(gt / 'smaller.png', smooth_image(24, 20, 7))
    write_image(pred / 'smaller.png', smooth_image(12, 10, 7))
    return pred, gt


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_bad_images_are_left_out_in_one_line_each(tmp_path):
    pred, gt = _folders(tmp_path)
    out = tmp_path / 'scores.csv'
    result = _run('--pred', pred, '--gt', gt, '--metrics', 'psnr', 'ssim', '--out', out, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith('skipped ')]
    assert len(skipped) == 3
    assert any('bomb.png' in line and 'limit of 134.2 MP' in line for line in skipped)
    assert any('corrupt.png' in line for line in skipped)
    assert any('smaller.png' in line and 'differ in size' in line for line in skipped)
    assert '3 of 6 images scored; 3 left out: bomb.png, corrupt.png, smaller.png' in result.stdout
    with open(out, newline='') as f:
        table = list(csv.DictReader(f))
    assert [row['image'] for row in table] == ['0.png', '1.png', '2.png', 'mean']
    # the good images are scored as if the bad ones were not there
    metrics = build_metrics(['psnr'])
    for name in ('corrupt.png', 'bomb.png', 'smaller.png'):
        (pred / name).unlink()
        (gt / name).unlink()
    clean = evaluate_folders(str(pred), str(gt), metrics, progress=False)
    assert float(table[-1]['psnr']) == round(clean.mean['psnr'], 6)


@pytest.mark.slow  # four runs of the tool, each importing torch and mmengine
def test_setup_errors_exit_2_in_one_line(tmp_path):
    pred, gt = _folders(tmp_path)
    cases = [
        (['--pred', tmp_path / 'missing', '--gt', gt, '--metrics', 'psnr'], 'does not exist'),
        (['--pred', pred, '--gt', gt, '--metrics', 'no_such_metric'], 'unknown metric'),
        (['--pred', pred, '--metrics', 'psnr'], 'compare with ground truth'),
        (['--pred', gt, '--gt', tmp_path, '--metrics', 'psnr'], 'no ground truth'),
    ]
    for args, expected in cases:
        result = _run(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


def test_max_pixels_option(tmp_path):
    pred, gt = tmp_path / 'pred', tmp_path / 'gt'
    write_image(pred / 'a.png', smooth_image(24, 20, 0))
    write_image(gt / 'a.png', smooth_image(24, 20, 0))
    result = _run('--pred', pred, '--gt', gt, '--metrics', 'psnr', '--max-pixels', 400, cwd=tmp_path)
    assert result.returncode == 1 and 'is more than the limit of 400 pixels' in result.stderr
    scores = evaluate_folders(str(pred), str(gt), build_metrics(['psnr']), progress=False, max_pixels=480)
    assert list(scores.rows) == ['a.png'] and not scores.failed  # 24 x 20 = 480 pixels: at the limit is allowed
