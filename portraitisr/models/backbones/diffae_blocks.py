"""The building blocks of DiffAE's BeatGANs UNet (phizaz/diffae ``model/nn.py`` and ``model/blocks.py``).

Same parameter names, shapes and maths as the reference (phizaz/diffae ``model/nn.py`` and ``model/blocks.py``), so a
DiffAE state dict loads strictly and the outputs match:

* :func:`timestep_embedding`: ``cat([cos(t f), sin(t f)])`` with ``f = exp(-ln(10000) i / half)`` (cosine first);
* :class:`ResBlock`: ``in_layers`` [GN, SiLU, Conv3x3], optional up/down resampling between the SiLU and the conv,
  ``emb_layers`` [SiLU, Linear(emb -> 2 out)] (time scale and shift), ``cond_emb_layers`` [SiLU, Linear(cond ->
  out)] (style scale only), ``out_layers`` [GN, SiLU, Dropout, Conv3x3 zero-init], ``skip_connection``. AdaGN
  (IDFSR Eq. 2, DiffAE ``apply_conditions`` with ``scale_bias=1``)::

      h = GN(h);  h = h * (1 + t_s) + t_b;  h = h * (1 + z_s);  h = conv(dropout(SiLU(h)))

  A block built with ``use_condition=False`` (the semantic encoder's) has no ``emb_layers``/``out_layers`` at all:
  ``skip(x) + in_layers(x)``;
* :class:`AttentionBlock`: GN, ``qkv`` Conv1d(C -> 3C) in the legacy per-head order ``[q_h, k_h, v_h]``, softmax
  attention with scale ``1/sqrt(ch)``, ``proj_out`` Conv1d zero-init, residual;
* :class:`TimestepSequential`: passes the time embedding, the style code, the decoder's lateral (skip) feature and
  the identity embedding to the children that take them.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.models.conditioning.identity_cross_attention import Float32GroupNorm, IdentityCrossAttention

#: DiffAE's ``GroupNorm32`` (float32 statistics, cast back)
GroupNorm32 = Float32GroupNorm


def normalization(channels: int) -> GroupNorm32:
    """``GroupNorm32(min(32, channels), channels)`` (DiffAE ``normalization``)."""
    return GroupNorm32(min(32, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it."""
    for param in module.parameters():
        param.detach().zero_()
    return module


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """``(B,)`` timesteps (may be fractional) -> ``B x dim`` sinusoidal embedding, cosines first (DiffAE order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Upsample(nn.Module):
    """Nearest-neighbour x2 (+ a 3x3 conv when ``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.channels, self.use_conv = channels, use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A strided 3x3 conv (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError('average-pool downsampling cannot change the number of channels')
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """DiffAE's ``ResBlock`` (``ResBlockConfig`` fields as arguments; ``dims=2``, no gradient checkpointing).

    Args:
        channels: input channels (for a decoder block: feature + lateral channels, concatenated first).
        emb_channels: width of the time embedding (``None`` with ``use_condition=False``).
        dropout: dropout before the last conv.
        out_channels: output channels (default ``channels``).
        use_condition: time (and style) conditioning; without it the block is ``skip(x) + in_layers(x)``.
        use_conv: 3x3 instead of 1x1 skip conv when the channels change.
        up / down: nearest x2 / average-pool /2 resampling of both paths.
        two_cond: a second, scale-only condition (the style code ``z_sem``) of width ``cond_emb_channels``.
        has_lateral: a decoder block: ``forward`` concatenates the encoder's skip feature to ``x`` first.
        use_zero_module: zero-initialise the last conv (BeatGANs default).
    """

    def __init__(self, channels: int, emb_channels: Optional[int], dropout: float, out_channels: Optional[int] = None,
                 use_condition: bool = True, use_conv: bool = False, up: bool = False, down: bool = False,
                 two_cond: bool = False, cond_emb_channels: Optional[int] = None, has_lateral: bool = False,
                 use_zero_module: bool = True) -> None:
        super().__init__()
        out_channels = out_channels or channels
        cond_emb_channels = cond_emb_channels or emb_channels
        self.use_condition, self.two_cond, self.has_lateral = use_condition, two_cond, has_lateral
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        if use_condition:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            if two_cond:
                self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_emb_channels, out_channels))
            conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            if use_zero_module:
                zero_module(conv)
            self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout), conv)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            kernel = 3 if use_conv else 1
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, emb: Optional[Tensor] = None, cond: Optional[Tensor] = None,
                lateral: Optional[Tensor] = None) -> Tensor:
        if self.has_lateral:
            if lateral is None:
                raise ValueError('a decoder ResBlock with a lateral connection needs the encoder feature')
            x = torch.cat([x, lateral], dim=1)
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        if self.use_condition:
            h = self.apply_conditions(h, emb, cond)
        return self.skip_connection(x) + h

    def apply_conditions(self, h: Tensor, emb: Optional[Tensor], cond: Optional[Tensor]) -> Tensor:
        """AdaGN and the rest of ``out_layers`` (DiffAE ``apply_conditions``, ``scale_bias=1``).

        As in the reference, the style condition is used only together with the time condition.
        """
        norm, act, dropout, conv = self.out_layers
        h = norm(h)
        if emb is not None:
            t_scale, t_shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + t_scale) + t_shift
            if self.two_cond and cond is not None:
                h = h * (1 + self.cond_emb_layers(cond).type(h.dtype)[..., None, None])
        return conv(dropout(act(h)))


class AttentionBlock(nn.Module):
    """DiffAE's self-attention block (legacy QKV order: heads split before q/k/v)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f'channels {channels} is not divisible by num_head_channels {num_head_channels}')
            self.num_heads = channels // num_head_channels
        self.channels = channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        ch = c // self.num_heads
        # legacy order: B*H x 3ch x T, then q, k, v; the reference scales q and k by ch^-1/4 each
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, -1).split(ch, dim=1)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = attended.transpose(1, 2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """DiffAE's ``TimestepEmbedSequential``, extended with the identity embedding for cross-attention blocks."""

    def forward(self, x: Tensor, emb: Optional[Tensor] = None, cond: Optional[Tensor] = None,
                lateral: Optional[Tensor] = None, identity: Optional[Tensor] = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb=emb, cond=cond, lateral=lateral)
            elif isinstance(layer, IdentityCrossAttention):
                x = layer(x, identity)
            else:
                x = layer(x)
        return x
