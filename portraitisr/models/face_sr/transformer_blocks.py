"""Transformer blocks of the PortraitSR backbone (Restormer-style, Zamir et al. 2022).

PortraitSR (AAAI 2026, "Overview") only says "a Transformer-based encoder-decoder" whose latent is
``H/8 x W/8 x 8C`` with a 384-wide dictionary. Restormer's encoder (width 48, doubled at each of three
downsamplings: 48 -> 96 -> 192 -> 384 at H/8) matches those numbers exactly, so its blocks are used:
multi-Dconv head *transposed* attention (attention across channels, linear in the pixel count, so a
128x128 face costs little) and a gated depth-wise feed-forward network.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of ``B x C x H x W`` (each pixel normalised on its own)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransposedAttention(nn.Module):
    """Multi-head attention across channels: ``B x C x H x W`` -> same shape.

    Queries/keys/values come from a 1x1 then a depth-wise 3x3 conv; per head the ``(C/h) x (C/h)``
    attention map is built from L2-normalised q and k with a learnable temperature.
    """

    def __init__(self, channels: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'channels {channels} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=bias)
        self.qkv_dw = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=bias)
        self.proj = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """Gated depth-wise conv feed-forward: ``B x C x H x W`` -> same shape (hidden ``expansion * C``)."""

    def __init__(self, channels: int, expansion: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``; ``B x C x H x W`` -> same."""

    def __init__(self, channels: int, num_heads: int, ffn_expansion: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = TransposedAttention(channels, num_heads, bias)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GatedFeedForward(channels, ffn_expansion, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(channels: int, depth: int, num_heads: int, ffn_expansion: float) -> nn.Sequential:
    """``depth`` :class:`TransformerBlock` s of one width (an encoder or decoder level)."""
    return nn.Sequential(*[TransformerBlock(channels, num_heads, ffn_expansion) for _ in range(depth)])


class Downsample(nn.Module):
    """Halve the size, double the width: 3x3 conv to ``C/2`` then pixel-unshuffle(2) -> ``2C``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the size, halve the width: 3x3 conv to ``2C`` then pixel-shuffle(2) -> ``C/2``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
