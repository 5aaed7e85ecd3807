"""The weights floor: find, download, verify and safely load model weights, with no network access unasked.

Every layer needs weights (models, the face stack, metrics, datasets, the engine, the CLI), so they live here on the
ground floor, beside :mod:`portraitisr.registry` and :mod:`portraitisr.utils`, and import nothing above them.

* :mod:`~portraitisr.weights.errors`: what went wrong, with every place looked at and how to provide the file;
* :mod:`~portraitisr.weights.places`: ``$PORTRAITISR_HOME``, the download permission, other libraries' caches;
* :mod:`~portraitisr.weights.checksums`: sha256 digests and trust-on-first-use records;
* :mod:`~portraitisr.weights.download`: one https download, resumable only when safe, checked, atomic;
* :mod:`~portraitisr.weights.files`: :func:`resolve_file`, a weight spec to a local file;
* :mod:`~portraitisr.weights.hub`: :func:`resolve_pretrained_dir`, a diffusers folder from a path or hub id;
* :mod:`~portraitisr.weights.loading`: :func:`load_state_dict` (never unpickles code), :func:`load_module_weights`.

The order is always: the explicit location, then caches that already exist on this machine, then a download, and
the download happens only when it was allowed (``allow_download=True`` or ``PORTRAITISR_ALLOW_DOWNLOAD=1``).
Importing this package is cheap: torch, safetensors and huggingface_hub are imported only by the functions that
need them.
"""
from .checksums import sha256_of, tofu_record_path
from .download import check_download_url, download_file
from .errors import CheckpointLoadError, ChecksumError, InsecureURLError, WeightsNotFoundError
from .files import WeightSpec, resolve_file
from .hub import DEFAULT_HUB_IGNORE_PATTERNS, resolve_pretrained_dir
from .loading import MIN_SAFE_TORCH, load_module_weights, load_state_dict
from .places import ENV_ALLOW_DOWNLOAD, ENV_HOME, download_allowed, hf_hub_cache_dir, portraitisr_home, torch_hub_dir

__all__ = [
    'WeightsNotFoundError', 'ChecksumError', 'CheckpointLoadError', 'InsecureURLError', 'WeightSpec',
    'ENV_HOME', 'ENV_ALLOW_DOWNLOAD', 'portraitisr_home', 'download_allowed', 'torch_hub_dir', 'hf_hub_cache_dir',
    'resolve_file', 'download_file', 'check_download_url', 'tofu_record_path', 'resolve_pretrained_dir',
    'load_state_dict', 'load_module_weights', 'sha256_of', 'MIN_SAFE_TORCH', 'DEFAULT_HUB_IGNORE_PATTERNS'
]
