"""Read and write the official PiSA-SR release format (``pisa_sr.pkl``).

The release is a ``torch.save`` dict written by csslc/PiSA-SR ``pisasr.py:PiSASR.save_model``::

    unet_lora_encoder_modules_pix, unet_lora_decoder_modules_pix, unet_lora_others_modules_pix   list[str]
    unet_lora_encoder_modules_sem, unet_lora_decoder_modules_sem, unet_lora_others_modules_sem   list[str]
    lora_rank_unet_pix, lora_rank_unet_sem                                                       int (4, 4)
    state_dict_unet   the UNet's peft-named LoRA tensors of both adapter sets, e.g.
                      ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default_encoder_sem.weight``

Nothing else: no VAE tensors (PiSA-SR's VAE is frozen) and no ``conv_in`` base weights. It holds only strings, ints
and tensors, so ``torch.load(weights_only=True)`` reads it safely. Loading is strict: every key of the layout must
be there and nothing else, the module lists must name exactly the modules the backbone's adapters target, and
every LoRA tensor of the backbone must come from the file, so a file of another method or architecture fails with
a message instead of loading half.

The functions take any backbone with PiSA-SR's adapters (:class:`~portraitisr.models.backbones.PiSASD`): a
``unet`` with the six adapters, ``unet_lora_targets``, ``lora_rank_pix`` and ``lora_rank_sem``.
"""
from typing import Dict, Union

import torch
from torch import Tensor, nn

# adapter name -> the checkpoint key of its module list (PiSA-SR ``save_model``)
PISASR_LIST_KEYS = {
    'default_encoder_pix': 'unet_lora_encoder_modules_pix',
    'default_decoder_pix': 'unet_lora_decoder_modules_pix',
    'default_others_pix': 'unet_lora_others_modules_pix',
    'default_encoder_sem': 'unet_lora_encoder_modules_sem',
    'default_decoder_sem': 'unet_lora_decoder_modules_sem',
    'default_others_sem': 'unet_lora_others_modules_sem',
}
PISASR_RANK_KEYS = ('lora_rank_unet_pix', 'lora_rank_unet_sem')
PISASR_CHECKPOINT_KEYS = tuple(PISASR_LIST_KEYS.values()) + PISASR_RANK_KEYS + ('state_dict_unet', )


def _lora_state(unet: nn.Module) -> Dict[str, Tensor]:
    # PiSA-SR saves ``{k: v for k, v in unet.state_dict().items() if "lora" in k}``
    return {k: v for k, v in unet.state_dict().items() if 'lora' in k}


def export_pisasr_checkpoint(backbone: nn.Module) -> dict:
    """The backbone's LoRA tensors and module lists in PiSA-SR's release layout (``torch.save`` it)."""
    checkpoint = {key: list(backbone.unet_lora_targets[adapter]) for adapter, key in PISASR_LIST_KEYS.items()}
    checkpoint.update(lora_rank_unet_pix=int(backbone.lora_rank_pix), lora_rank_unet_sem=int(backbone.lora_rank_sem),
                      state_dict_unet={k: v.detach().cpu().clone() for k, v in _lora_state(backbone.unet).items()})
    return checkpoint


def load_pisasr_checkpoint(backbone: nn.Module, checkpoint: Union[str, Dict]) -> None:
    """Load an official PiSA-SR checkpoint (path or loaded dict) into ``backbone``, strictly.

    Raises:
        KeyError: not PiSA-SR's layout (missing or extra top-level keys), or LoRA tensors missing from / unknown
            to the backbone.
        ValueError: ranks, module lists or tensor shapes that do not match the backbone.
    """
    if isinstance(checkpoint, str):
        checkpoint = torch.load(checkpoint, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict):
        raise KeyError(f'Not a PiSA-SR checkpoint: expected a dict with {list(PISASR_CHECKPOINT_KEYS)}, '
                       f'got {type(checkpoint).__name__}')
    missing = [k for k in PISASR_CHECKPOINT_KEYS if k not in checkpoint]
    extra = sorted(set(checkpoint) - set(PISASR_CHECKPOINT_KEYS))
    if missing or extra:
        raise KeyError(f'Not a PiSA-SR checkpoint: missing keys {missing}, unexpected keys {extra} '
                       f'(found {sorted(checkpoint)})')
    for key, rank in zip(PISASR_RANK_KEYS, (backbone.lora_rank_pix, backbone.lora_rank_sem)):
        if int(checkpoint[key]) != int(rank):
            raise ValueError(f'{key}={checkpoint[key]} but the backbone has LoRA rank {rank}')
    for adapter, key in PISASR_LIST_KEYS.items():
        stored, built = list(checkpoint[key]), list(backbone.unet_lora_targets[adapter])
        if len(stored) != len(set(stored)) or set(stored) != set(built):
            diff = sorted(set(stored) ^ set(built))
            raise ValueError(f'{key} does not match the UNet adapter {adapter!r} ({len(stored)} vs {len(built)} '
                             f'modules); differing: {diff[:5]}')

    state = checkpoint['state_dict_unet']
    own = _lora_state(backbone.unet)
    missing = sorted(set(own) - set(state))
    unknown = sorted(set(state) - set(own))
    if missing or unknown:
        raise KeyError(f'state_dict_unet does not match the backbone: {len(missing)} LoRA tensors missing '
                       f'(e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]})')
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f'{name}: expected a tensor, got {type(value).__name__}')
        if own[name].shape != value.shape:
            raise ValueError(f'{name}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}')
    params = dict(backbone.unet.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params.get(name, own[name]).copy_(value)
