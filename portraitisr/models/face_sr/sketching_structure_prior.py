"""Sketching Structure Prior (SSP) of PortraitSR (paper 002, section "Sketching Structure Prior", Eq. 1-3).

Implicit supervision: a parsing decoder ``D_pm`` predicts the parsing map ``P_hat`` from ``F_latent`` (Eq. 1),
supervised by ``L_pm`` (Eq. 12). Explicit modulation: a 3x3 conv on the parsing features ``F_pm`` gives
``gamma, beta`` (Eq. 2) that modulate the first channel half of ``F_latent``; the second half passes unchanged
(Eq. 3).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer_blocks import transformer_stage


class ParsingDecoder(nn.Module):
    """``D_pm``: ``F_latent B x Cl x h x w`` -> ``(F_pm B x Cp x h x w, P_hat B x K x (s*h) x (s*w))``.

    ``F_pm`` stays at the latent size (it modulates the latent); the map is produced by a 3x3 conv to ``K``
    classes, bilinear upsampling by ``upscale`` (8: the image size) and a softmax over classes, so ``P_hat`` is
    a per-pixel class distribution in [0, 1] that an L1 loss can compare with one-hot or soft ground truth.
    """

    def __init__(self, latent_channels: int, parsing_channels: int, num_classes: int, depth: int,
                 num_heads: int, ffn_expansion: float, upscale: int = 8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(latent_channels, parsing_channels, 1, bias=False)
        self.body = transformer_stage(parsing_channels, depth, num_heads, ffn_expansion)
        self.head = nn.Conv2d(parsing_channels, num_classes, 3, padding=1)
        self.upscale = upscale

    def forward(self, latent: Tensor) -> Tuple[Tensor, Tensor]:
        features = self.body(self.proj(latent))
        logits = F.interpolate(self.head(features), scale_factor=self.upscale, mode='bilinear', align_corners=False)
        return features, logits.softmax(dim=1)


class SketchingStructurePrior(nn.Module):
    """SSP: ``F_latent B x C x h x w`` -> ``(F_SSP B x C x h x w, P_hat B x K x H x W)``.

    Args:
        latent_channels: ``C`` of ``F_latent`` (even: it is split into two halves, Eq. 3).
        parsing_channels: width of ``F_pm`` (not given in the paper; default ``C``).
        num_classes: ``K`` parsing classes (19 for CelebAMask-HQ / facexlib parsers).
        depth / num_heads / ffn_expansion: Transformer blocks of ``D_pm`` (not given in the paper).
        gamma_offset: ``F_1' = (gamma_offset + gamma) * F_1 + beta``. The paper writes ``gamma * F_1 + beta``
            (offset 0, the default); 1 gives the identity-at-init SFT variant.
    """

    def __init__(self, latent_channels: int, parsing_channels: int, num_classes: int, depth: int = 1,
                 num_heads: int = 1, ffn_expansion: float = 2.66, upscale: int = 8,
                 gamma_offset: float = 0.0) -> None:
        super().__init__()
        if latent_channels % 2:
            raise ValueError(f'latent_channels must be even (split in halves, Eq. 3), got {latent_channels}')
        self.parsing_decoder = ParsingDecoder(latent_channels, parsing_channels, num_classes, depth, num_heads,
                                              ffn_expansion, upscale)
        # Eq. 2: one 3x3 conv whose output splits into gamma and beta for the modulated half.
        self.modulation = nn.Conv2d(parsing_channels, latent_channels, 3, padding=1)
        self.gamma_offset = gamma_offset

    def forward(self, latent: Tensor) -> Tuple[Tensor, Tensor]:
        features, parsing = self.parsing_decoder(latent)
        gamma, beta = self.modulation(features).chunk(2, dim=1)
        first, second = latent.chunk(2, dim=1)
        modulated = (self.gamma_offset + gamma) * first + beta
        return torch.cat([modulated, second], dim=1), parsing
