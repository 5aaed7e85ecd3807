"""8-bit quantisation of images in [0, 1], shared by the metrics and the dataset builder's scorers."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensor methods only: importing this module does not import torch
    from torch import Tensor

__all__ = ['quantize_8bit']


def quantize_8bit(images: 'Tensor') -> 'Tensor':
    """Round ``[0, 1]`` images (any shape, float) to 8-bit levels, as if saved as PNG (published numbers are
    computed on saved images); values outside [0, 1] are clamped first."""
    return (images.clamp(0, 1) * 255).round() / 255
