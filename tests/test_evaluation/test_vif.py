"""VIF (pixel-domain VIFp, Sheikh & Bovik 2006): parity with sewar's vifp (a transcription of LIVE's
vifp_mscale.m) on real photos, the properties the paper gives VIF, and the metric's use by the runner and presets."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sewar.full_ref import vifp
from skimage import data

from portraitisr.evaluation.metric_presets import metric_config
from portraitisr.evaluation.metrics import VIF, quantize_8bit, vif, vif_pixel
from portraitisr.evaluation.metrics.vif import MIN_SIZE, to_vif_channels
from portraitisr.registry import METRICS
from portraitisr.utils.image_io import image_to_tensor, read_image
from tests.helpers.data_files import require_test_data

# measured: largest relative difference from sewar 6.1e-11 over these pairs (float64 both; summation order differs)
RTOL = 1e-9


def _photo(name: str) -> torch.Tensor:
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255


def _distortions(reference: torch.Tensor) -> dict:
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.05, reference.shape))
    blurred = F.avg_pool2d(F.pad(reference, (2, 2, 2, 2), mode='reflect'), 5, stride=1)
    down = F.interpolate(reference, scale_factor=0.125, mode='bicubic', antialias=True)
    return {'noise': quantize_8bit(reference + noise), 'blur': quantize_8bit(blurred),
            'bicubic_x8': quantize_8bit(F.interpolate(down, size=reference.shape[-2:], mode='bicubic'))}


def _sewar(reference: torch.Tensor, distorted: torch.Tensor, channel: str) -> float:
    ref, dist = to_vif_channels(reference, channel)[0], to_vif_channels(distorted, channel)[0]
    return vifp(ref.permute(1, 2, 0).numpy(), dist.permute(1, 2, 0).numpy())


@pytest.mark.parametrize('name', ['astronaut', 'camera'])
def test_matches_sewar_on_distorted_photos(name):
    reference = _photo(name)[..., 96:224, 160:288]
    for kind, distorted in _distortions(reference).items():
        for channel in ('y', 'gray', 'rgb'):
            ours = vif(distorted, reference, channel).item()
            assert ours == pytest.approx(_sewar(reference, distorted, channel), rel=RTOL), (kind, channel)


def test_matches_sewar_on_real_sr_results():
    root = require_test_data('osediff_bench') / 'realsr'
    names = sorted(p.name for p in (root / 'sr').iterdir())[:2]
    for name in names:
        sr = image_to_tensor(read_image(root / 'sr' / name).rgb).double()
        hr = image_to_tensor(read_image(root / 'hr' / name).rgb).double()
        ours = vif(sr, hr).item()
        assert ours == pytest.approx(_sewar(hr, sr, 'y'), rel=RTOL)
        assert 0.05 < ours < 0.95  # a real SR result: information lost, far from none


def test_vif_properties_from_the_paper():
    y = to_vif_channels(_photo('camera')[..., 100:228, 100:228]) * 0.5 + 64  # a low-contrast reference
    # a perfect copy keeps all the information (1 up to the 1e-10 noise floor of the released code)
    assert vif_pixel(y, y).item() == pytest.approx(1.0, abs=1e-9)
    # unlike PSNR/SSIM, VIF exceeds 1 for a contrast stretch without clipping (the paper's enhancement case)
    stretched = (y - y.mean()) * 1.5 + y.mean()
    assert stretched.min() >= 0 and stretched.max() <= 255
    assert vif_pixel(y, stretched).item() > 1.0
    # more noise, less information: strictly decreasing
    scores = [vif_pixel(y, y + torch.from_numpy(np.random.default_rng(1).normal(0, s, y.shape))).item()
              for s in (2, 8, 32)]
    assert scores[0] > scores[1] > scores[2]
    # the order matters: the first argument is the reference
    blurred = F.avg_pool2d(F.pad(y, (3, 3, 3, 3), mode='reflect'), 7, stride=1)
    assert vif_pixel(y, blurred).item() != pytest.approx(vif_pixel(blurred, y).item(), rel=1e-3)


def test_bad_input_is_refused_clearly():
    image = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=f'at least {MIN_SIZE}x{MIN_SIZE}'):
        vif(image[..., :40, :40], image[..., :40, :40])
    with pytest.raises(ValueError, match='one size'):
        vif(image, image[..., :48])
    with pytest.raises(ValueError, match='unknown VIF channel'):
        VIF(channel='lab')
    vif(image[..., :MIN_SIZE, :MIN_SIZE], image[..., :MIN_SIZE, :MIN_SIZE])  # the smallest size works


def test_metric_in_the_runner_and_the_presets():
    reference = _photo('astronaut')[..., :96, :96].float()
    distorted = _distortions(reference.double())['blur'].float()
    metric = METRICS.build(dict(type='VIF', prefix='CelebA'))
    metric.process(None, [dict(pred=distorted[0], gt=reference[0]), dict(pred=reference[0], gt=reference[0])])
    result = metric.evaluate(2)
    expected = (vif(distorted, reference).item() + vif(reference, reference).item()) / 2
    assert set(result) == {'CelebA/VIF'} and result['CelebA/VIF'] == pytest.approx(expected, rel=1e-12)
    assert metric_config('vif') == dict(type='VIF')
    assert METRICS.build(metric_config('vif_rgb')).metric_name == 'VIF_RGB'
    assert METRICS.build(metric_config('vif_gray')).metric_name == 'VIF_gray'
