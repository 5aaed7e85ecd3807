"""The Transformer encoder-decoder of PortraitSR (AAAI 2026, "Overview", Fig. 2).

The encoder maps an image ``B x 3 x H x W`` to ``F_latent`` (``B x 8C x H/8 x W/8``, C = ``dim``) plus the
skip features of the three finer levels; the decoder ``D_sr`` maps (enhanced) latents back to an image. The SR
and the HR-reconstruction branches (Eq. 4) each own an encoder and *share* the decoder, so the decoder takes the
skips of whichever encoder produced the latent.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .transformer_blocks import Downsample, Upsample, transformer_stage

NUM_LEVELS = 4  # H, H/2, H/4, H/8: the latent sits at H/8 (paper: F_latent in R^{H/8 x W/8 x 8C})


def _check_levels(depths: Sequence[int], heads: Sequence[int]) -> None:
    if len(depths) != NUM_LEVELS or len(heads) != NUM_LEVELS:
        raise ValueError(f'depths and heads need {NUM_LEVELS} entries (levels H..H/8), got {depths}, {heads}')


class FaceSREncoder(nn.Module):
    """``B x 3 x H x W`` (H, W multiples of 8) -> ``(F_latent B x 8C x H/8 x W/8, [skips at H, H/2, H/4])``.

    Level ``i`` has width ``C * 2**i`` and ``depths[i]`` Transformer blocks with ``heads[i]`` heads.
    """

    def __init__(self, dim: int, depths: Sequence[int], heads: Sequence[int], ffn_expansion: float,
                 in_channels: int = 3) -> None:
        super().__init__()
        _check_levels(depths, heads)
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        for level in range(NUM_LEVELS):
            width = dim * 2**level
            self.stages.append(transformer_stage(width, depths[level], heads[level], ffn_expansion))
            if level < NUM_LEVELS - 1:
                self.downs.append(Downsample(width))
        self.latent_channels = dim * 2**(NUM_LEVELS - 1)

    def forward(self, image: Tensor) -> Tuple[Tensor, List[Tensor]]:
        x = self.stem(image)
        skips = []
        for level, stage in enumerate(self.stages):
            x = stage(x)
            if level < NUM_LEVELS - 1:
                skips.append(x)
                x = self.downs[level](x)
        return x, skips


class FaceSRDecoder(nn.Module):
    """``D_sr``: ``(B x 8C x H/8 x W/8, skips)`` -> ``B x 3 x H x W`` residual image (unbounded).

    Each level upsamples (pixel shuffle), concatenates the encoder skip of that level, fuses with a 1x1 conv and
    runs ``depths[level]`` blocks (Restormer's U-shape); ``refine_depth`` blocks at full size end it.
    ``stage_widths`` lists the widths of the three stages, coarse to fine (``4C, 2C, C`` at H/4, H/2, H).
    """

    def __init__(self, dim: int, depths: Sequence[int], heads: Sequence[int], ffn_expansion: float,
                 refine_depth: int = 0, out_channels: int = 3) -> None:
        super().__init__()
        _check_levels(depths, heads)
        self.ups = nn.ModuleList()
        self.fuses = nn.ModuleList()
        self.stages = nn.ModuleList()
        for level in reversed(range(NUM_LEVELS - 1)):  # 2, 1, 0
            width = dim * 2**level
            self.ups.append(Upsample(width * 2))
            self.fuses.append(nn.Conv2d(width * 2, width, 1, bias=False))
            self.stages.append(transformer_stage(width, depths[level], heads[level], ffn_expansion))
        self.stage_widths = [dim * 2**level for level in reversed(range(NUM_LEVELS - 1))]
        self.refine = transformer_stage(dim, refine_depth, heads[0], ffn_expansion)
        self.out = nn.Conv2d(dim, out_channels, 3, padding=1, bias=False)

    def forward(self, latent: Tensor, skips: Sequence[Tensor],
                stage_hooks: Optional[Sequence[Callable[[Tensor], Tensor]]] = None) -> Tensor:
        """``stage_hooks[i]`` (if given) transforms the output of stage ``i`` (coarse to fine); fewer hooks than
        stages leave the finer stages alone (PortraitSR's Table 5 injects structure into the first ``n``)."""
        x = latent
        hooks = list(stage_hooks or [])
        for index, (up, fuse, stage, skip) in enumerate(zip(self.ups, self.fuses, self.stages, reversed(skips))):
            x = stage(fuse(torch.cat([up(x), skip], dim=1)))
            if index < len(hooks):
                x = hooks[index](x)
        return self.out(self.refine(x))
