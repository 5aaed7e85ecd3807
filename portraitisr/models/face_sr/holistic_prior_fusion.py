"""Holistic Prior Fusion (HPF) of PortraitSR (AAAI 2026, section "Holistic Prior Fusion", Eq. 7-10).

``m`` soft region masks come from the predicted parsing map (Eq. 7); each masks both ``F_SSP`` and ``F_ATP``
(Eq. 8), their concatenation is refined by channel-then-spatial attention (Eq. 9), and the regional results are
summed and added to ``F_latent`` (Eq. 10).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelSpatialAttention(nn.Module):
    """``Attn`` of Eq. 9: ``B x 2C x h x w`` -> ``B x C x h x w``.

    The paper says only that channel attention then spatial attention is applied. Chosen here: CBAM's form
    (Woo et al. 2018): channel weights from an MLP on average- and max-pooled features, spatial weights from a
    7x7 conv on the channel mean and max, then a 1x1 conv back to ``C`` so that the regions can be summed onto
    ``F_latent`` (Eq. 10).
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(in_channels // reduction, 4)
        self.channel_mlp = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(hidden, in_channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)
        self.out = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.channel_mlp(x.mean(dim=(2, 3), keepdim=True)) + self.channel_mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(pooled)
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        x = x * torch.sigmoid(self.spatial(descriptor))
        return self.out(x)


class HolisticPriorFusion(nn.Module):
    """HPF: ``(F_latent, F_SSP, F_ATP)`` each ``B x C x h x w`` and ``P_hat B x K x H x W`` -> ``B x C x h x w``.

    Args:
        channels: ``C``.
        num_classes: ``K`` channels of the parsing map.
        num_regions: ``m`` masks (not given in the paper; default 4, e.g. skin, eyes+brows, nose, mouth+hair).
        reduction: channel-attention MLP reduction.
    Choices (the paper leaves them open): ``P_hat`` is area-resized to the latent size before ``Conv_pre``
    (the masks weight latent features); every region has its own attention module (no weight sharing).
    """

    def __init__(self, channels: int, num_classes: int, num_regions: int = 4, reduction: int = 8) -> None:
        super().__init__()
        self.mask_conv = nn.Conv2d(num_classes, num_regions, 3, padding=1)  # Conv_pre of Eq. 7
        self.region_attention = nn.ModuleList(
            [ChannelSpatialAttention(2 * channels, channels, reduction) for _ in range(num_regions)])

    def masks(self, parsing: Tensor, size) -> Tensor:
        """Eq. 7: ``M = sigmoid(Conv_pre(P_hat))`` at the latent ``size``: ``B x m x h x w`` in (0, 1)."""
        return torch.sigmoid(self.mask_conv(F.adaptive_avg_pool2d(parsing, size)))

    def forward(self, latent: Tensor, ssp: Tensor, atp: Tensor, parsing: Tensor) -> Tensor:
        masks = self.masks(parsing, latent.shape[-2:])
        fused = latent
        for k, attention in enumerate(self.region_attention):
            mask = masks[:, k:k + 1]
            fused = fused + attention(torch.cat([mask * ssp, mask * atp], dim=1))  # Eq. 8-10
        return fused
