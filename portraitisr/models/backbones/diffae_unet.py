"""DiffAE's pixel-space autoencoder UNet (BeatGANs UNet + semantic encoder), optionally IDFSR-shaped.

:class:`DiffAEEncoder` is phizaz/diffae ``BeatGANsEncoderModel`` with ``use_time_condition=False`` and
``pool='adaptivenonzero'``: a half UNet whose head [GN, SiLU, AdaptiveAvgPool2d(1), Conv1x1(C -> 512), Flatten]
gives the semantic (style) code ``z_sem``, ``B x 512``.

:class:`DiffAEUNet` is ``BeatGANsAutoencModel`` (``resnet_two_cond=True``; no latent DPM): every UNet ResBlock is
modulated by the time embedding (scale and shift) and by ``z_sem`` (scale), AdaGN (IDFSR Eq. 2-4). Parameter names
follow the reference (``time_embed.time_embed.{0,2}``, ``input_blocks.N.M``, ``middle_block.{0,1,2}``,
``output_blocks.N.M``, ``out.{0,2}``, ``encoder.*``), so DiffAE's published checkpoints load strictly (see
:mod:`.diffae_checkpoint`).

IDFSR (appendix E.2) changes two things, both switches here:

* ``in_channels=6``: the noisy image ``x_t`` concatenated with the masked LR ``I_M`` (only ``input_blocks.0.0``
  changes shape). The semantic encoder keeps its own ``enc_in_channels`` (3: the warped reference ``I_W``); DiffAE
  passes one ``in_channels`` to both, a trap of phizaz/diffae ``model/unet_autoenc.py``.
* ``attention='identity'``: every UNet self-attention block (encoder side, middle, decoder side) becomes an
  :class:`~portraitisr.models.conditioning.IdentityCrossAttention` on the ``id_channels``-wide identity embedding.
  The semantic encoder keeps self-attention: it sees only ``I_W`` (``z_s = E_s(I_W)``, section 3.1).

Layer sizes follow the reference's bookkeeping exactly: attention where the running resolution (starting at
``image_size``) is in ``attention_resolutions``; skip features stored and popped per level; a ResBlock with
``down=True`` / ``up=True`` between levels (``resblock_updown``).
"""
from typing import Optional, Sequence

from torch import Tensor, nn

from portraitisr.models.conditioning.identity_cross_attention import IdentityCrossAttention
from portraitisr.registry import BACKBONES
from .diffae_blocks import (AttentionBlock, Downsample, ResBlock, TimestepSequential, Upsample, normalization,
                            timestep_embedding, zero_module)

#: ``templates.py:ffhq256_autoenc`` of phizaz/diffae (and IDFSR Table 4): the full-size network
FFHQ256_AUTOENC = dict(image_size=256, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                       attention_resolutions=(16, ), embed_channels=512, dropout=0.1,
                       enc_channel_mult=(1, 1, 2, 2, 4, 4, 4), enc_num_res_blocks=2, enc_out_channels=512,
                       num_heads=1, num_head_channels=-1, resblock_updown=True, resnet_use_zero_module=True)


def _attention(channels: int, kind: str, id_channels: int, num_heads: int, num_head_channels: int) -> nn.Module:
    if kind == 'identity':
        return IdentityCrossAttention(channels, id_channels, num_heads, num_head_channels)
    return AttentionBlock(channels, num_heads, num_head_channels)


