"""Sketching Structure Prior (SSP) of PortraitSR (AAAI 2026, section "Sketching Structure Prior", Eq. 1-3).

Implicit supervision: a parsing decoder ``D_pm`` predicts the parsing map ``P_hat`` from ``F_latent`` (Eq. 1),
supervised by ``L_pm`` (Eq. 12). Explicit modulation: a 3x3 conv on the parsing features ``F_pm`` gives
``gamma, beta`` (Eq. 2) that modulate the first channel half of ``F_latent``; the second half passes unchanged
(Eq. 3).

The ablations of the paper's Table 3 ("Effectiveness of Sketching Structure Prior") keep the parsing decoder and its
supervision ("PM") and replace the explicit modulation by other ways of injecting ``F_pm``: see ``FUSIONS``.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer_blocks import transformer_stage

#: How ``F_pm`` enters ``F_latent`` (Table 3 columns). ``'ssp'``: Eq. 2-3 (the paper's SSP). ``'supervision'``:
#: not at all, only ``L_pm`` on ``P_hat`` shapes the shared encoder ("PM supervision"). ``'attention'`` /
#: ``'concat'``: the "naive fusion strategies (Attention, Concat)" the paper compares with; it gives no formula for
#: them, so they are our choices (see :class:`SketchingStructurePrior`). ``'add'``: our guess for the Table 3
#: column whose header is lost in the text of the paper we have (see docs/portraitsr.md).
FUSIONS = ('ssp', 'supervision', 'attention', 'concat', 'add')


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


def modulate_half(features: Tensor, gamma: Tensor, beta: Tensor, gamma_offset: float = 0.0) -> Tensor:
    """Eq. 3: ``[(gamma_offset + gamma) * F_1 + beta, F_2]`` for ``features B x C x h x w`` split in channel
    halves ``F_1, F_2`` and ``gamma, beta B x C/2 x h x w``."""
    first, second = features.chunk(2, dim=1)
    return torch.cat([(gamma_offset + gamma) * first + beta, second], dim=1)


class StructureModulation(nn.Module):
    """Eq. 2-3 applied to any feature map: ``(features B x C x h x w, F_pm B x Cp x h' x w')`` -> same shape as
    ``features``.

    ``F_pm`` is resized (bilinear) to the size of ``features`` when they differ, a 3x3 conv gives ``gamma, beta``
    and they modulate the first channel half. This is how the paper's Table 5 ablation injects "structural cues at
    different decoder stages" (the paper gives no formula for it; reusing SSP's own modulation at the decoder
    stage is our reading).
    """

    def __init__(self, parsing_channels: int, channels: int, gamma_offset: float = 0.0) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f'channels must be even (split in halves, Eq. 3), got {channels}')
        self.conv = nn.Conv2d(parsing_channels, channels, 3, padding=1)
        self.gamma_offset = gamma_offset

    def forward(self, features: Tensor, parsing_features: Tensor) -> Tensor:
        if parsing_features.shape[-2:] != features.shape[-2:]:
            parsing_features = F.interpolate(parsing_features, size=features.shape[-2:], mode='bilinear',
                                             align_corners=False)
        gamma, beta = self.conv(parsing_features).chunk(2, dim=1)
        return modulate_half(features, gamma, beta, self.gamma_offset)


class SketchingStructurePrior(nn.Module):
    """SSP: ``F_latent B x C x h x w`` -> ``(F_SSP B x C x h x w, P_hat B x K x H x W)``.

    Args:
        latent_channels: ``C`` of ``F_latent`` (even: it is split into two halves, Eq. 3).
        parsing_channels: width of ``F_pm`` (not given in the paper; default ``C``).
        num_classes: ``K`` parsing classes (19 for CelebAMask-HQ / facexlib parsers).
        depth / num_heads / ffn_expansion: Transformer blocks of ``D_pm`` (not given in the paper).
        gamma_offset: ``F_1' = (gamma_offset + gamma) * F_1 + beta``. The paper writes ``gamma * F_1 + beta``
            (offset 0, the default); 1 gives the identity-at-init SFT variant.
        fusion: how ``F_pm`` enters ``F_latent`` (:data:`FUSIONS`; default ``'ssp'``, Eq. 2-3). Our forms of the
            Table 3 alternatives, each with ``L_pm`` kept:
            ``'supervision'``: ``F_SSP = F_latent`` (no parameter beyond ``D_pm``);
            ``'attention'``: ``F_SSP = F_latent * sigmoid(Conv3x3(F_pm))``, a spatial-and-channel gate on all
            channels (``attention``);
            ``'concat'``: ``F_SSP = Conv1x1([F_latent, F_pm])`` (``fuse``);
            ``'add'``: ``F_SSP = F_latent + Conv1x1(F_pm)`` (``project``).
    """

    def __init__(self, latent_channels: int, parsing_channels: int, num_classes: int, depth: int = 1,
                 num_heads: int = 1, ffn_expansion: float = 2.66, upscale: int = 8,
                 gamma_offset: float = 0.0, fusion: str = 'ssp') -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f'unknown SSP fusion {fusion!r}; choose from {", ".join(FUSIONS)}')
        if latent_channels % 2:
            raise ValueError(f'latent_channels must be even (split in halves, Eq. 3), got {latent_channels}')
        self.parsing_decoder = ParsingDecoder(latent_channels, parsing_channels, num_classes, depth, num_heads,
                                              ffn_expansion, upscale)
        self.fusion, self.gamma_offset = fusion, gamma_offset
        if fusion == 'ssp':
            # Eq. 2: one 3x3 conv whose output splits into gamma and beta for the modulated half.
            self.modulation = nn.Conv2d(parsing_channels, latent_channels, 3, padding=1)
        elif fusion == 'attention':
            self.attention = nn.Conv2d(parsing_channels, latent_channels, 3, padding=1)
        elif fusion == 'concat':
            self.fuse = nn.Conv2d(latent_channels + parsing_channels, latent_channels, 1)
        elif fusion == 'add':
            self.project = nn.Conv2d(parsing_channels, latent_channels, 1)

    def inject(self, latent: Tensor, features: Tensor) -> Tensor:
        """``F_SSP`` from ``F_latent`` and ``F_pm`` (both at the latent size) by :attr:`fusion`."""
        if self.fusion == 'ssp':
            gamma, beta = self.modulation(features).chunk(2, dim=1)
            return modulate_half(latent, gamma, beta, self.gamma_offset)
        if self.fusion == 'attention':
            return latent * torch.sigmoid(self.attention(features))
        if self.fusion == 'concat':
            return self.fuse(torch.cat([latent, features], dim=1))
        if self.fusion == 'add':
            return latent + self.project(features)
        return latent  # 'supervision': the parsing map is only supervised

    def with_features(self, latent: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(F_SSP, P_hat, F_pm B x Cp x h x w)``: also the parsing features, for decoder-stage injection."""
        features, parsing = self.parsing_decoder(latent)
        return self.inject(latent, features), parsing, features

    def forward(self, latent: Tensor) -> Tuple[Tensor, Tensor]:
        ssp, parsing, _ = self.with_features(latent)
        return ssp, parsing
