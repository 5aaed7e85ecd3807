"""CodeFormer (Zhou et al., NeurIPS 2022) blind face restoration, with the official parameter layout.

Names follow sczhou/CodeFormer ``basicsr/archs/codeformer_arch.py`` and ``basicsr/archs/vqgan_arch.py`` so the
official ``codeformer.pth`` (``params_ema``) loads with ``strict=True``:

* ``encoder.blocks.<i>`` / ``generator.blocks.<i>``: the VQGAN encoder and decoder as flat block lists
  (conv, ``ResBlock`` = ``norm1 conv1 norm2 conv2 [conv_out]``, ``AttnBlock`` = ``norm q k v proj_out``,
  ``Downsample.conv`` / ``Upsample.conv``, a final GroupNorm and conv);
* ``quantize.embedding.weight``: the 1024 x 256 codebook;
* ``position_emb`` (256 x 512), ``feat_emb``, ``ft_layers.<i>`` (``self_attn``, ``linear1``, ``linear2``,
  ``norm1``, ``norm2``), ``idx_pred_layer.{0,1}``: the code-prediction transformer;
* ``fuse_convs_dict.<res>`` (``encode_enc``, ``scale.{0,2}``, ``shift.{0,2}``): the controllable feature
  transformation at resolutions 32, 64, 128 and 256.

The official inference (``inference_codeformer.py``) reads BGR, converts to **RGB**, divides by 255 and normalises
with mean = std = 0.5 to [-1, 1], calls ``net(x, w=w, adain=True)[0]`` and maps the output from [-1, 1] back
(``tensor2img(min_max=(-1, 1))`` clamps). :class:`CodeFormerRestorer` does the same on RGB [0, 1] tensors.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import RESTORERS
from .base_restorer import BaseImageRestorer
from .rrdbnet import load_restorer_weights

__all__ = ['CodeFormer', 'CodeFormerRestorer', 'CODEFORMER_WEIGHTS', 'adaptive_instance_normalization']

#: Official checkpoint (URL from sczhou/CodeFormer ``inference_codeformer.py``; the state dict is ``params_ema``).
CODEFORMER_WEIGHTS = {'filename': 'codeformer.pth',
                      'url': 'https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth'}

# GroupNorm of the VQGAN blocks (vqgan_arch.py ``normalize``: 32 groups, eps 1e-6).
GN_GROUPS, GN_EPS = 32, 1e-6
# Variance epsilon of AdaIN (codeformer_arch.py ``calc_mean_std``: eps=1e-5).
ADAIN_EPS = 1e-5


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS, affine=True)


def adaptive_instance_normalization(content: Tensor, style: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Give ``content`` (``B x C x H x W``) the per-channel mean and std of ``style`` (``B x C x h x w``).

    Unbiased variance plus ``eps``, as in codeformer_arch.py ``calc_mean_std``.
    """
    def mean_std(feat: Tensor) -> tuple[Tensor, Tensor]:
        flat = feat.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    c_mean, c_std = mean_std(content)
    s_mean, s_std = mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


class ResBlock(nn.Module):
    """GroupNorm-swish-conv twice plus a skip (1x1 ``conv_out`` when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convs and a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # B x HW x C
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, as vqgan_arch.py
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then a stride-2 3x3 conv without padding (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class _BlockList(nn.Module):
    """Holds ``blocks`` (an ``nn.ModuleList``) so the keys read ``encoder.blocks.<i>``/``generator.blocks.<i>``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class VectorQuantizer(nn.Module):
    """The codebook, ``embedding.weight``: ``codebook_size x emb_dim``."""

    def __init__(self, codebook_size: int, emb_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, emb_dim)
        # vqgan_arch.py VectorQuantizer: uniform(-1/K, 1/K)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def codebook_features(self, indices: Tensor, shape: Sequence[int]) -> Tensor:
        """``B x N`` code indices -> ``B x emb_dim x h x w`` features, ``shape`` = (B, h, w, emb_dim)."""
        return self.embedding(indices).view(*shape).permute(0, 3, 1, 2).contiguous()


class TransformerSALayer(nn.Module):
    """Pre-norm self-attention + GELU MLP on ``N x B x C`` tokens; the position embedding goes into q and k."""

    def __init__(self, embed_dim: int, nhead: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, nhead, dropout=0.0)
        self.linear1 = nn.Linear(embed_dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, tgt: Tensor, query_pos: Optional[Tensor] = None) -> Tensor:
        y = self.norm1(tgt)
        qk = y if query_pos is None else y + query_pos
        tgt = tgt + self.self_attn(qk, qk, value=y, need_weights=False)[0]
        return tgt + self.linear2(F.gelu(self.linear1(self.norm2(tgt))))


