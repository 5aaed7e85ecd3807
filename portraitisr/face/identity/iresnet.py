"""ArcFace IResNet (insightface ``arcface_torch``) and the AdaFace / CVLFace IR backbones.

:class:`ArcFaceIResNet` keeps the key layout of insightface's ``recognition/arcface_torch/backbones/iresnet.py``:
``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of ``IBasicBlock`` (``bn1``, ``conv1``, ``bn2``, ``prelu``, ``conv2``
(stride), ``bn3``, ``downsample.0`` conv 1x1 / ``downsample.1`` BN on the first block of every stage), ``bn2``,
``dropout``, ``fc`` (512*7*7 -> 512) and ``features`` (``BatchNorm1d``). The reference output is not normalised;
here it is L2-normalised. Input as in ``arcface_torch/inference.py``: 112x112 RGB, ``(x - 0.5) / 0.5``.

:class:`AdaFaceIR` keeps the layout of mk-minchul/AdaFace ``net.py`` and CVLFace ``models/iresnet/model.py``
(``Backbone(input_size=(112, 112), num_layers, mode='ir')``): ``input_layer`` (conv, BN, PReLU), ``body.N`` of
``BasicBlockIR`` (``shortcut_layer``: ``MaxPool2d(1, stride)`` or conv 1x1 + BN; ``res_layer``: BN, conv, BN, PReLU,
conv (stride), BN) and ``output_layer`` = ``[BN2d, Dropout(0.4), Flatten, Linear(512*7*7, 512),
BatchNorm1d(512, affine=False)]``. Both IR families compute the same unit (pre-activation BN, conv, BN, PReLU, conv,
BN + shortcut); they differ in the names, the first shortcut (max-pool vs. conv) and the final BatchNorm.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from portraitisr.registry import IDENTITY_EXTRACTORS
from .base_extractor import BaseIdentityExtractor
from .ir_se import Flatten, build_ir_body

__all__ = ['IBasicBlock', 'ArcFaceIResNet', 'AdaFaceIR', 'IRESNET_LAYERS']

#: blocks per stage of insightface's iresnet18/34/50/100/200
IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """insightface's improved basic block: BN, conv, BN, PReLU, conv (stride), BN, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


@IDENTITY_EXTRACTORS.register_module()
class ArcFaceIResNet(BaseIdentityExtractor):
    """insightface ArcFace IResNet r18 / r34 / r50 / r100 / r200 (``backbone.pth`` of ``arcface_torch``).

    Args:
        depth: 18, 34, 50, 100 or 200.
        weights: weight spec for :func:`~portraitisr.weights.resolve_file` (e.g. the path of
            ``ms1mv3_arcface_r50_fp16/backbone.pth``); ``None``: random weights (tests).
        num_features: embedding length (512 for the released models).
        dropout: dropout before ``fc`` (inactive: the model is always in eval mode).
        antialias: antialias when resizing larger crops down to 112.
    """

    input_size = 112
    # insightface web-demos/src_recognition/main.py, for its IResNet-50 ArcFace model (buffalo_l ``w600k_r50``):
    # cosine < 0.2 "NOT the same person", 0.2-0.28 "LIKELY TO be the same person", >= 0.28 "ARE the same person".
    # The ArcFace paper (Deng et al., CVPR 2019) publishes no fixed threshold (LFW accuracy uses 10-fold chosen
    # ones). 0.28 is a verification threshold: a dataset builder wanting only clear pairs may pass a higher one.
    verification_threshold = 0.28
    verification_source = "insightface's recognition demo (web-demos/src_recognition): cosine >= 0.28"

    def __init__(self, depth: int = 50, weights: Any = None, num_features: int = 512, dropout: float = 0.0,
                 antialias: bool = True) -> None:
        super().__init__(antialias=antialias)
        if depth not in IRESNET_LAYERS:
            raise ValueError(f'depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}')
        self.depth = depth
        self.embedding_dim = num_features
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), IRESNET_LAYERS[depth]), start=1):
            # Every stage starts with stride 2, so its first block always has a downsample.
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
            layers = [IBasicBlock(inplanes, planes, 2, downsample)]
            layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f'layer{index}', nn.Sequential(*layers))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self._finish_init(weights)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        return (self.resize(faces) - 0.5) / 0.5

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


@IDENTITY_EXTRACTORS.register_module()
class AdaFaceIR(BaseIdentityExtractor):
    """AdaFace IR-18/34/50/101 backbones (mk-minchul/AdaFace ``.ckpt`` and CVLFace ``model.safetensors``).

    Args:
        depth: 18, 34, 50 or 100 (AdaFace calls the 100-layer net ``ir_101``; ``101`` is accepted too).
        weights: weight spec. AdaFace's Lightning ``.ckpt`` (tensors under ``state_dict`` with a ``model.`` prefix
            and a ``head.`` margin head, dropped) and CVLFace's ``model.safetensors`` (prefix ``net.`` or
            ``model.net.``, removed) both load. ``None``: random weights (tests).
        channel_order: ``'BGR'`` for mk-minchul/AdaFace checkpoints (its ``inference.py`` feeds BGR,
            ``((x[..., ::-1] / 255) - 0.5) / 0.5``), ``'RGB'`` for models trained on RGB (CVLFace configs with
            ``color_space: RGB``). Check the model card of a CVLFace checkpoint: a ``color_space: BGR`` config means
            its wrapper flips the channels, i.e. use ``'BGR'`` here.
        antialias: antialias when resizing larger crops down to 112.
    """

    input_size = 112
    embedding_dim = 512
    # HeadsUp (arXiv 2510.09924), appendix C "PortraitSR-4K details": "We leverage CVLFace (Kim et al., 2024) to
    # estimate the similarity of face pairs. We exclude face pairs whose similarity is below 0.65." The paper does not
    # say which CVLFace model; the value is used for every AdaFace IR depth. It is the threshold the paper built its
    # reference pairs with, stricter than the 0.3 of CVLFace's own verification demo (apps/verification/verify.py).
    verification_threshold = 0.65
    verification_source = 'HeadsUp (arXiv 2510.09924) appendix C: CVLFace similarity 0.65'

    def __init__(self, depth: int = 50, weights: Any = None, channel_order: str = 'BGR',
                 antialias: bool = True) -> None:
        super().__init__(antialias=antialias)
        depth = 100 if depth == 101 else depth
        if depth not in (18, 34, 50, 100):
            raise ValueError(f'AdaFace IR depth must be 18, 34, 50 or 100 (101), got {depth}')
        if channel_order not in ('RGB', 'BGR'):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.depth = depth
        self.channel_order = channel_order
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = build_ir_body(depth, 'ir')
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=False))
        self._finish_init(weights, prefixes=('model.', 'net.', 'model.net.', 'module.', 'model.model.'),
                          ignore_extra=('head.',))

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        x = self.resize(faces)
        if self.channel_order == 'BGR':
            x = x.flip(1)
        return (x - 0.5) / 0.5

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))
