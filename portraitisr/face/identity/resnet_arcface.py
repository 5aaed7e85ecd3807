"""GFPGAN's 128x128 gray ``ResNetArcFace`` (``arcface_resnet18.pth``), the network of GFPGAN's identity loss and of
DAEFR's IDA metric, with its checkpoint key layout.

Layout (``gfpgan/archs/arcface_arch.py``, ``ResNetArcFace(block='IRBlock', layers=[2, 2, 2, 2], use_se=False)``):
``conv1`` (1 -> 64, 3x3), ``bn1``, ``prelu`` (one shared slope), ``maxpool`` 2x2, ``layer1..4`` of ``IRBlock``
(``bn0``, ``conv1`` (in -> in), ``bn1``, ``prelu`` (one slope, applied after the block body and again after the
sum), ``conv2`` (in -> out, stride), ``bn2``, ``downsample.0`` conv 1x1 / ``downsample.1`` BN where the shape
changes; layer1 has stride 1 and no downsample), ``bn4``, ``dropout``, ``fc5`` (512*8*8 -> 512), ``bn5``
(``BatchNorm1d``). The reference output is not normalised; here it is L2-normalised.

Gray conversion (``gray=``):

* ``'bt601_rgb'``: ``0.2989 R + 0.5870 G + 0.1140 B``, GFPGAN's ``gray_resize_for_identity`` on RGB images,
  computed on RGB values mapped to [-1, 1] (GFPGAN's identity loss feeds its [-1, 1] images), bilinear resize
  with antialias (GFPGAN resizes without it; pass ``antialias=False`` to match its loss exactly).
* ``'daefr_bgr_quirk'``: DAEFR's ``scripts/metrics/cal_identity_distance.py`` reads images with ``cv2.imread``
  (BGR) and applies the same weights to channels 0, 1, 2, i.e. ``0.2989 B + 0.5870 G + 0.1140 R`` - the red and
  blue weights are swapped. It also feeds [0, 1] values (no [-1, 1] normalisation) and resizes with
  ``F.interpolate(bilinear, align_corners=False)`` without antialias. This mode reproduces all three so that
  published IDA numbers can be compared; it is not a correct luminance.

``normalize`` and ``antialias`` default to the choices of each mode and can be overridden.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from portraitisr.registry import IDENTITY_EXTRACTORS
from .base_extractor import BaseIdentityExtractor

__all__ = ['IRBlock', 'ResNetArcFace', 'GRAY_WEIGHTS']

#: weights applied to (channel 0, 1, 2) of an RGB tensor
GRAY_WEIGHTS = {
    'bt601_rgb': (0.2989, 0.5870, 0.1140),
    'daefr_bgr_quirk': (0.1140, 0.5870, 0.2989),  # 0.2989/0.5870/0.1140 applied to B, G, R
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """GFPGAN's IRBlock without squeeze-excitation (``use_se=False``, as in ``arcface_resnet18.pth``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = _conv3x3(inplanes, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(self.bn0(x))))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


@IDENTITY_EXTRACTORS.register_module()
class ResNetArcFace(BaseIdentityExtractor):
    """GFPGAN / DAEFR identity network: 128x128 gray input, 512-D embedding.

    Args:
        weights: weight spec, e.g. ``'arcface_resnet18.pth'``
            (``https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth``); a
            ``module.`` prefix is removed. ``None``: random weights (tests).
        layers: blocks per stage (``[2, 2, 2, 2]`` for the released model).
        gray: ``'bt601_rgb'`` or ``'daefr_bgr_quirk'`` (see the module docstring).
        normalize: map gray values to [-1, 1]; default True for ``bt601_rgb``, False for ``daefr_bgr_quirk``.
        antialias: antialias when resizing down; default True for ``bt601_rgb``, False for ``daefr_bgr_quirk``.
    """

    input_size = 128
    embedding_dim = 512
    # No published value: GFPGAN uses this network only as a loss, DAEFR only as a metric, and the training code it
    # comes from (ronghuaiyang/arcface-pytorch, test.py) searches the best LFW threshold at every evaluation without
    # publishing one. Our choice: no default, so a caller (the dataset builder) must pass a threshold it chose
    # rather than get one from another model's scale.
    verification_threshold = None
    verification_source = ('no published verification threshold (GFPGAN uses it as a loss, DAEFR as a metric; '
                           'arcface-pytorch searches one per LFW evaluation)')

    def __init__(self, weights: Any = None, layers: tuple[int, ...] = (2, 2, 2, 2), gray: str = 'bt601_rgb',
                 normalize: Optional[bool] = None, antialias: Optional[bool] = None) -> None:
        if gray not in GRAY_WEIGHTS:
            raise ValueError(f'gray must be one of {sorted(GRAY_WEIGHTS)}, got {gray!r}')
        quirk = gray == 'daefr_bgr_quirk'
        super().__init__(antialias=(not quirk) if antialias is None else antialias)
        self.gray = gray
        self.normalize = (not quirk) if normalize is None else bool(normalize)
        self.register_buffer('gray_weights', torch.tensor(GRAY_WEIGHTS[gray]).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stride = 1 if index == 1 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            stage = [IRBlock(inplanes, planes, stride, downsample)] + [IRBlock(planes, planes)
                                                                       for _ in range(1, blocks)]
            setattr(self, f'layer{index}', nn.Sequential(*stage))
            inplanes = planes
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, 512)
        self.bn5 = nn.BatchNorm1d(512)
        self._finish_init(weights)

    def to_gray(self, faces: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` RGB -> ``B x 1 x H x W`` with the weights of ``gray``."""
        return (faces * self.gray_weights.to(faces)).sum(dim=1, keepdim=True)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        # As the references: gray of the (normalised) RGB values, then the resize.
        x = (faces - 0.5) / 0.5 if self.normalize else faces
        return self.resize(self.to_gray(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.flatten(1)))
