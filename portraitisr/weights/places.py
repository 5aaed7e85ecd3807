"""Where weights live: portraitisr's own cache, the download permission, and the caches other libraries fill.

``$PORTRAITISR_HOME`` (default ``~/.cache/portraitisr``) holds what portraitisr downloads and what users put there;
the torch hub, pyiqa, CLIP, facenet-pytorch and facexlib folders and the Hugging Face cache are looked at too (their
files count only with a matching sha256, see :mod:`portraitisr.weights.files`). Every folder is read from the
environment at call time, so a test or a user can redirect it in-process. Nothing here imports torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

__all__ = ['ENV_HOME', 'ENV_ALLOW_DOWNLOAD', 'portraitisr_home', 'download_allowed', 'torch_hub_dir',
           'hf_hub_cache_dir', 'file_cache_dirs']

ENV_HOME = 'PORTRAITISR_HOME'
ENV_ALLOW_DOWNLOAD = 'PORTRAITISR_ALLOW_DOWNLOAD'
_TRUE_STRINGS = {'1', 'true', 'yes', 'on'}


def portraitisr_home() -> Path:
    """The portraitisr cache folder: ``$PORTRAITISR_HOME`` or ``~/.cache/portraitisr``. Downloads go here."""
    return Path(os.environ.get(ENV_HOME) or '~/.cache/portraitisr').expanduser()


def download_allowed(allow_download: Optional[bool] = None) -> bool:
    """Whether a download may happen: ``allow_download`` if given, else env ``PORTRAITISR_ALLOW_DOWNLOAD``."""
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ENV_ALLOW_DOWNLOAD, '').strip().lower() in _TRUE_STRINGS


def _torch_home() -> Path:
    xdg = os.environ.get('XDG_CACHE_HOME') or '~/.cache'
    return Path(os.environ.get('TORCH_HOME') or os.path.join(xdg, 'torch')).expanduser()


def torch_hub_dir() -> Path:
    """torch's hub folder (``$TORCH_HOME/hub``), computed without importing torch when torch is not loaded.

    When torch is already imported, ``torch.hub.get_dir()`` is used so that ``torch.hub.set_dir`` is honoured;
    before torch is imported nobody can have called it, so the environment gives the same answer.
    """
    if 'torch' in sys.modules:
        import torch.hub
        return Path(torch.hub.get_dir()).expanduser()
    return _torch_home() / 'hub'


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time.

    ``HF_HUB_CACHE``, then the legacy ``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub``, then
    ``$XDG_CACHE_HOME/huggingface/hub``. huggingface_hub reads these once at import, so they are read here
    again to honour changes made later in the process.
    """
    for var in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get('HF_HOME'):
        return Path(os.environ['HF_HOME']).expanduser() / 'hub'
    xdg = os.environ.get('XDG_CACHE_HOME') or '~/.cache'
    return Path(xdg).expanduser() / 'huggingface' / 'hub'


def file_cache_dirs() -> list[tuple[str, Path]]:
    """Folders other libraries download single weight files into, as (label, folder), searched by base name."""
    hub = torch_hub_dir()
    dirs = [
        ('torch hub checkpoints', hub / 'checkpoints'),  # torchvision, torch.hub.load_state_dict_from_url
        ('pyiqa cache', hub / 'pyiqa'),  # pyiqa's load_file_from_url
        ('CLIP cache', hub / 'clip'),  # openai-clip (CLIPIQA's RN50.pt)
        ('TORCH_HOME checkpoints', _torch_home() / 'checkpoints'),  # facenet-pytorch
    ]
    # facexlib downloads into its own package folder; find_spec locates it without importing it.
    try:
        import importlib.util
        spec = importlib.util.find_spec('facexlib')
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        dirs.append(('facexlib weights', Path(spec.origin).parent / 'weights'))
    return dirs