class DiffAEEncoder(nn.Module):
    """DiffAE's semantic encoder: ``B x in_channels x S x S`` in [-1, 1] -> ``z_sem`` ``B x out_channels``.

    Args follow ``BeatGANsEncoderConfig`` (without time conditioning, ``pool='adaptivenonzero'``).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 num_heads: int = 1, num_head_channels: int = -1, resblock_updown: bool = True,
                 conv_resample: bool = True) -> None:
        super().__init__()
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                layers = [ResBlock(ch, None, 0.0, out_channels=out, use_condition=False)]
                ch = out
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                self.input_blocks.append(TimestepSequential(*layers))
            if level != len(channel_mult) - 1:
                resolution //= 2
                down = (ResBlock(ch, None, 0.0, out_channels=ch, use_condition=False, down=True) if resblock_updown
                        else Downsample(ch, conv_resample, out_channels=ch))
                self.input_blocks.append(TimestepSequential(down))
        self.middle_block = TimestepSequential(
            ResBlock(ch, None, 0.0, use_condition=False), AttentionBlock(ch, num_heads, num_head_channels),
            ResBlock(ch, None, 0.0, use_condition=False))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                 nn.Conv2d(ch, out_channels, 1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        for block in self.input_blocks:
            h = block(h)
        h = self.middle_block(h).type(x.dtype)
        return self.out(h)


class TimeStyleSeparateEmbed(nn.Module):
    """DiffAE's ``TimeStyleSeperateEmbed``: an MLP on the sinusoidal time embedding; the style passes through."""

    def __init__(self, time_channels: int, time_out_channels: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, time_out_channels), nn.SiLU(),
                                        nn.Linear(time_out_channels, time_out_channels))
        self.style = nn.Identity()

    def forward(self, time_emb: Tensor) -> Tensor:
        return self.time_embed(time_emb)


