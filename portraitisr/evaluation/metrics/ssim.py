"""SSIM as pyiqa (and OSEDiff's tables) compute it.

pyiqa ``ssim`` (``pyiqa/archs/ssim_arch.py``): the image (Y of YCbCr for OSEDiff, or each RGB channel) is scaled
to [0, 255] and rounded to integers like MATLAB's uint8 input, then compared in float64 with an 11x11 Gaussian
window of sigma 1.5 in 'valid' mode, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, and the contrast-structure map
clipped at 0; the score is the mean of the SSIM map over pixels and channels. kornia's ``metrics.ssim`` has the
same window but neither the rounding nor the clipping, so it does not reproduce published numbers to 1e-4.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel2d
from torch import Tensor

from portraitisr.registry import METRICS
from .base_metric import ImageMetric
from .psnr import crop_borders, rgb_to_y

_WINDOW_SIZE, _WINDOW_SIGMA = 11, 1.5  # Wang et al. 2004, as pyiqa/BasicSR
_K1, _K2 = 0.01, 0.03


def ssim(pred: Tensor, target: Tensor, test_y_channel: bool = True, crop_border: int = 0) -> Tensor:
    """Per-image SSIM (``B`` float64) of ``B x 3 x H x W`` images in [0, 1]; at least 11x11 after cropping."""
    if pred.shape != target.shape:
        raise ValueError(f'SSIM compares images of one size, got {tuple(pred.shape)} and {tuple(target.shape)}')
    pred, target = crop_borders(pred.double(), crop_border), crop_borders(target.double(), crop_border)
    if min(pred.shape[-2:]) < _WINDOW_SIZE:
        raise ValueError(f'SSIM needs images of at least {_WINDOW_SIZE}x{_WINDOW_SIZE}, got {tuple(pred.shape)}')
    if test_y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    x, y = torch.round(pred * 255), torch.round(target * 255)
    channels = x.shape[1]
    window = get_gaussian_kernel2d(_WINDOW_SIZE, (_WINDOW_SIGMA, _WINDOW_SIGMA), dtype=torch.float64,
                                   device=x.device).expand(channels, 1, -1, -1)

    def local_mean(image: Tensor) -> Tensor:
        return F.conv2d(image, window, groups=channels)  # 'valid': no padding

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (_K1 * 255)**2, (_K2 * 255)**2
    contrast_structure = ((2 * cov + c2) / (var_x + var_y + c2)).clamp_min(0)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * contrast_structure).flatten(1).mean(1)


@METRICS.register_module()
class SSIM(ImageMetric):
    """SSIM, higher is better.

    Args:
        test_y_channel: Y of YCbCr (OSEDiff, default; reported as ``SSIM``) or the mean over RGB channels
            (``SSIM_RGB``).
        crop_border: pixels cut from each border before comparing.
        quantize: round predictions to 8-bit levels first, as if saved as PNG.
        prefix: metric-name prefix.
    """

    lower_better = False

    def __init__(self, test_y_channel: bool = True, crop_border: int = 0, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.test_y_channel, self.crop_border = test_y_channel, crop_border
        self.metric_name = 'SSIM' if test_y_channel else 'SSIM_RGB'

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        return ssim(pred, gt, self.test_y_channel, self.crop_border)
