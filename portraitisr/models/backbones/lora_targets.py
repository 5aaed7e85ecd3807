"""Which modules of the SD UNet and VAE get LoRA, following OSEDiff exactly.

OSEDiff (cswry/OSEDiff ``osediff.py``: ``initialize_unet`` / ``initialize_vae``) walks the
parameter names, skips biases and norms, and matches substrings. The resulting module lists are
part of its checkpoint format (``unet_lora_*_modules``, ``vae_lora_encoder_modules``), so we
reproduce the rule rather than pick modules by type. For SD 2.1-base this gives 94 / 148 / 16
UNet modules (encoder / decoder / others) and 32 unique VAE-encoder modules (cswry/OSEDiff
``osediff.py``, ``OSEDiff_gen.__init__``).
"""
from typing import Dict, List

from torch import nn

# OSEDiff ``initialize_unet``: the first matching pattern wins.
UNET_LORA_PATTERNS = ('to_k', 'to_q', 'to_v', 'to_out.0', 'conv', 'conv1', 'conv2', 'conv_in',
                      'conv_shortcut', 'conv_out', 'proj_out', 'proj_in', 'ff.net.2', 'ff.net.0.proj')
# OSEDiff ``initialize_vae``: encoder modules plus ``quant_conv`` (not ``post_quant_conv``).
VAE_LORA_PATTERNS = ('conv1', 'conv2', 'conv_in', 'conv_shortcut', 'conv', 'conv_out', 'to_k',
                     'to_q', 'to_v', 'to_out.0')

UNET_ADAPTERS = ('default_encoder', 'default_decoder', 'default_others')
VAE_ADAPTER = 'default_encoder'


def _lora_candidate_weights(model: nn.Module) -> List[str]:
    """Module names (``x.weight`` -> ``x``) of weights OSEDiff considers: no biases, no norms."""
    names = []
    for name, _ in model.named_parameters():
        if 'bias' in name or 'norm' in name or '.lora_' in name:
            continue
        # peft-wrapped layers expose ``x.base_layer.weight``; the target is still ``x``.
        names.append(name.replace('.base_layer', '').rsplit('.weight', 1)[0])
    return list(dict.fromkeys(names))


def unet_lora_targets(unet: nn.Module) -> Dict[str, List[str]]:
    """Split the UNet's LoRA targets into OSEDiff's three adapters.

    Returns:
        ``{'default_encoder': [...], 'default_decoder': [...], 'default_others': [...]}`` with
        down-blocks + ``conv_in`` in the encoder, up-blocks + ``conv_out`` in the decoder and the
        rest (the mid-block) in others. Time embeddings are never targeted.
    """
    targets = {name: [] for name in UNET_ADAPTERS}
    for module_name in _lora_candidate_weights(unet):
        if not any(pattern in module_name for pattern in UNET_LORA_PATTERNS):
            continue
        if 'down_blocks' in module_name or 'conv_in' in module_name:
            targets['default_encoder'].append(module_name)
        elif 'up_blocks' in module_name or 'conv_out' in module_name:
            targets['default_decoder'].append(module_name)
        else:
            targets['default_others'].append(module_name)
    return targets


def vae_encoder_lora_targets(vae: nn.Module) -> List[str]:
    """The VAE-encoder LoRA targets (unique, in parameter order)."""
    targets = []
    for module_name in _lora_candidate_weights(vae):
        in_encoder = 'encoder' in module_name and any(p in module_name for p in VAE_LORA_PATTERNS)
        is_quant_conv = 'quant_conv' in module_name and 'post_quant_conv' not in module_name
        if in_encoder or is_quant_conv:
            targets.append(module_name)
    return targets


def osediff_vae_module_list(vae: nn.Module) -> List[str]:
    """The VAE module list exactly as OSEDiff stores it in ``vae_lora_encoder_modules``.

    OSEDiff's loop has no ``break``, so a module is listed once per matching pattern (65 entries
    for SD 2.1, 32 unique). Kept only to write checkpoints that OSEDiff's loader accepts.
    """
    entries = []
    for module_name in _lora_candidate_weights(vae):
        for pattern in VAE_LORA_PATTERNS:
            if pattern in module_name and 'encoder' in module_name:
                entries.append(module_name)
            elif 'quant_conv' in module_name and 'post_quant_conv' not in module_name:
                entries.append(module_name)
    return entries


# PiSA-SR (csslc/PiSA-SR ``pisasr.py:initialize_unet``): the same three-way split of the same UNet modules, once
# for the pixel-level and once for the semantic-level LoRA; the adapter names are part of its checkpoint keys.
PISASR_PIXEL_ADAPTERS = ('default_encoder_pix', 'default_decoder_pix', 'default_others_pix')
PISASR_SEMANTIC_ADAPTERS = ('default_encoder_sem', 'default_decoder_sem', 'default_others_sem')


def pisasr_unet_lora_targets(unet: nn.Module) -> Dict[str, List[str]]:
    """PiSA-SR's six UNet adapters: ``{'default_encoder_pix': [...], ..., 'default_others_sem': [...]}``.

    PiSA-SR's rule is OSEDiff's (same patterns, same skips, first matching pattern wins), so each pixel adapter
    and its semantic twin target exactly the modules of OSEDiff's adapter of the same part.
    """
    osediff = unet_lora_targets(unet)
    targets = {}
    for names in (PISASR_PIXEL_ADAPTERS, PISASR_SEMANTIC_ADAPTERS):
        for name, part in zip(names, UNET_ADAPTERS):
            targets[name] = list(osediff[part])
    return targets