@BACKBONES.register_module()
class DiffAEUNet(nn.Module):
    """BeatGANs autoencoder UNet of DiffAE (``resnet_two_cond=True``), with IDFSR's switches.

    Args:
        image_size: resolution the attention levels refer to (256 for FFHQ-256).
        in_channels: UNet input channels (3 for DiffAE; 6 for IDFSR: ``x_t`` + masked LR).
        out_channels: predicted noise channels (3).
        model_channels / channel_mult / num_res_blocks / attention_resolutions / embed_channels / dropout /
            num_heads / num_head_channels / resblock_updown / resnet_use_zero_module / conv_resample /
            num_input_res_blocks / input_channel_mult: as ``BeatGANsUNetConfig``.
        enc_in_channels: semantic-encoder input channels (3).
        enc_channel_mult / enc_num_res_blocks / enc_attn_resolutions / enc_out_channels: the semantic encoder
            (``BeatGANsAutoencConfig``; ``enc_attn_resolutions`` defaults to ``attention_resolutions``).
        attention: ``'self'`` (DiffAE) or ``'identity'`` (IDFSR: cross-attention on identity embeddings).
        id_channels: width of the identity embedding for ``attention='identity'``.
        use_style: build the semantic encoder and the style modulation (``cond_emb_layers``); ``False`` drops
            both (IDFSR section 5.4, case 5: no style embedding).

    ``forward(x, t, cond=None, x_start=None, identity=None) -> B x out_channels x H x W``: ``x`` the UNet input in
    [-1, 1] units, ``t`` ``(B,)`` timesteps, ``cond`` a ready style code ``B x enc_out_channels`` (else it is
    encoded from ``x_start``), ``identity`` ``B x id_channels`` or ``B x N x id_channels`` for ``'identity'``.
    """

    def __init__(self, image_size: int = 256, in_channels: int = 3, out_channels: int = 3, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16, ), embed_channels: int = 512, dropout: float = 0.1,
                 num_heads: int = 1, num_head_channels: int = -1, resblock_updown: bool = True,
                 resnet_use_zero_module: bool = True, conv_resample: bool = True,
                 num_input_res_blocks: Optional[int] = None, input_channel_mult: Optional[Sequence[int]] = None,
                 enc_in_channels: int = 3, enc_channel_mult: Optional[Sequence[int]] = (1, 1, 2, 2, 4, 4, 4),
                 enc_num_res_blocks: int = 2, enc_attn_resolutions: Optional[Sequence[int]] = None,
                 enc_out_channels: int = 512, attention: str = 'self', id_channels: int = 512,
                 use_style: bool = True) -> None:
        super().__init__()
        if attention not in ('self', 'identity'):
            raise ValueError(f"attention must be 'self' or 'identity', got {attention!r}")
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.channel_mult = model_channels, tuple(channel_mult)
        self.attention, self.id_channels, self.use_style = attention, id_channels, use_style
        self.enc_in_channels, self.enc_out_channels = enc_in_channels, enc_out_channels
        self.time_embed = TimeStyleSeparateEmbed(model_channels, embed_channels)
        block = dict(dropout=dropout, two_cond=use_style, use_zero_module=resnet_use_zero_module,
                     cond_emb_channels=enc_out_channels)
        attn = dict(kind=attention, id_channels=id_channels, num_heads=num_heads, num_head_channels=num_head_channels)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans = [[] for _ in channel_mult]
        input_block_chans[0].append(ch)
        self.input_num_blocks = [0] * len(channel_mult)
        self.input_num_blocks[0] = 1
        self.output_num_blocks = [0] * len(channel_mult)
        resolution = image_size
        for level, mult in enumerate(input_channel_mult or channel_mult):
            for _ in range(num_input_res_blocks or num_res_blocks):
                out = int(mult * model_channels)
                layers = [ResBlock(ch, embed_channels, out_channels=out, **block)]
                ch = out
                if resolution in attention_resolutions:
                    layers.append(_attention(ch, **attn))
                self.input_blocks.append(TimestepSequential(*layers))
                input_block_chans[level].append(ch)
                self.input_num_blocks[level] += 1
            if level != len(channel_mult) - 1:
                resolution //= 2
                down = (ResBlock(ch, embed_channels, out_channels=ch, down=True, **block) if resblock_updown
                        else Downsample(ch, conv_resample, out_channels=ch))
                self.input_blocks.append(TimestepSequential(down))
                input_block_chans[level + 1].append(ch)
                self.input_num_blocks[level + 1] += 1
        self.middle_block = TimestepSequential(ResBlock(ch, embed_channels, **block), _attention(ch, **attn),
                                               ResBlock(ch, embed_channels, **block))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                # fewer encoder than decoder blocks leave some decoder blocks without a lateral (the reference's rule)
                ich = input_block_chans[level].pop() if input_block_chans[level] else 0
                out = int(model_channels * mult)
                layers = [ResBlock(ch + ich, embed_channels, out_channels=out, has_lateral=ich > 0, **block)]
                ch = out
                if resolution in attention_resolutions:
                    layers.append(_attention(ch, **attn))
                if level and i == num_res_blocks:
                    resolution *= 2
                    layers.append(ResBlock(ch, embed_channels, out_channels=ch, up=True, **block) if resblock_updown
                                  else Upsample(ch, conv_resample, out_channels=ch))
                self.output_blocks.append(TimestepSequential(*layers))
                self.output_num_blocks[level] += 1
        conv = nn.Conv2d(input_ch, out_channels, 3, padding=1)
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(conv) if resnet_use_zero_module else conv)
        self.encoder = DiffAEEncoder(
            image_size, enc_in_channels, model_channels, enc_out_channels, enc_num_res_blocks,
            enc_attn_resolutions or attention_resolutions, enc_channel_mult or channel_mult, num_heads,
            num_head_channels, resblock_updown, conv_resample) if use_style else None

    # ------------------------------------------------------------------------------------------------------------
    def encode(self, x_start: Tensor) -> Tensor:
        """The style code ``z_sem`` (``B x enc_out_channels``) of ``x_start`` (``B x 3 x S x S`` in [-1, 1])."""
        if self.encoder is None:
            raise RuntimeError('this DiffAEUNet was built with use_style=False: it has no semantic encoder')
        return self.encoder(x_start)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, x_start: Optional[Tensor] = None,
                identity: Optional[Tensor] = None) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f'DiffAEUNet expects {self.in_channels} input channels, got {tuple(x.shape)}')
        if self.use_style and cond is None:
            if x_start is None:
                raise ValueError('DiffAEUNet needs the style code `cond` or an image `x_start` to encode')
            cond = self.encode(x_start)
        if not self.use_style:
            cond = None
        if self.attention == 'identity' and identity is None:
            raise ValueError("DiffAEUNet(attention='identity') needs the identity embedding")
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        ident = identity if self.attention == 'identity' else None
        skips = [[] for _ in self.channel_mult]
        h = x.float()
        k = 0
        for level, count in enumerate(self.input_num_blocks):
            for _ in range(count):
                h = self.input_blocks[k](h, emb=emb, cond=cond, identity=ident)
                skips[level].append(h)
                k += 1
        h = self.middle_block(h, emb=emb, cond=cond, identity=ident)
        k = 0
        for level, count in enumerate(self.output_num_blocks):
            for _ in range(count):
                lateral = skips[-level - 1].pop() if skips[-level - 1] else None
                h = self.output_blocks[k](h, emb=emb, cond=cond, lateral=lateral, identity=ident)
                k += 1
        return self.out(h)
