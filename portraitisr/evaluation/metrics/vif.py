"""Visual Information Fidelity (Sheikh & Bovik, "Image information and visual quality", IEEE TIP 15(2), 2006).

VIF is the ratio of the information the visual system can extract from the distorted image to the information it
can extract from the reference, summed over subbands. The reference ``C`` is modelled as a Gaussian scale mixture,
the distortion as a local gain ``g`` plus additive noise of variance ``sigma_v^2`` (``D = g C + V``), and the visual
system adds noise of variance ``sigma_n^2`` to both. For a coefficient with local variance ``sigma_c^2`` the two
mutual informations are::

    I(C; F) = 1/2 log2(1 + g^2 sigma_c^2 / (sigma_v^2 + sigma_n^2))
    I(C; E) = 1/2 log2(1 + sigma_c^2 / sigma_n^2)

This module computes the pixel-domain, multi-scale form ("VIFp") that the authors released beside the wavelet form
(LIVE's ``vifp_mscale.m``) and that face-SR papers report: four scales, a Gaussian window of ``N = 2^(5-s) + 1``
pixels (17, 9, 5, 3) with standard deviation ``N / 5``; before scales 2-4 the image is low-pass filtered with that
scale's window and subsampled by 2; the local statistics are window-weighted means over 'valid' positions;
``sigma_n^2 = 2`` on 8-bit levels [0, 255]. The local estimates (least squares of ``D`` on ``C``): ``g = sigma_cd /
sigma_c^2``, ``sigma_v^2 = sigma_d^2 - g sigma_cd``; where the reference has no variance, the gain is 0 and all the
distorted variance is noise; where the distorted image has none, gain and noise are 0; a negative gain is set to 0
with all the distorted variance as noise; the noise variance is at least 1e-10. The ratio makes the base of the
logarithm and the 1/2 irrelevant (base 10 is used, as the released code).

Which VIF PortraitSR (AAAI 2026, Table 5) reports is not stated in the paper. We take VIFp on the BT.601 Y channel
of 8-bit images: see docs/evaluation.md ("VIF") for the evidence and the uncertainty. ``channel='gray'`` uses the
luma of MATLAB's ``rgb2gray`` / pyiqa's YIQ instead, ``'rgb'`` the mean of the three channels' VIFp.

pyiqa's ``vif`` is the *wavelet* form (steerable pyramid, ``vifvec``): a different number, see docs/evaluation.md.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.registry import METRICS
from .base_metric import ImageMetric
from .psnr import crop_borders, rgb_to_y

#: sigma_n^2, the variance of the visual noise on [0, 255] levels (LIVE's vifp_mscale.m)
VISUAL_NOISE_VARIANCE = 2.0
_NUM_SCALES = 4
_EPS = 1e-10
#: luma of MATLAB's rgb2gray (ITU-R BT.601 weights, no offset), which pyiqa's YIQ Y rounds to the same levels
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: the smallest side that leaves a 3x3 window at the fourth scale (17 -> 9 -> 5 -> 3 'valid' windows, /2 between)
MIN_SIZE = 41
CHANNELS = ('y', 'gray', 'rgb')


def _gaussian_taps(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1-D taps whose outer product is MATLAB ``fspecial('gaussian', size, size / 5)`` (summing to 1).

    fspecial also zeroes taps below ``eps * max``; with a standard deviation of ``size / 5`` the smallest (corner)
    tap is ``exp(-5.5)`` of the largest for every size, so that never happens and the window is separable."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-coords**2 / (2 * (size / 5)**2))
    return taps / taps.sum()


def _filter_valid(images: Tensor, taps: Tensor) -> Tensor:
    """``filter2(window, image, 'valid')`` on every channel of ``B x C x H x W`` (symmetric window: correlation),
    as two 1-D passes."""
    channels, size = images.shape[1], taps.numel()
    rows = F.conv2d(images, taps.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(rows, taps.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def vif_pixel_terms(reference: Tensor, distorted: Tensor,
                    sigma_nsq: float = VISUAL_NOISE_VARIANCE) -> List[tuple]:
    """Per-scale ``(numerator, denominator)`` sums, each ``B`` float64, of ``B x 1 x H x W`` images on [0, 255]."""
    if reference.shape != distorted.shape or reference.ndim != 4 or reference.shape[1] != 1:
        raise ValueError(f'VIF compares two B x 1 x H x W images of one size, got {tuple(reference.shape)} and '
                         f'{tuple(distorted.shape)}')
    if min(reference.shape[-2:]) < MIN_SIZE:
        raise ValueError(f'VIF needs images of at least {MIN_SIZE}x{MIN_SIZE} (four scales), got '
                         f'{tuple(reference.shape[-2:])}')
    ref, dist = reference.double(), distorted.double()
    terms = []
    for scale in range(1, _NUM_SCALES + 1):
        taps = _gaussian_taps(2**(_NUM_SCALES - scale + 1) + 1, ref.dtype, ref.device)
        if scale > 1:  # low-pass with this scale's window, then keep every second sample (MATLAB 1:2:end)
            ref, dist = _filter_valid(torch.cat([ref, dist], dim=1), taps)[..., ::2, ::2].chunk(2, dim=1)
        mu_r, mu_d, sq_r, sq_d, prod = _filter_valid(
            torch.cat([ref, dist, ref * ref, dist * dist, ref * dist], dim=1), taps).chunk(5, dim=1)
        var_r = (sq_r - mu_r * mu_r).clamp_min(0)
        var_d = (sq_d - mu_d * mu_d).clamp_min(0)
        cov = prod - mu_r * mu_d

        gain = cov / (var_r + _EPS)
        noise = var_d - gain * cov
        flat_ref = var_r < _EPS  # no reference signal: no gain, the distorted variance is all noise
        gain = torch.where(flat_ref, torch.zeros_like(gain), gain)
        noise = torch.where(flat_ref, var_d, noise)
        var_r = torch.where(flat_ref, torch.zeros_like(var_r), var_r)
        flat_dist = var_d < _EPS  # nothing left in the distorted image: no gain, no noise
        gain = torch.where(flat_dist, torch.zeros_like(gain), gain)
        noise = torch.where(flat_dist, torch.zeros_like(noise), noise)
        negative = gain < 0  # a contrast inversion is treated as pure noise
        noise = torch.where(negative, var_d, noise)
        gain = gain.clamp_min(0)
        noise = noise.clamp_min(_EPS)

        numerator = torch.log10(1 + gain * gain * var_r / (noise + sigma_nsq)).flatten(1).sum(1)
        denominator = torch.log10(1 + var_r / sigma_nsq).flatten(1).sum(1)
        terms.append((numerator, denominator))
    return terms


def vif_pixel(reference: Tensor, distorted: Tensor, sigma_nsq: float = VISUAL_NOISE_VARIANCE) -> Tensor:
    """VIFp of ``B x 1 x H x W`` images on [0, 255] (float64 ``B``): 1 for identical images, below 1 for a loss of
    information, above 1 for contrast enhancement. A flat reference (no information) gives NaN."""
    terms = vif_pixel_terms(reference, distorted, sigma_nsq)
    return sum(n for n, _ in terms) / sum(d for _, d in terms)


def to_vif_channels(images: Tensor, channel: str = 'y') -> Tensor:
    """``B x 3 x H x W`` RGB in [0, 1] -> ``B x C x H x W`` on [0, 255] as an 8-bit image's channel is read:
    ``'y'``: BT.601 YCbCr luma in [16, 235], rounded (MATLAB ``rgb2ycbcr`` on uint8); ``'gray'``: ``rgb2gray``
    luma, rounded; ``'rgb'``: the three channels."""
    if channel not in CHANNELS:
        raise ValueError(f'unknown VIF channel {channel!r}; choose from {", ".join(CHANNELS)}')
    images = images.double()
    if channel == 'y':
        return torch.round(rgb_to_y(images) * 255)
    if channel == 'gray':
        weights = images.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
        return torch.round((images * weights).sum(dim=1, keepdim=True) * 255)
    return images * 255


def vif(pred: Tensor, target: Tensor, channel: str = 'y', crop_border: int = 0,
        sigma_nsq: float = VISUAL_NOISE_VARIANCE) -> Tensor:
    """Per-image VIFp (``B`` float64) of ``pred`` against the reference ``target``, ``B x 3 x H x W`` in [0, 1];
    with ``channel='rgb'`` the mean over the three channels (sewar's ``vifp`` on an RGB array)."""
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f'VIF compares two B x 3 x H x W images of one size, got {tuple(pred.shape)} and '
                         f'{tuple(target.shape)}')
    pred = crop_borders(to_vif_channels(pred, channel), crop_border)
    target = crop_borders(to_vif_channels(target, channel), crop_border)
    scores = [vif_pixel(target[:, c:c + 1], pred[:, c:c + 1], sigma_nsq) for c in range(pred.shape[1])]
    return torch.stack(scores).mean(0)


@METRICS.register_module()
class VIF(ImageMetric):
    """Pixel-domain Visual Information Fidelity (VIFp), higher is better; 1 for a perfect copy.

    Args:
        channel: ``'y'`` (BT.601 Y of 8-bit images, default; reported as ``VIF``), ``'gray'`` (``VIF_gray``) or
            ``'rgb'`` (mean over channels, ``VIF_RGB``).
        crop_border: pixels cut from each border before comparing.
        quantize: round predictions to 8-bit levels first, as if saved as PNG.
        prefix: metric-name prefix (e.g. the test-set name).
    """

    lower_better = False

    def __init__(self, channel: str = 'y', crop_border: int = 0, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        if channel not in CHANNELS:
            raise ValueError(f'unknown VIF channel {channel!r}; choose from {", ".join(CHANNELS)}')
        self.channel, self.crop_border = channel, crop_border
        self.metric_name = {'y': 'VIF', 'gray': 'VIF_gray', 'rgb': 'VIF_RGB'}[channel]

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        return vif(pred, gt, self.channel, self.crop_border)