class FuseSFTBlock(nn.Module):
    """Controllable feature transformation: ``dec + w * (dec * scale + shift)`` from encoder+decoder features."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * in_ch, out_ch)
        self.scale = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, 3, 1, 1))
        self.shift = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, 3, 1, 1))

    def forward(self, enc_feat: Tensor, dec_feat: Tensor, w: float = 1.0) -> Tensor:
        enc = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return dec_feat + w * (dec_feat * self.scale(enc) + self.shift(enc))


class CodeFormer(nn.Module):
    """CodeFormer network: encoder -> transformer code prediction -> codebook -> generator with CFT fusion.

    The defaults are the official model (codeformer_arch.py ``CodeFormer.__init__`` passes
    ``VQAutoEncoder(512, 64, [1, 2, 2, 4, 4, 8], 'nearest', 2, [16], 1024)`` with ``emb_dim=256``;
    ``dim_embd=512, n_head=8, n_layers=9``, MLP width ``2 * dim_embd``, ``connect_list ['32','64','128','256']``).
    Smaller values give a tiny network with the same structure for tests.

    Args:
        img_size: face side; the latent grid is ``img_size / 2**(len(ch_mult)-1)`` (16 for the official model).
        nf, ch_mult: VQGAN width and per-level multipliers (``nf * ch_mult[i]`` channels at ``img_size / 2**i``).
        res_blocks: ResBlocks per level.
        attn_resolutions: resolutions that get an AttnBlock after every ResBlock.
        codebook_size, emb_dim: codebook entries and code dimension.
        dim_embd, n_head, n_layers: transformer width, heads, layers.
        connect_list: resolutions (as strings) where encoder features are fused into the generator.
    """

    def __init__(self, img_size: int = 512, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
                 res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), codebook_size: int = 1024,
                 emb_dim: int = 256, dim_embd: int = 512, n_head: int = 8, n_layers: int = 9,
                 connect_list: Sequence[str] = ('32', '64', '128', '256')) -> None:
        super().__init__()
        levels = len(ch_mult)
        self.img_size = img_size
        self.latent_res = img_size // 2 ** (levels - 1)
        self.emb_dim = emb_dim
        self.connect_list = [str(c) for c in connect_list]
        attn_resolutions = set(attn_resolutions)
        # channels at each resolution (codeformer_arch.py hard-codes this table for the official sizes)
        self.channels = {str(img_size // 2 ** i): nf * ch_mult[i] for i in range(levels)}

        # ---- encoder (vqgan_arch.py Encoder) ------------------------------------------------------------------
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
        enc_taps: dict[str, int] = {}  # resolution -> index of the block whose output feeds the CFT
        in_ch, res = nf, img_size
        for i in range(levels):
            out_ch = nf * ch_mult[i]
            for _ in range(res_blocks):
                blocks.append(ResBlock(in_ch, out_ch))
                in_ch = out_ch
                enc_taps[str(res)] = len(blocks) - 1  # after the last ResBlock (before its attn at 16)
                if res in attn_resolutions:
                    blocks.append(AttnBlock(in_ch))
            if i != levels - 1:
                blocks.append(Downsample(in_ch))
                res //= 2
        blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch), _group_norm(in_ch),
                   nn.Conv2d(in_ch, emb_dim, 3, 1, 1)]
        self.encoder = _BlockList(blocks)

        self.quantize = VectorQuantizer(codebook_size, emb_dim)

        # ---- generator (vqgan_arch.py Generator) --------------------------------------------------------------
        in_ch, res = nf * ch_mult[-1], self.latent_res
        blocks = [nn.Conv2d(emb_dim, in_ch, 3, 1, 1), ResBlock(in_ch, in_ch), AttnBlock(in_ch),
                  ResBlock(in_ch, in_ch)]
        gen_taps: dict[str, int] = {}
        for i in reversed(range(levels)):
            out_ch = nf * ch_mult[i]
            for j in range(res_blocks):
                blocks.append(ResBlock(in_ch, out_ch))
                in_ch = out_ch
                # codeformer_arch.py fuse_generator_block: after the first ResBlock, or the last one at 16
                if j == 0 or res in attn_resolutions:
                    gen_taps[str(res)] = len(blocks) - 1
                if res in attn_resolutions:
                    blocks.append(AttnBlock(in_ch))
            if i != 0:
                blocks.append(Upsample(in_ch))
                res *= 2
        blocks += [_group_norm(in_ch), nn.Conv2d(in_ch, 3, 3, 1, 1)]
        self.generator = _BlockList(blocks)

        unknown = [c for c in self.connect_list if c not in self.channels]
        if unknown:
            raise ValueError(f'connect_list {unknown} not among the resolutions {sorted(self.channels, key=int)}')
        self.enc_taps = {enc_taps[c]: c for c in self.connect_list}
        self.gen_taps = {gen_taps[c]: c for c in self.connect_list}

        # ---- transformer --------------------------------------------------------------------------------------
        self.position_emb = nn.Parameter(torch.zeros(self.latent_res ** 2, dim_embd))
        self.feat_emb = nn.Linear(emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[TransformerSALayer(dim_embd, n_head, 2 * dim_embd) for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))

        self.fuse_convs_dict = nn.ModuleDict({c: FuseSFTBlock(self.channels[c], self.channels[c])
                                              for c in self.connect_list})

    def forward(self, x: Tensor, w: float = 0.0, adain: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Restore aligned faces.

        Args:
            x: ``B x 3 x img_size x img_size`` RGB in [-1, 1].
            w: fidelity weight in [0, 1]: 0 = codebook only (quality), 1 = strongest encoder fusion (fidelity);
                the fusion is skipped when ``w <= 0``, as in the official forward.
            adain: match the codebook features' channel statistics to the encoder's (colour fix; the official
                inference script uses ``True``, the network's own default is ``False``).

        Returns:
            ``(out, logits, lq_feat)``: ``B x 3 x img_size x img_size`` in about [-1, 1], ``B x N x codebook_size``
            code logits (``N = latent_res**2``), ``B x emb_dim x latent_res x latent_res`` encoder features.
        """
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f'CodeFormer expects {self.img_size}x{self.img_size} faces, got {tuple(x.shape)}')
        enc_feats: dict[str, Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in self.enc_taps:
                enc_feats[self.enc_taps[i]] = x
        lq_feat = x
        b = x.shape[0]

        pos_emb = self.position_emb.unsqueeze(1).expand(-1, b, -1)  # N x B x C
        query = self.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))  # B x C x h x w -> N x B x C
        for layer in self.ft_layers:
            query = layer(query, query_pos=pos_emb)
        logits = self.idx_pred_layer(query).permute(1, 0, 2)  # B x N x codebook_size

        # top-1 code per token (the official argmax over softmax(logits); softmax is monotonic)
        indices = logits.argmax(dim=2)
        quant_feat = self.quantize.codebook_features(indices, (b, self.latent_res, self.latent_res, self.emb_dim))
        if adain:
            quant_feat = adaptive_instance_normalization(quant_feat, lq_feat)

        x = quant_feat
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in self.gen_taps and w > 0:
                key = self.gen_taps[i]
                x = self.fuse_convs_dict[key](enc_feats[key], x, w)
        return x, logits, lq_feat


