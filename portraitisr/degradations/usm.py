"""Unsharp masking of the ground truth, as Real-ESRGAN trains on it (BasicSR ``img_process_util.USMSharp``).

``blur = G * I`` with a ``51 x 51`` Gaussian (radius 50 is made odd; OpenCV's automatic sigma, 8.0),
``sharp = clip(I + w (I - blur), 0, 1)``, ``mask = |I - blur| * 255 > threshold``, ``soft = G * mask``,
``out = soft * sharp + (1 - soft) * I``; weight 0.5, threshold 10 (BasicSR defaults; Real-ESRGAN trains its
L1 and perceptual losses on this sharpened GT).
"""
import torch
from torch import Tensor, nn

from .kernels import filter2d

# OpenCV ``getGaussianKernel``: fixed kernels for odd ksize <= 9 when sigma <= 0 (``small_gaussian_tab``;
# the 9-tap entry, in 1/256 units, is checked against cv2 5.0 in the tests).
_OPENCV_SMALL_GAUSSIAN = {
    1: (1., ),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: tuple(v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)),
}


def opencv_gaussian_kernel(ksize: int, sigma: float = 0.0) -> Tensor:
    """``cv2.getGaussianKernel(ksize, sigma)`` as a ``(ksize,)`` float64 tensor.

    ``sigma <= 0`` selects OpenCV's automatic ``0.3 * ((ksize - 1) * 0.5 - 1) + 0.8``.
    """
    if ksize % 2 == 0 or ksize < 1:
        raise ValueError(f'ksize must be a positive odd number, got {ksize}')
    if sigma <= 0 and ksize in _OPENCV_SMALL_GAUSSIAN:
        return torch.tensor(_OPENCV_SMALL_GAUSSIAN[ksize], dtype=torch.float64)
    sigma = sigma if sigma > 0 else ((ksize - 1) * 0.5 - 1) * 0.3 + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) * 0.5
    kernel = torch.exp((-0.5 / (sigma * sigma)) * x * x)
    return kernel * (1. / kernel.sum())


class USMSharp(nn.Module):
    """Batched unsharp masking (BasicSR ``USMSharp``).

    Args:
        radius: blur kernel size, made odd by adding 1 (50 -> 51).
        sigma: Gaussian sigma; 0 selects OpenCV's automatic value (8.0 for 51).
    """

    def __init__(self, radius: int = 50, sigma: float = 0.0) -> None:
        super().__init__()
        if radius % 2 == 0:
            radius += 1
        self.radius = radius
        g = opencv_gaussian_kernel(radius, sigma)
        self.register_buffer('kernel', torch.outer(g, g).float().unsqueeze(0), persistent=False)

    def forward(self, img: Tensor, weight: float = 0.5, threshold: float = 10) -> Tensor:
        """Sharpens ``img``.

        Args:
            img: ``(B, C, H, W)`` in [0, 1].
            weight: strength of the residual added back.
            threshold: minimum ``|I - blur|`` in 8-bit units for a pixel to be sharpened (before the mask is
                blurred into a soft mask).

        Returns:
            ``(B, C, H, W)`` in [0, 1].
        """
        if self.kernel.device != img.device:  # follow the images
            self.to(img.device)
        blur = filter2d(img, self.kernel)
        residual = img - blur
        mask = (torch.abs(residual) * 255 > threshold).to(img.dtype)
        soft_mask = filter2d(mask, self.kernel)
        sharp = torch.clip(img + weight * residual, 0, 1)
        return soft_mask * sharp + (1 - soft_mask) * img

