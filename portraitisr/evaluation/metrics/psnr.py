"""PSNR as OSEDiff evaluates it: Y of BT.601 YCbCr (with the +16 offset), no border crop.

OSEDiff's ``test_metrics.py`` uses pyiqa ``psnr`` with ``test_y_channel=True,
color_space='ycbcr'`` on images read with OpenCV as RGB in [0, 1].
"""
from typing import Optional

from torch import Tensor

from portraitisr.registry import METRICS
from .base_metric import ImageMetric

# ITU-R BT.601 "studio swing" luma for RGB in [0, 1]: Y in [16, 235] / 255.
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(images: Tensor) -> Tensor:
    """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 1 x H x W`` BT.601 Y in [16/255, 235/255]."""
    weights = images.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return ((images * weights).sum(dim=1, keepdim=True) + 16.0) / 255.0


def crop_borders(images: Tensor, crop_border: int) -> Tensor:
    """Cut ``crop_border`` pixels from each side of ``... x H x W`` (the SR convention of BasicSR/pyiqa)."""
    if crop_border <= 0:
        return images
    if 2 * crop_border >= min(images.shape[-2:]):
        raise ValueError(f'crop_border {crop_border} leaves nothing of a {tuple(images.shape[-2:])} image')
    return images[..., crop_border:-crop_border, crop_border:-crop_border]


def psnr(pred: Tensor, target: Tensor, test_y_channel: bool = True, crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB of ``B x 3 x H x W`` images in [0, 1] (data range 1), float64."""
    if pred.shape != target.shape:
        raise ValueError(f'PSNR compares images of one size, got {tuple(pred.shape)} and {tuple(target.shape)}')
    pred, target = crop_borders(pred.double(), crop_border), crop_borders(target.double(), crop_border)
    if test_y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    mse = ((pred - target)**2).flatten(1).mean(1)
    return 10 * (1.0 / mse.clamp_min(1e-20)).log10()


@METRICS.register_module()
class PSNR(ImageMetric):
    """PSNR in dB, higher is better.

    Args:
        test_y_channel: Y of YCbCr (OSEDiff, default; reported as ``PSNR``) or RGB (``PSNR_RGB``).
        crop_border: pixels cut from each border before comparing.
        quantize: round predictions to 8-bit levels first, as if saved as PNG.
        prefix: metric-name prefix (e.g. the test-set name).
    """

    lower_better = False

    def __init__(self, test_y_channel: bool = True, crop_border: int = 0, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.test_y_channel, self.crop_border = test_y_channel, crop_border
        self.metric_name = 'PSNR' if test_y_channel else 'PSNR_RGB'

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        return psnr(pred, gt, self.test_y_channel, self.crop_border)