@RESTORERS.register_module()
class CodeFormerRestorer(BaseImageRestorer):
    """CodeFormer on aligned ``face_size x face_size`` RGB faces in [0, 1] (``scale`` 1).

    Args:
        weights: weight spec for :func:`portraitisr.weights.resolve_file`; ``None`` means the
            official ``codeformer.pth`` (looked up locally, downloaded only when downloads are allowed).
        fidelity_weight: ``w`` in [0, 1] (official default 0.5): higher keeps more of the input's identity.
        pretrained: ``False`` builds a randomly initialised network (tests); it must come without ``weights``.
        adain: AdaIN colour fix of the code features (the official inference uses ``True``).
        arch: keyword overrides of :class:`CodeFormer` (tiny networks for tests); ``img_size`` sets
            ``face_size``.
    """

    def __init__(self, weights: Optional[Any] = None, fidelity_weight: float = 0.5, pretrained: bool = True,
                 adain: bool = True, arch: Optional[dict] = None) -> None:
        super().__init__()
        if not 0.0 <= fidelity_weight <= 1.0:
            raise ValueError(f'fidelity_weight must be in [0, 1], got {fidelity_weight}')
        self.net = CodeFormer(**(arch or {}))
        self.face_size = self.net.img_size
        self.scale = 1
        self.fidelity_weight = float(fidelity_weight)
        self.adain = bool(adain)
        self.weights_path: Optional[str] = None
        if pretrained:
            self.weights_path = load_restorer_weights(self.net, CODEFORMER_WEIGHTS if weights is None else weights)
        self._finish_init(pretrained, weights)

    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x S x S`` RGB in [0, 1] -> ``B x 3 x S x S`` RGB, about [0, 1] (``S = face_size``)."""
        param = next(self.net.parameters())
        x = image.to(param.dtype) * 2 - 1  # mean = std = 0.5 normalisation (inference_codeformer.py)
        out = self.net(x, w=self.fidelity_weight, adain=self.adain)[0]
        return ((out + 1) / 2).to(image.dtype)

    def extra_repr(self) -> str:
        return f'face_size={self.face_size}, fidelity_weight={self.fidelity_weight}, adain={self.adain}'
