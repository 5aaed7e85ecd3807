"""Loading checkpoints without running code: safetensors, or ``torch.load(weights_only=True)`` on a safe torch.

:func:`load_state_dict` reads a file; :func:`load_module_weights` resolves a weight spec, finds the tensors inside
whatever a training framework wrapped them in, and copies them into a module strictly. torch and safetensors are
imported by these functions, not by importing this module, so the weights floor stays cheap to import.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import CheckpointLoadError
from .files import WeightSpec, resolve_file

if TYPE_CHECKING:
    from torch import nn

__all__ = ['MIN_SAFE_TORCH', 'load_state_dict', 'load_module_weights']

#: The first torch whose ``weights_only=True`` unpickler has no published bypass: CVE-2025-32434
#: (GHSA-53q9-r3pm-6pq6, code execution, fixed in 2.6.0) and CVE-2026-24747 (GHSA-63cw-57p8-fm3p, memory
#: corruption through crafted opcodes and storage sizes, fixed in 2.10.0). setup.py requires it too.
MIN_SAFE_TORCH = (2, 10)


def _torch_version(version: str) -> tuple[int, int]:
    major, minor = re.match(r'(\d+)\.(\d+)', version).groups()
    return int(major), int(minor)


def load_state_dict(path: Union[str, 'os.PathLike[str]'], map_location: Any = 'cpu', *,
                    safe_globals: Sequence[Any] = (), mmap: bool = False) -> dict:
    """Load a checkpoint without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``.
    A file that needs other Python objects is refused (never retried with ``weights_only=False``). Pickled files
    are refused on a torch older than :data:`MIN_SAFE_TORCH`, whose ``weights_only`` can be bypassed.

    Args:
        path: the checkpoint file.
        map_location: device for the tensors (``'cpu'``, ``'cuda:0'``, a ``torch.device``; for torch files
            anything ``torch.load`` accepts).
        safe_globals: extra classes/functions the caller trusts in a torch pickle (e.g. the few mmengine types
            in a training checkpoint); passed to ``torch.serialization.safe_globals``.
        mmap: memory-map the tensors of a torch zip file instead of reading them (to look at metadata cheaply).

    Returns:
        The checkpoint's top-level dict (a state dict, or a dict that holds one, e.g. ``{'params_ema': ...}``).

    Raises:
        CheckpointLoadError: the file needs arbitrary unpickling, or is not a valid checkpoint (one-line message).
        TypeError: the checkpoint is not a dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
        try:
            return load_file(str(path), device=device)
        except SafetensorError as error:
            raise CheckpointLoadError(f'{path} is not a valid safetensors file: {error}') from error

    if _torch_version(torch.__version__) < MIN_SAFE_TORCH:
        raise CheckpointLoadError(
            f'{path}: refusing to unpickle a checkpoint with torch {torch.__version__}; its weights_only loader '
            f'has published bypasses (fixed in torch {".".join(map(str, MIN_SAFE_TORCH))}): upgrade torch, or '
            'convert the file to safetensors on a machine with a current torch')
    guard = torch.serialization.safe_globals(list(safe_globals)) if safe_globals else contextlib.nullcontext()
    try:
        with guard:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        detail = next((line.strip() for line in str(error).splitlines() if 'WeightsUnpickler error' in line),
                      str(error).splitlines()[0] if str(error) else type(error).__name__)
        unsupported = re.search(r'Unsupported global: GLOBAL (\S+)', detail)
        if unsupported:
            # Name the offending object (not torch's advice to allow-list it); the fix is to re-save the tensors.
            raise CheckpointLoadError(
                f'{path} contains pickled Python objects that portraitisr will not load (it needs '
                f'{unsupported.group(1)}); loading it would mean running arbitrary code. Re-save only its tensors, '
                'in a trusted environment, as safetensors or a plain dict of tensors; or, if you trust exactly '
                'those types, pass them in safe_globals=.') from error
        raise CheckpointLoadError(f'{path} is not a readable torch checkpoint ({detail})') from error
    except (RuntimeError, EOFError, ValueError) as error:  # a truncated zip archive, an empty file, ...
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointLoadError(f'{path} is not a readable torch checkpoint ({detail})') from error
    if not isinstance(checkpoint, dict):
        raise TypeError(f'{path} holds a {type(checkpoint).__name__}, not a dict of tensors')
    return checkpoint


# Containers in which training frameworks nest the state dict of the network.
_NESTED_KEYS = ('state_dict', 'params_ema', 'params', 'model', 'net')


def _unwrap(checkpoint: Mapping[str, Any]) -> dict:
    """Find the dict of tensors inside a checkpoint (``{'state_dict': ...}``, ``{'params_ema': ...}``, ...)."""
    import torch

    current: Mapping[str, Any] = checkpoint
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in current.values()):
            break
        nested = next((current[k] for k in _NESTED_KEYS if isinstance(current.get(k), Mapping)), None)
        if nested is None:
            break
        current = nested
    return {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(state: dict, expected: set[str], prefixes: Sequence[str]) -> dict:
    """Remove the first prefix (``module.``, ``model.``, ...) under which the checkpoint's keys match best."""
    best, best_hits = state, len(expected & set(state))
    for prefix in prefixes:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected & set(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_module_weights(module: 'nn.Module', weights: WeightSpec, *,
                        prefixes: Sequence[str] = ('module.', 'model.', 'net.', 'model.net.', 'backbone.'),
                        ignore_extra: Sequence[str] = ()) -> str:
    """Resolve ``weights``, load the checkpoint safely and copy it into ``module`` with ``strict=True``.

    The checkpoint may nest the tensors (``state_dict`` / ``params_ema`` / ...) and prefix the keys (DataParallel's
    ``module.``, Lightning's ``model.``, wrappers' ``net.``); the prefix under which most keys match is removed.
    Keys that start with one of ``ignore_extra`` (e.g. a training head) are dropped. BatchNorm
    ``num_batches_tracked`` buffers absent from old checkpoints are filled with zeros: they do not affect eval.

    Args:
        module: the network to fill.
        weights: any :func:`~portraitisr.weights.files.resolve_file` spec (a path, a cached file name, a URL, a dict).
        prefixes: key prefixes to try removing.
        ignore_extra: key prefixes to drop before the strict load.

    Returns:
        The path of the loaded file, as a string.

    Raises:
        WeightsNotFoundError: ``weights`` resolves to no file.
        CheckpointLoadError: the file cannot be loaded safely.
        RuntimeError: the tensors do not fit ``module`` (missing or unexpected keys, other shapes), naming the file.
    """
    import torch

    path = resolve_file(weights)
    expected = set(module.state_dict())
    state = _strip_prefix(_unwrap(load_state_dict(path)), expected, prefixes)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_extra)}
    for key in expected - set(state):
        if key.endswith('num_batches_tracked'):
            state[key] = torch.zeros((), dtype=torch.long)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f'{path} does not fit {type(module).__name__}: {error}') from error
    return str(path)
