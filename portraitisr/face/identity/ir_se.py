"""facexlib's ArcFace IR-SE50 (``recognition_arcface_ir_se50.pth``), with its checkpoint key layout.

The layout is the one of ``facexlib.recognition.arcface_arch.Backbone(num_layers=50, drop_ratio=0.6,
mode='ir_se')`` (itself from TreB1eN's InsightFace_Pytorch): ``input_layer`` (conv 3x3, BN, PReLU),
``body.N`` units with ``shortcut_layer`` (``MaxPool2d(1, stride)`` when the width is unchanged, else conv 1x1 + BN)
and ``res_layer`` = ``[BN, conv 3x3, PReLU, conv 3x3 (stride), BN, SE]`` where SE is ``fc1``/``fc2`` 1x1 convs
without bias (reduction 16); ``output_layer`` = ``[BN2d, Dropout, Flatten, Linear(512*7*7, 512), BatchNorm1d]``.
The reference returns the L2-normalised output.

Input: 112x112 RGB, ``(x - 0.5) / 0.5``. facexlib ships no preprocessing of its own for this model; this is the
normalisation of the network's training code (InsightFace_Pytorch's ``Normalize([0.5]*3, [0.5]*3)`` on RGB images).

The stage builder here is shared with the AdaFace/CVLFace IR backbones (same ``input_layer``/``body``/
``output_layer`` naming) in :mod:`.iresnet`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from portraitisr.registry import IDENTITY_EXTRACTORS
from .base_extractor import BaseIdentityExtractor

__all__ = ['ArcFaceIRSE', 'IRUnit', 'SEModule', 'ir_stage_plan', 'build_ir_body']

# Units per stage; the stage widths are 64, 128, 256, 512 and each stage starts with stride 2.
IR_STAGE_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class SEModule(nn.Module):
    """Squeeze-excitation with 1x1 convolutions (``fc1``, ``fc2``, no bias)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IRUnit(nn.Module):
    """One improved-residual unit: ``res_layer(x) + shortcut_layer(x)``.

    ``variant='ir_se'`` (facexlib / InsightFace_Pytorch): BN, conv, PReLU, conv(stride), BN, SE.
    ``variant='ir'`` (AdaFace / CVLFace ``BasicBlockIR``): BN, conv, BN, PReLU, conv(stride), BN.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, variant: str = 'ir_se') -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        conv1 = nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False)
        conv2 = nn.Conv2d(depth, depth, 3, stride, 1, bias=False)
        if variant == 'ir_se':
            layers = [nn.BatchNorm2d(in_channel), conv1, nn.PReLU(depth), conv2, nn.BatchNorm2d(depth),
                      SEModule(depth, 16)]
        elif variant == 'ir':
            layers = [nn.BatchNorm2d(in_channel), conv1, nn.BatchNorm2d(depth), nn.PReLU(depth), conv2,
                      nn.BatchNorm2d(depth)]
        else:
            raise ValueError(f"variant must be 'ir_se' or 'ir', got {variant!r}")
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_stage_plan(num_layers: int) -> list[tuple[int, int, int]]:
    """(in_channel, depth, stride) of every unit of an IR backbone with ``num_layers`` layers."""
    if num_layers not in IR_STAGE_UNITS:
        raise ValueError(f'num_layers must be one of {sorted(IR_STAGE_UNITS)}, got {num_layers}')
    plan, in_channel = [], 64
    for depth, units in zip((64, 128, 256, 512), IR_STAGE_UNITS[num_layers]):
        plan.append((in_channel, depth, 2))
        plan += [(depth, depth, 1)] * (units - 1)
        in_channel = depth
    return plan


def build_ir_body(num_layers: int, variant: str) -> nn.Sequential:
    return nn.Sequential(*[IRUnit(i, d, s, variant) for i, d, s in ir_stage_plan(num_layers)])


@IDENTITY_EXTRACTORS.register_module()
class ArcFaceIRSE(BaseIdentityExtractor):
    """ArcFace IR-SE (facexlib's ``recognition_arcface_ir_se50.pth`` with the defaults).

    Args:
        num_layers: 50 (the released facexlib model), 100 or 152.
        drop_ratio: dropout before the linear layer (inactive: the model is always in eval mode).
        weights: a weight spec for :func:`~portraitisr.weights.resolve_file`, e.g.
            ``'recognition_arcface_ir_se50.pth'`` (looked up in ``PORTRAITISR_HOME``, the torch hub cache and
            facexlib's ``weights`` folder). ``None``: random weights (tests).
        antialias: antialias when resizing larger crops down to 112.
    """

    input_size = 112
    embedding_dim = 512
    # TreB1eN InsightFace_Pytorch (whose Backbone facexlib ships): ``config.py`` sets ``conf.threshold = 1.5`` for
    # inference and ``Learner.infer`` compares it with the *squared* euclidean distance of the L2-normalised
    # embeddings (``face_verify.py`` defaults to 1.54). For unit vectors ``d**2 = 2 - 2 cos``, so 1.5 is cosine
    # 1 - 1.5 / 2 = 0.25 (1.54 would be 0.23).
    verification_threshold = 0.25
    verification_source = 'InsightFace_Pytorch (TreB1eN): squared distance 1.5 of unit embeddings, cosine 0.25'

    def __init__(self, num_layers: int = 50, drop_ratio: float = 0.6, weights: Any = None,
                 antialias: bool = True) -> None:
        super().__init__(antialias=antialias)
        if num_layers not in (50, 100, 152):
            raise ValueError(f'facexlib IR-SE backbones have 50, 100 or 152 layers, got {num_layers}')
        self.num_layers = num_layers
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = build_ir_body(num_layers, 'ir_se')
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))
        self._finish_init(weights)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        return (self.resize(faces) - 0.5) / 0.5

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))

