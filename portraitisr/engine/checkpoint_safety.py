"""Checkpoints that ``torch.load(weights_only=True)`` reads, so resume works on torch >= 2.6.

torch 2.6 made ``weights_only=True`` the default of ``torch.load``; mmengine 0.10.7 loads
checkpoints without the argument (mmengine#1655), and its message hub pickles
``HistoryBuffer`` objects, their numpy arrays, and their statistics as bound methods (reached
through ``builtins.getattr``, which no safe allow-list should admit). Rather than switch safety
off or allow ``getattr``, we store each buffer as plain tensors on save and rebuild it on load:
numpy values of the runtime info become Python numbers or tensors. The checkpoint then holds
nothing but tensors, numbers, strings and containers.
"""
from typing import Any, Dict

import numpy as np
import torch
from mmengine.hooks import Hook

from portraitisr.registry import HOOKS

_ENCODED = '__history_buffer__'


def encode_history_buffers(message_hub_state: Dict) -> None:
    """Replace the ``HistoryBuffer`` values of ``log_scalars`` by tensors, in place."""
    from mmengine.logging import HistoryBuffer

    scalars = message_hub_state.get('log_scalars', {})
    for key, buffer in list(scalars.items()):
        if isinstance(buffer, HistoryBuffer):
            log, count = buffer.data
            scalars[key] = {_ENCODED: True, 'log_history': torch.as_tensor(log, dtype=torch.float64),
                            'count_history': torch.as_tensor(count, dtype=torch.float64),
                            'max_length': int(buffer.max_length)}


def to_plain(value: Any) -> Any:
    """numpy scalars -> Python numbers and numpy arrays -> tensors, through dicts/lists/tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return type(value)((k, to_plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def decode_history_buffers(message_hub_state: Dict) -> None:
    """Inverse of :func:`encode_history_buffers`, in place."""
    from mmengine.logging import HistoryBuffer

    scalars = message_hub_state.get('log_scalars', {})
    for key, value in list(scalars.items()):
        if isinstance(value, dict) and value.get(_ENCODED):
            scalars[key] = HistoryBuffer(value['log_history'].tolist(),
                                         value['count_history'].tolist(), value['max_length'])


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Save checkpoints in a form that loads with ``torch.load(weights_only=True)``."""

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            encode_history_buffers(checkpoint['message_hub'])
            # e.g. the logger's ``eta`` is a numpy float
            checkpoint['message_hub']['runtime_info'] = to_plain(
                checkpoint['message_hub'].get('runtime_info', {}))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            decode_history_buffers(checkpoint['message_hub'])
