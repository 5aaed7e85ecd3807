"""Identity-embedding cross-attention: a residual block whose queries come from a feature map and whose keys and
values come from identity embeddings (IDFSR, appendix E.2: "all self-attention mechanisms are replaced with
cross-attention mechanisms to incorporate ID embeddings").

The block has the shape of DiffAE's ``AttentionBlock`` (GroupNorm, 1x1 projections, output projection initialised
to zero, residual), so it can stand in for one: with the output projection at zero it starts as the identity map,
and when the identity width equals the feature width (512 = 512 at DiffAE-256's 16 x 16 and 8 x 8 levels) the query,
key and value projections can take the self-attention's ``qkv`` weights (see
:func:`portraitisr.models.backbones.diffae_checkpoint.qkv_to_cross_attention`), which is how the paper can say the
swap adds no parameters.

One embedding is one token. With a single token the softmax over keys is 1 everywhere, so the block adds
``proj_out(W_v z_id)`` to every position: a learned, identity-dependent per-channel shift. That is what
cross-attention to one 512-d vector computes; queries and keys only start to matter with several tokens (e.g. the
embeddings of several references, ``B x N x D``). The GroupNorm that every following block starts with removes
each group's mean, so the shift acts through the differences between the channels of a group: with one channel per
group (GroupNorm(min(32, C), C) and C <= 32) it would have no effect at all, which is why :class:`IDFSR`
refuses identity attention on 32 channels or fewer (DiffAE-256 has 512 channels, 16 per group, at its attention
levels). The UNet itself builds such blocks (a checkpoint conversion can be tested on a small network).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import MODELS


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in (at least) float32 and cast back (DiffAE's ``GroupNorm32``): stable under fp16/bf16;
    float32 and float64 inputs are normalised in their own precision."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


def identity_tokens(identity: Tensor, batch: int) -> Tensor:
    """``B x D`` (one token each) or ``B x N x D`` identity embeddings -> ``B x N x D`` tokens (a batch of 1 is
    broadcast to ``batch``)."""
    if identity.dim() == 2:
        identity = identity[:, None]
    if identity.dim() != 3:
        raise ValueError(f'identity embeddings must be B x D or B x N x D, got {tuple(identity.shape)}')
    if identity.shape[0] != batch:
        if identity.shape[0] != 1:
            raise ValueError(f'{identity.shape[0]} identity embeddings for a batch of {batch}')
        identity = identity.expand(batch, -1, -1)
    return identity


@MODELS.register_module()
class IdentityCrossAttention(nn.Module):
    """``x + proj_out(Attention(q = W_q GN(x), k = W_k z, v = W_v z))`` over the spatial positions of ``x``.

    Args:
        channels: ``C``, channels of the feature map.
        id_channels: ``D``, width of the identity embedding (512 for ArcFace).
        num_heads: attention heads (DiffAE-256 uses 1), ignored when ``num_head_channels`` is set.
        num_head_channels: channels per head (``-1``: use ``num_heads``), as DiffAE's ``AttentionBlock``.

    Parameters: ``norm`` (GroupNorm(min(32, C), C)), ``q`` (Conv1d C -> C), ``kv`` (Linear D -> 2C: keys then
    values), ``proj_out`` (Conv1d C -> C, zero-initialised).

    ``forward(x, identity)``: ``x`` ``B x C x H x W`` (any spatial rank), ``identity`` ``B x D`` or ``B x N x D``
    (``None`` returns ``x`` unchanged: no condition, no change). Gradients reach ``x`` and ``identity``.
    """

    def __init__(self, channels: int, id_channels: int = 512, num_heads: int = 1, num_head_channels: int = -1) -> None:
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f'channels {channels} is not divisible by num_head_channels {num_head_channels}')
            heads = channels // num_head_channels
        if channels % heads:
            raise ValueError(f'channels {channels} is not divisible by {heads} heads')
        self.channels, self.id_channels, self.num_heads = channels, id_channels, heads
        self.norm = Float32GroupNorm(min(32, channels), channels)
        self.q = nn.Conv1d(channels, channels, 1)
        self.kv = nn.Linear(id_channels, 2 * channels)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)  # starts as the identity map, like DiffAE's zero_module(proj_out)
        nn.init.zeros_(self.proj_out.bias)

    def extra_repr(self) -> str:
        return f'channels={self.channels}, id_channels={self.id_channels}, num_heads={self.num_heads}'

    def forward(self, x: Tensor, identity: Optional[Tensor] = None) -> Tensor:
        if identity is None:
            return x
        b, c, *spatial = x.shape
        if c != self.channels:
            raise ValueError(f'{type(self).__name__} has {self.channels} channels, got input {tuple(x.shape)}')
        tokens = identity_tokens(identity, b).to(x.dtype)
        if tokens.shape[-1] != self.id_channels:
            raise ValueError(f'identity embeddings must have {self.id_channels} channels, got {tuple(tokens.shape)}')
        flat = x.reshape(b, c, -1)
        heads, ch = self.num_heads, c // self.num_heads
        q = self.q(self.norm(flat)).reshape(b, heads, ch, -1).transpose(-1, -2)  # B x H x T x ch
        k, v = self.kv(tokens).chunk(2, dim=-1)  # B x N x C each
        k = k.reshape(b, -1, heads, ch).transpose(1, 2)  # B x H x N x ch
        v = v.reshape(b, -1, heads, ch).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(ch)) v
        h = attended.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)
