"""Read and write the official OSEDiff release format (``osediff.pkl``, ``osediff_face.pkl``).

The release is a ``torch.save`` dict (cswry/OSEDiff ``osediff.py``, ``OSEDiff_gen.save_model``)::

    vae_lora_encoder_modules   list[str]  (65 entries for SD 2.1, with duplicates)
    unet_lora_encoder_modules  list[str]  (94)
    unet_lora_decoder_modules  list[str]  (148)
    unet_lora_others_modules   list[str]  (16)
    rank_unet, rank_vae        int        (4, 4)
    state_dict_unet            peft-named LoRA tensors + conv_in.base_layer.{weight,bias}
    state_dict_vae             peft-named VAE-encoder LoRA tensors (adapter ``default_encoder``)

It holds only strings, ints and tensors, so ``load_state_dict`` (``torch.load(weights_only=True)``) reads it safely.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Union

import torch
from torch import Tensor

from portraitisr.weights import load_state_dict

from .lora_targets import osediff_vae_module_list

if TYPE_CHECKING:  # only annotations: one_step_sd imports this module to load OSEDiff releases
    from .one_step_sd import OneStepSD

_UNET_LIST_KEYS = {'default_encoder': 'unet_lora_encoder_modules',
                   'default_decoder': 'unet_lora_decoder_modules',
                   'default_others': 'unet_lora_others_modules'}


def export_osediff_checkpoint(backbone: OneStepSD) -> dict:
    """The backbone's trained tensors in OSEDiff's release layout (4-channel conv_in only)."""
    if backbone.in_channels != 4:
        raise ValueError('The OSEDiff format has a 4-channel conv_in; this backbone has '
                         f'{backbone.in_channels}. Use OneStepSD.save_trainable instead.')
    unet_state = {k: v.detach().cpu() for k, v in backbone.unet.state_dict().items()
                  if 'lora' in k or 'conv_in' in k}
    vae_state = {k: v.detach().cpu() for k, v in backbone.vae.state_dict().items() if 'lora' in k}
    checkpoint = {key: list(backbone.unet_lora_targets[adapter])
                  for adapter, key in _UNET_LIST_KEYS.items()}
    checkpoint.update(vae_lora_encoder_modules=osediff_vae_module_list(backbone.vae),
                      rank_unet=backbone.lora_rank, rank_vae=backbone.lora_rank,
                      state_dict_unet=unet_state, state_dict_vae=vae_state)
    return checkpoint


def _pad_input_channels(tensor: Tensor, channels: int) -> Tensor:
    """Zero-pad dim 1 (input channels of a conv weight) up to ``channels``."""
    if tensor.shape[1] == channels:
        return tensor
    padded = tensor.new_zeros(tensor.shape[0], channels, *tensor.shape[2:])
    padded[:, :tensor.shape[1]] = tensor
    return padded


def load_osediff_checkpoint(backbone: OneStepSD, checkpoint: Union[str, Dict]) -> None:
    """Load an official OSEDiff checkpoint (path or loaded dict) into ``backbone``.

    The stored module lists must name the adapters this backbone built (same rule, same SD
    architecture) and the stored ranks must equal the backbone's; the file does not store
    ``lora_alpha``, which OSEDiff left at peft's default 8. A 4-channel ``conv_in`` is zero-padded
    into a wider one (HeadsUp initialised from OSEDiff).
    """
    if isinstance(checkpoint, str):
        checkpoint = load_state_dict(checkpoint)  # weights_only; a pickled object is refused in one line
    required = list(_UNET_LIST_KEYS.values()) + ['vae_lora_encoder_modules', 'rank_unet',
                                                  'rank_vae', 'state_dict_unet', 'state_dict_vae']
    missing = [k for k in required if k not in checkpoint]
    if missing:
        raise KeyError(f'Not an OSEDiff checkpoint: missing keys {missing} (found '
                       f'{sorted(checkpoint)})')
    for rank_key in ('rank_unet', 'rank_vae'):
        if int(checkpoint[rank_key]) != backbone.lora_rank:
            raise ValueError(f'{rank_key}={checkpoint[rank_key]} but the backbone has LoRA rank '
                             f'{backbone.lora_rank}')
    for adapter, key in _UNET_LIST_KEYS.items():
        if set(checkpoint[key]) != set(backbone.unet_lora_targets[adapter]):
            diff = set(checkpoint[key]) ^ set(backbone.unet_lora_targets[adapter])
            raise ValueError(f'{key} does not match the UNet adapter {adapter!r}; differing '
                             f'modules: {sorted(diff)[:5]}')
    if set(checkpoint['vae_lora_encoder_modules']) != set(backbone.vae_lora_targets):
        raise ValueError('vae_lora_encoder_modules does not match the VAE-encoder adapter')

    _copy_into(backbone.unet, checkpoint['state_dict_unet'], backbone.in_channels)
    _copy_into(backbone.vae, checkpoint['state_dict_vae'], None)


def _copy_into(module: torch.nn.Module, state: Dict[str, Tensor], conv_in_channels) -> None:
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f'{len(unknown)} checkpoint tensors have no counterpart, e.g. {unknown[:3]}')
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if conv_in_channels is not None and name in ('conv_in.base_layer.weight',
                                                         'conv_in.lora_A.default_encoder.weight'):
                value = _pad_input_channels(value, conv_in_channels)
            target = params.get(name, own[name])
            if target.shape != value.shape:
                raise ValueError(f'{name}: checkpoint {tuple(value.shape)} vs model '
                                 f'{tuple(target.shape)}')
            target.copy_(value)
