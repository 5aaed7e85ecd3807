"""PortraitSR (AAAI 2026) as a face restorer for the blending baselines."""
from typing import Any, Optional

from torch import Tensor

from portraitisr.models.face_sr import PortraitSRNet
from portraitisr.registry import RESTORERS
from portraitisr.weights import load_module_weights
from .base_restorer import BaseImageRestorer


@RESTORERS.register_module()
class PortraitSRRestorer(BaseImageRestorer):
    """PortraitSR on aligned ``face_size x face_size`` RGB faces in [0, 1] (``scale`` 1).

    PortraitSR restores a face whose low resolution has already been brought to the output size (the paper's
    16x16/32x32 LR compared at 128x128), which is what a blending baseline hands a face restorer: an aligned crop
    of the (general-SR-upscaled) image. Trained at 128x128, hence the default ``face_size``.

    Args:
        weights: weight spec for the resolver: a checkpoint of :class:`~portraitisr.models.PortraitSR` training
            (its ``generator.`` keys) or a bare :class:`PortraitSRNet` state dict. There is no official release.
        pretrained: ``False`` builds a random network (tests); it must come without ``weights``.
        face_size: side of the aligned crop.
        arch: keyword arguments of :class:`PortraitSRNet` (must match the checkpoint).
    """

    def __init__(self, weights: Optional[Any] = None, pretrained: bool = True, face_size: int = 128,
                 arch: Optional[dict] = None) -> None:
        super().__init__()
        self.net = PortraitSRNet(**(arch or {}))
        self.face_size, self.scale = face_size, 1
        self.weights_path: Optional[str] = None
        if pretrained:
            if weights is None:
                raise ValueError('PortraitSR has no released weights: pass weights=<checkpoint of tools/train.py> '
                                 'or pretrained=False')
            # the restorers' strict loader, with the `generator.` prefix of PortraitSR training checkpoints
            self.weights_path = load_module_weights(self.net, weights,
                                                    prefixes=('generator.', 'generator.module.', 'module.'))
        self._finish_init(pretrained, weights)

    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x S x S`` RGB in [0, 1] -> ``B x 3 x S x S`` RGB, about [0, 1]."""
        param = next(self.net.parameters())
        return self.net.restore(image.to(param.dtype)).to(image.dtype)

    def extra_repr(self) -> str:
        return f'face_size={self.face_size}'
