"""RAM's image encoder: a Swin Transformer whose output is the mean-pooled token followed by the final tokens.

Same parameter names, shapes and maths as RAM's copy of Swin (cswry/OSEDiff ``ram/models/swin_transformer_lora.py``,
from microsoft/Swin-Transformer; Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021), so RAM / DAPE checkpoints load without renaming:

``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.{qkv, relative_position_bias_table, proj}, norm2,
mlp.{fc1, fc2}}``, ``layers.{i}.downsample.{norm, reduction}`` (after the blocks of stage ``i``, none after the
last), ``norm``.

timm's ``SwinTransformer`` is not used: since timm 0.9 it merges patches at the *start* of the next stage
(``layers.{i+1}.downsample`` holds what RAM calls ``layers.{i}.downsample``), works channels-last, has a
classification head instead of RAM's ``[avgpool token, tokens]`` output, and its ``qkv`` is a plain ``nn.Linear``
where DAPE needs a LoRA layer.

Differences from the reference, none of which changes a tagging result: no stochastic depth (RAM builds it with
``drop_path_rate=0.1``, which only acts in training; the tagger is frozen and always runs as in ``eval()``), no
dropout (all rates are 0), and ``relative_position_index`` / ``attn_mask`` are computed non-persistent buffers
(RAM's loader deletes them from checkpoints too, ``ram/models/utils.py:load_checkpoint_swinlarge``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora_linear import LoRALinear

__all__ = ['SwinTransformer', 'window_partition', 'window_reverse', 'relative_position_index',
           'shifted_window_mask']


def window_partition(x: Tensor, window: int) -> Tensor:
    """``B x H x W x C`` -> ``(B * H/window * W/window) x window x window x C`` (row-major windows)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW) x window x window x C`` -> ``B x H x W x C``."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def relative_position_index(window: int) -> Tensor:
    """``window^2 x window^2`` long: the row of ``relative_position_bias_table`` for each (query, key) pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # in [0, 2 window - 2]
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def shifted_window_mask(resolution: int, window: int, shift: int) -> Tensor:
    """``nW x window^2 x window^2`` float: 0 inside one region of the cyclically shifted map, -100 across regions
    (the value the Swin reference uses)."""
    regions = torch.zeros(1, resolution, resolution, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols, :] = label
            label += 1
    labels = window_partition(regions, window).view(-1, window * window)
    mask = labels.unsqueeze(1) - labels.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window x window`` windows with a learned relative position bias.

    ``qkv`` is a :class:`LoRALinear` on the query and value rows when ``lora_rank > 0`` (DAPE), else ``nn.Linear``.
    """

    def __init__(self, dim: int, window: int, num_heads: int, lora_rank: int = 0) -> None:
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window), persistent=False)
        if lora_rank > 0:
            self.qkv = LoRALinear(dim, 3 * dim, lora_rank, enable_lora=(True, False, True))
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``x``: ``(B * nW) x N x C`` window tokens; ``mask``: ``nW x N x N`` (0 / -100) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(bw // windows, windows, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, both residual, on ``B x (H * W) x C`` tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
                 lora_rank: int = 0) -> None:
        super().__init__()
        if resolution <= window:  # the whole map is one window: nothing to shift (Swin's rule)
            window, shift = resolution, 0
        if not 0 <= shift < window:
            raise ValueError(f'shift must be in [0, window), got shift={shift}, window={window}')
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, lora_rank)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(resolution, window, shift) if shift > 0 else None
        self.register_buffer('attn_mask', mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, length, c = x.shape
        h = w = self.resolution
        if length != h * w:
            raise ValueError(f'expected {h * w} tokens, got {length}')
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).view(-1, self.window * self.window, c)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, self.window, self.window, c), self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """``B x (H * W) x C`` -> ``B x (H/2 * W/2) x 2C``: concatenate each 2 x 2 neighbourhood, LayerNorm, project."""

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        if resolution % 2:
            raise ValueError(f'patch merging needs an even resolution, got {resolution}')
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        x = x.view(b, self.resolution, self.resolution, c)
        # order of the reference: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``depth`` blocks (odd ones shifted by ``window // 2``), then patch merging unless it is the last stage."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool, lora_rank: int = 0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, lora_rank)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """``B x 3 x S x S`` -> ``B x (S/p)^2 x C``: strided convolution then LayerNorm."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """RAM's Swin encoder: ``B x 3 x S x S`` (normalised) -> ``B x (1 + (S / 32)^2) x C_last``.

    Token 0 is the average of the final tokens (``avgpool``), followed by the final tokens in row-major order,
    after the final LayerNorm (``SwinTransformer.forward`` of the reference, ``idx_to_group_img=None``).

    Args:
        image_size: the only accepted input size (RAM Swin-L: 384), as the reference asserts.
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio: the Swin configuration (RAM Swin-L:
            4, 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 4.0; ``ram/configs/swin/config_swinL_384.json`` and the
            constructor call in ``ram/models/ram_lora.py``).
        lora_rank: > 0 puts DAPE's LoRA on every ``attn.qkv`` (query and value rows; DAPE: 8).
    """

    def __init__(self, image_size: int = 384, patch_size: int = 4, embed_dim: int = 192,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (6, 12, 24, 48),
                 window_size: int = 12, mlp_ratio: float = 4.0, lora_rank: int = 0) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length')
        if image_size % (patch_size * 2 ** (len(depths) - 1)):
            raise ValueError(f'image_size={image_size} is not divisible by patch_size * 2^(stages - 1)')
        self.image_size = image_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        resolution = image_size // patch_size
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            last = i == len(depths) - 1
            self.layers.append(SwinStage(embed_dim * 2 ** i, resolution // 2 ** i, depth, heads, window_size,
                                         mlp_ratio, downsample=not last, lora_rank=lora_rank))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'the Swin encoder takes {self.image_size} x {self.image_size} images, got '
                             f'{tuple(x.shape[-2:])}; resize first (RAMTagger.preprocess)')
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        pooled = F.adaptive_avg_pool1d(x.transpose(1, 2), 1).transpose(1, 2)  # the reference's ``avgpool``
        return torch.cat([pooled, x], dim=1)
