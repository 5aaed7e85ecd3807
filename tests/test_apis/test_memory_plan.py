"""The memory plan of ``portraitisr restore``: probed activations, the tiling choice, and an estimate that bounds
the measured peak.

The full-size check (a 6000 x 4000 photo on two CPU cores) takes many minutes and is in
``tools/benchmarks/restore_memory.py``; here the same path runs on a 1024 x 768 photo at x2.
"""
import sys
from pathlib import Path

import pytest

from portraitisr.apis import memory_plan
from portraitisr.apis.memory_plan import (ActivationProfile, MemoryBudgetError, estimate_restore_memory,
                                          parse_memory, plan_tiling)
from tests.helpers.data_files import REPO_ROOT

TINY = ActivationProfile(encode=32.0, unet=1024.0, decode=4096.0, factor=8)


def test_parse_memory():
    assert parse_memory('6G') == parse_memory('6GiB') == 6 * 2**30
    assert parse_memory('6GB') == 6 * 10**9 and parse_memory('800M') == 800 * 2**20
    assert parse_memory('1.5g') == int(1.5 * 2**30) and parse_memory('123456') == 123456
    for bad in ('lots', '-1G', '0', '6 parsecs'):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_probe_measures_the_tiny_models_largest_activations():
    """Per tile pixel, in float32 bytes: the encoder's 8 channels at full resolution (32), the UNet's GEGLU
    feed-forward with 2 x 4 x 32 channels at latent resolution (1024), and the decoder's 16 channels upsampled to
    full resolution, 64 output pixels per latent pixel (4096) - the numbers of configs/_base_/models/tiny_sd.py."""
    from mmengine.config import Config

    from portraitisr.apis.portrait_restorer import without_training_parts
    from portraitisr.registry import MODELS

    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py'))
    model = MODELS.build(without_training_parts(cfg.model)[0]).eval()
    model.enable_fast_inference('float32')  # what PortraitRestorer probes: the merged copy it restores with
    assert memory_plan.probe_activations(model.inference_backbone) == TINY


def test_plan_picks_the_tile_by_size_and_budget():
    small = plan_tiling((100, 120), 4, TINY, budget=None, preferred_tile=256, untiled_up_to=512)
    assert small.tile is None  # a 400 x 480 output runs untiled
    large = plan_tiling((1000, 1500), 4, TINY, budget=None, preferred_tile=256, untiled_up_to=512)
    assert large.tile == 256
    # per output pixel the stored rows and the 8-bit result dominate: 16 MB of output here
    estimate = estimate_restore_memory((1000, 1500), 4, 256, TINY)
    assert estimate.stored == 6 * 4000 * 6000 and estimate.final >= estimate.stored + 3 * 4000 * 6000
    assert estimate.total == estimate.host_total > estimate.stored
    # a budget that 256-pixel tiles exceed but 128-pixel tiles fit: the tile shrinks
    gpu = ActivationProfile(encode=32.0, unet=1024.0, decode=2**20, factor=8)  # a decoder with huge activations
    at = {tile: estimate_restore_memory((1000, 1500), 4, tile, gpu).total for tile in (256, 192, 128)}
    assert at[256] > at[192] > at[128]
    assert plan_tiling((1000, 1500), 4, gpu, budget=at[192], preferred_tile=256).tile == 192
    with pytest.raises(MemoryBudgetError, match=r'restoring 1500x1000 at x4 .* needs about .* with 128-pixel '
                                                r'tiles .* more than the budget of 1\.0 GiB'):
        plan_tiling((1000, 1500), 4, gpu, budget=2**30, preferred_tile=256)


#: Runs in a fresh process: in the test session's own process the allocator reuses memory that earlier tests freed,
#: so the resident peak need not grow at all and the comparison would measure the session, not the restore.
_MEASURE_PEAK = """
import json, sys
import cv2, numpy as np, torch
from portraitisr.apis import memory_plan
from portraitisr.apis.portrait_restorer import PortraitRestorer

def peak():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))

torch.set_num_threads(1)
config, folder = sys.argv[1], sys.argv[2]
restorer = PortraitRestorer(config, device='cpu', scale=2)
photo = cv2.resize(np.random.default_rng(0).random((8, 8, 3), dtype=np.float32), (1024, 768),
                   interpolation=cv2.INTER_CUBIC)
cv2.imwrite(folder + '/photo.jpg', np.rint(photo.clip(0, 1) * 255).astype(np.uint8))
restorer.activation_profile()
plans = []
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset VmHWM to the current resident size
before = memory_plan.process_rss()
restorer.restore_file(folder + '/photo.jpg', folder + '/out.png', on_plan=plans.append)
estimate = plans[0].estimate
print(json.dumps(dict(grown=peak() - before, tile=plans[0].tile, total=estimate.total, base=estimate.base,
                      slack=estimate.slack)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='resets the peak RSS through /proc/self/clear_refs')
def test_estimate_bounds_the_measured_peak(tmp_path):
    """Restore a 1024 x 768 photo at x2 in 256-pixel tiles and compare the growth of the peak resident memory
    (``VmHWM`` after resetting it) with the estimate beyond the process's own memory: the estimate must not be
    below it, nor far above it (measured: 75 MiB grown, 91 MiB estimated plus the fixed slack)."""
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    result = subprocess.run([sys.executable, '-c', _MEASURE_PEAK, str(REPO_ROOT / 'configs' / 'debug' /
                                                                     'osediff_tiny.py'), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    grown, beyond_base = measured['grown'], measured['total'] - measured['base']
    assert measured['tile'] == 256
    assert grown <= beyond_base, measured
    assert beyond_base - measured['slack'] <= 3 * grown + 64 * 2**20, measured
    assert Path(tmp_path / 'out.png').is_file()


def test_gpu_plans_keep_whole_image_group_norm_while_the_host_holds_the_waiting_tiles():
    """On a GPU the tiled VAE runs its tiles in step ('exact' GroupNorm statistics), their activations waiting on
    the host: chosen while the host budget holds them, else per-tile statistics."""
    sd = ActivationProfile(encode=256.0, unet=2048.0, decode=256 * 64 * 2.0, factor=8)  # SD-like widths, bf16
    exact = estimate_restore_memory((1000, 1500), 4, 768, sd, on_gpu=True, exact_group_norm=True)
    per_tile = estimate_restore_memory((1000, 1500), 4, 768, sd, on_gpu=True)
    assert exact.waiting_tiles > 0 == per_tile.waiting_tiles and exact.device_total == per_tile.device_total
    roomy = plan_tiling((1000, 1500), 4, sd, budget=80 * 2**30, preferred_tile=768, host_budget=2 * exact.host_total,
                        on_gpu=True)
    tight = plan_tiling((1000, 1500), 4, sd, budget=80 * 2**30, preferred_tile=768,
                        host_budget=(exact.host_total + per_tile.host_total) // 2, on_gpu=True)
    assert (roomy.tile, roomy.group_norm) == (768, 'exact') and (tight.tile, tight.group_norm) == (768, 'tile')
