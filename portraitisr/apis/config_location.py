"""Where the configs of named models live: next to the imported ``portraitisr`` package, never the current folder.

A model-zoo name (``portraitisr restore --model osediff_sd21``) stands for a config file shipped with the library.
Looking it up relative to the current folder would let any ``configs/`` folder where the command happens to run
stand in for it (and run its Python); so names resolve only against the folder that holds the imported package (a
source checkout, or an installed tree with its ``configs/``). Any other config file must be given as a path.
Light on purpose (no torch): the command line resolves names before it builds anything.
"""
from __future__ import annotations

from pathlib import Path

import portraitisr

__all__ = ['package_root', 'zoo_config_path']


def package_root() -> Path:
    """The folder that holds the imported ``portraitisr`` package (and ``configs/`` beside it)."""
    return Path(portraitisr.__file__).resolve().parent.parent


def zoo_config_path(config: str, name: str) -> Path:
    """The file of ``config`` (a path relative to the package root, as the model-zoo index writes it) of model
    ``name``.

    Raises:
        FileNotFoundError: the package has no such file (the message says to pass the config with ``--config``).
    """
    root = package_root()
    relative = Path(config)
    if relative.is_absolute() or '..' in relative.parts:
        raise FileNotFoundError(f'config {config!r} of model {name!r} is not a path inside the package')
    candidate = root / relative
    if not candidate.is_file():
        raise FileNotFoundError(f'config {config} of model {name!r} is not in the installed package ({root}); '
                                'reinstall portraitisr, or pass the config file with --config')
    return candidate
