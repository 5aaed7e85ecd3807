"""PSNR as OSEDiff evaluates it: Y of BT.601 YCbCr (with the +16 offset), no border crop.

OSEDiff's ``test_metrics.py`` uses pyiqa ``psnr`` with ``test_y_channel=True,
color_space='ycbcr'`` on images read with OpenCV as RGB in [0, 1] (shared/fixtures/README.md).
"""
from typing import List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric
from torch import Tensor

from portraitisr.registry import METRICS

# ITU-R BT.601 "studio swing" luma for RGB in [0, 1]: Y in [16, 235] / 255.
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(images: Tensor) -> Tensor:
    """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 1 x H x W`` BT.601 Y in [16/255, 235/255]."""
    weights = images.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return ((images * weights).sum(dim=1, keepdim=True) + 16.0) / 255.0


def psnr(pred: Tensor, target: Tensor, test_y_channel: bool = True, crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB of ``B x 3 x H x W`` images in [0, 1] (data range 1), float64."""
    pred, target = pred.double(), target.double()
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    mse = ((pred - target)**2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


@METRICS.register_module()
class PSNR(BaseMetric):
    """Mean PSNR over a test set.

    Args:
        test_y_channel: Y of YCbCr (OSEDiff, default) or RGB.
        crop_border: pixels cut from each border before comparing.
        quantize: round predictions to 8-bit levels first, as if saved as PNG (the published
            numbers are computed on saved images).
        prefix: metric-name prefix (e.g. the test-set name).
    """

    default_prefix = ''

    def __init__(self, test_y_channel: bool = True, crop_border: int = 0, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.test_y_channel, self.crop_border, self.quantize = test_y_channel, crop_border, quantize

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if sample.get('gt') is None:
                raise KeyError('PSNR needs ground truth: give the test dataset a `gt_root`')
            pred = sample['pred'][None].float()
            if self.quantize:
                pred = torch.round(pred.clamp(0, 1) * 255) / 255
            value = psnr(pred, sample['gt'][None], self.test_y_channel, self.crop_border)
            self.results.append(float(value))

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(PSNR=sum(results) / max(len(results), 1))
