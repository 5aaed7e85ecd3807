"""Restorers without weights: for tests of the blending machinery and as the trivial baselines."""
import torch.nn.functional as F
from torch import Tensor

from portraitisr.registry import RESTORERS
from .base_restorer import BaseImageRestorer


@RESTORERS.register_module()
class BicubicRestorer(BaseImageRestorer):
    """Bicubic upscaling by ``scale`` (antialiased when shrinking is never needed: scale >= 1)."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f'scale must be >= 1, got {scale}')
        self.scale = int(scale)

    def restore(self, image: Tensor) -> Tensor:
        if self.scale == 1:
            return image
        return F.interpolate(image, scale_factor=self.scale, mode='bicubic', align_corners=False)


@RESTORERS.register_module()
class IdentityFaceRestorer(BaseImageRestorer):
    """Returns the aligned face unchanged: blending with it must reproduce the background image."""

    def __init__(self, face_size: int = 512) -> None:
        super().__init__()
        self.face_size = int(face_size)

    def restore(self, image: Tensor) -> Tensor:
        return image
