"""diffusers' VAE encoder and decoder as chains of stages, so all tiles of an image can run through them in step.

Running tiles stage by stage lets every GroupNorm see statistics pooled over all tiles, computed from inputs that
were themselves normalised with pooled statistics (:func:`.tiled_group_norm.run_tiles_in_step`), as cswry/OSEDiff's
``vaehook`` does with its task queues. The chains follow ``Encoder.forward`` / ``Decoder.forward`` of
``diffusers.models.autoencoders.vae`` without ``latent_embeds`` (SD's VAE);
``tests/test_models/test_backbones/test_tiled_group_norm.py`` checks that each chain reproduces the module's own
forward, so a change in diffusers shows there.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from torch import Tensor, nn

__all__ = ['Stage', 'encoder_stages', 'decoder_stages']


@dataclass
class Stage:
    """One step of a chain: ``fn`` maps the previous stage's output to this one's; ``norms`` are the GroupNorms it
    calls, in call order (each at most once)."""

    fn: Callable[[Tensor], Tensor]
    norms: List[nn.GroupNorm] = field(default_factory=list)


def _group_norms(module: nn.Module) -> List[nn.GroupNorm]:
    # registration order is call order in diffusers' ResnetBlock2D (norm1, conv1, norm2, conv2) and Attention
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


def _block(module: nn.Module, **kwargs) -> Stage:
    return Stage(functools.partial(module, **kwargs) if kwargs else module, _group_norms(module))


def _mid_block(mid: nn.Module) -> List[Stage]:
    stages = [_block(mid.resnets[0], temb=None)]
    for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attention is not None:
            stages.append(_block(attention, temb=None))
        stages.append(_block(resnet, temb=None))
    return stages


def _tail(net: nn.Module, after: Optional[Callable[[Tensor], Tensor]] = None) -> Stage:
    def fn(x: Tensor) -> Tensor:
        x = net.conv_out(net.conv_act(net.conv_norm_out(x)))
        return after(x) if after is not None else x
    return Stage(fn, [net.conv_norm_out])


def _eager(module: nn.Module) -> nn.Module:
    return getattr(module, '_orig_mod', module)  # under torch.compile, the stages call the eager modules


def encoder_stages(vae: nn.Module) -> List[Stage]:
    """``vae.quant_conv(vae.encoder(x))`` (``B x 3 x H x W`` -> moments ``B x 2C x H/8 x W/8``) as stages."""
    encoder = _eager(vae.encoder)
    stages = [Stage(encoder.conv_in)]
    for down in encoder.down_blocks:
        stages += [_block(resnet, temb=None) for resnet in down.resnets]
        stages += [Stage(sampler) for sampler in (down.downsamplers or [])]
    stages += _mid_block(encoder.mid_block)
    stages.append(_tail(encoder, vae.quant_conv))
    return stages


def decoder_stages(vae: nn.Module) -> List[Stage]:
    """``vae.decoder(vae.post_quant_conv(z))`` (unscaled latents -> ``B x 3 x 8h x 8w``) as stages."""
    decoder = _eager(vae.decoder)

    def head(z: Tensor) -> Tensor:
        return decoder.conv_in(vae.post_quant_conv(z) if vae.post_quant_conv is not None else z)

    stages = [Stage(head)] + _mid_block(decoder.mid_block)
    for up in decoder.up_blocks:
        stages += [_block(resnet, temb=None) for resnet in up.resnets]
        stages += [Stage(sampler) for sampler in (up.upsamplers or [])]
    stages.append(_tail(decoder))
    return stages
