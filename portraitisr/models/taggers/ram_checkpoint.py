"""The official RAM and DAPE checkpoint layouts, mapped strictly onto :class:`~.ram_tagger.RAMTagger`.

``ram_swin_large_14m.pth`` (RAM Swin-L, xinyu1205) is ``{'model': state_dict, ...}`` of the whole RAM/Tag2Text
training model. ``ram/models/utils.py:load_checkpoint_swinlarge`` (cswry/OSEDiff) takes ``checkpoint['model']``,
deletes every ``relative_position_index`` and ``attn_mask`` (derived buffers), renames ``vision_multi`` to
``tagging_head`` and loads with ``strict=False``. Here the same conversion is followed by a strict check:

* every tensor the tagger has must be in the file, with its shape;
* every key of the file must be used, except those under :data:`RAM_UNUSED_PREFIXES` (named, never guessed) and
  the derived buffers in :data:`RAM_DERIVED_BUFFERS`, which the tagger computes itself.

``DAPE.pth`` (SeeSR) is ``lora_state_dict(RAMLora.state_dict())``: a flat dict of every key containing ``lora_``
(``cswry/SeeSR basicsr/models/dape_model.py:save_network_lora``), including the LoRA pairs of the unused
``tag_encoder`` / ``text_decoder`` (never trained; their ``lora_B`` is zero). It is loaded the same way, on top of
the RAM weights: every LoRA tensor of the tagger must be there, nothing but LoRA tensors may be.

A flat dict with exactly the tagger's keys (``RAMTagger.state_dict()`` saved as ``.safetensors``, a much smaller
file than the 5.6 GB original, which also holds the optimiser state) loads as well.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ['RAM_UNUSED_PREFIXES', 'RAM_DERIVED_BUFFERS', 'RAM_RENAMED_PREFIXES', 'ram_state_dict',
           'dape_state_dict', 'load_strict']

#: Parts of the RAM checkpoint that tagging never runs (Tag2Text's image-tag interaction encoder and its
#: image-tag-text caption decoder, ``RAMLora.tag_encoder`` / ``RAMLora.text_decoder``); their first two layers
#: are tied copies of the tagging head. In DAPE.pth the same prefixes hold untrained LoRA pairs.
RAM_UNUSED_PREFIXES = ('tag_encoder.', 'text_decoder.')
#: Buffers the reference deletes before loading (``load_checkpoint_swinlarge``) and the Swin encoder derives.
RAM_DERIVED_BUFFERS = ('relative_position_index', 'attn_mask')
#: Renamed by ``load_checkpoint_swinlarge``: the tagging head was called ``vision_multi`` in training.
RAM_RENAMED_PREFIXES = {'vision_multi.': 'tagging_head.'}


def _tensors(state: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f'{where}: entries that are not tensors: {bad[:5]}{" ..." if len(bad) > 5 else ""}')
    return dict(state)


def ram_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The RAM tensors of an official ``ram_swin_large_14m.pth`` (``{'model': ...}``) or of a flat state dict,
    renamed and without the derived buffers and the unused prefixes (see the module docstring)."""
    if isinstance(checkpoint.get('model'), Mapping):
        state = _tensors(checkpoint['model'], "the RAM checkpoint's 'model'")
    else:
        state = _tensors(checkpoint, 'the RAM checkpoint')
    converted = {}
    for key, value in state.items():
        for old, new in RAM_RENAMED_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith(RAM_UNUSED_PREFIXES) or key.rsplit('.', 1)[-1] in RAM_DERIVED_BUFFERS:
            continue
        converted[key] = value
    return converted


def dape_state_dict(checkpoint: Mapping[str, Any], tied_layers: int = 2) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``DAPE.pth`` (flat ``{name: tensor}``, every name containing ``lora_``), without the
    unused prefixes. Anything that is not a LoRA tensor is refused: DAPE changes nothing else.

    RAMLora ties the weights of ``tag_encoder`` layers ``0 .. tied_layers - 1`` to the tagging head
    (``tie_encoder_decoder_weights``) but not their LoRA pairs, and loralib's ``.eval()`` adds *each* LoRA's update
    into the shared weight. So the reference's tagging head also carries the ``tag_encoder`` cross-attention LoRA
    of those layers; in DAPE.pth it is zero (no gradient reaches the unused encoder, ``lora_B`` keeps its zero
    initialisation), which is what ignoring it assumes. A file where it is not zero is refused.
    """
    state = _tensors(checkpoint, 'the DAPE checkpoint')
    other = sorted(k for k in state if 'lora_' not in k)
    if other:
        raise ValueError(f'the DAPE checkpoint holds tensors that are not LoRA weights ({other[:5]}'
                         f'{" ..." if len(other) > 5 else ""}); DAPE.pth is a flat dict of lora_A / lora_B only')
    tied = [f'tag_encoder.encoder.layer.{i}.crossattention.self.{name}.lora_B'
            for i in range(tied_layers) for name in ('query', 'key')]
    nonzero = [k for k in tied if k in state and bool(state[k].any())]
    if nonzero:
        raise ValueError(f'the DAPE checkpoint has a non-zero LoRA on tag_encoder layers tied to the tagging head '
                         f'({nonzero[0]}); the reference would add it to the tagging head, this tagger does not')
    return {k: v for k, v in state.items() if not k.startswith(RAM_UNUSED_PREFIXES)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], wanted: set[str], what: str) -> None:
    """Copy ``state`` into the ``wanted`` tensors of ``module``: both key sets must be equal and every shape must
    match, else one ``ValueError`` naming the missing, unexpected and mis-shaped keys of ``what``."""
    own = module.state_dict()
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    shapes = sorted(f'{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}'
                    for k in wanted & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def listed(items: list) -> str:
            return ', '.join(items[:8]) + (f' ... ({len(items)} in all)' if len(items) > 8 else '')
        problems = [f'missing {listed(missing)}' if missing else '',
                    f'unexpected {listed(unexpected)}' if unexpected else '',
                    f'wrong shape {listed(shapes)}' if shapes else '']
        raise ValueError(f'{what} does not match the tagger: ' + '; '.join(p for p in problems if p))
    with torch.no_grad():
        for key in wanted:
            own[key].copy_(state[key])
