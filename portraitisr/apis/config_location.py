"""Where the configs of the library live, and what a config *name* means: always the package's file, never one of
the current folder.

A wheel carries the repository's ``configs/`` tree as ``portraitisr/.mim/configs`` (setup.py copies it at build
time: the OpenMMLab packages' layout, as mmagic's ``add_mim_extension`` builds it); a source checkout or editable
install has no copy and uses the checkout's ``configs/`` beside the package. Names resolve only there: looking a
name up relative to the current folder would let any ``configs/`` folder where a command happens to run stand in for
it (and run its Python). A config the user wrote is given as a path to an existing file.

Light on purpose (no torch): the command line resolves names before it builds anything.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import List, Optional

import portraitisr

from . import model_zoo

__all__ = ['PACKAGE_PREFIX', 'package_root', 'configs_root', 'config_names', 'resolve_config', 'config_name',
           'zoo_config_path']

#: Marks a name of the package's configs (``portraitisr::osediff/osediff_sd21.py``) even where a file of that path
#: exists: mmengine's spelling for another package's config. mmengine 0.10 itself resolves ``::`` only for the
#: OpenMMLab packages it lists (its ``MODULE2PACKAGE``), so only our commands understand this one.
PACKAGE_PREFIX = 'portraitisr::'
_SUFFIX = '.py'
#: The folder of the repository's configs inside a built package (mmengine's ``get_installed_path(package)/.mim``).
MIM_CONFIGS = Path('.mim') / 'configs'


def package_root() -> Path:
    """The folder that holds the imported ``portraitisr`` package (in a source checkout, ``configs/`` is beside it)."""
    return Path(portraitisr.__file__).resolve().parent.parent


def configs_root() -> Path:
    """The configs of the imported package: ``portraitisr/.mim/configs`` of an installed wheel, else the ``configs/``
    of the source checkout that holds the package (recognised by its ``setup.py``). Another package's top-level
    ``configs/`` in site-packages is never taken.

    Raises:
        FileNotFoundError: neither exists (an install built without its configs).
    """
    package = Path(portraitisr.__file__).resolve().parent
    installed = package / MIM_CONFIGS
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / 'setup.py').is_file() and (checkout / 'configs').is_dir():
        return checkout / 'configs'
    raise FileNotFoundError(f'this portraitisr ({package}) has no configs: neither {MIM_CONFIGS} of a built package '
                            'nor the configs/ folder of a source checkout; reinstall portraitisr')


def config_names(root: Optional[Path] = None) -> List[str]:
    """Every config of the package, relative to its configs folder (``debug/osediff_tiny.py``), sorted; the
    ``_base_`` fragments are left out (they are included by others, not run)."""
    root = root or configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f'*{_SUFFIX}') if '_base_' not in p.parts)


def _inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` for a relative path that stays inside ``root``."""
    path = Path(relative)
    if path.is_absolute() or '..' in path.parts:
        raise FileNotFoundError(f'{what} is not a path inside the package')
    return root / path


def _close_matches(name: str, root: Path) -> str:
    names = config_names(root)
    stems = {Path(n).stem: n for n in names}
    found = difflib.get_close_matches(Path(name).stem, list(stems), n=4, cutoff=0.6)
    found = [stems[s] for s in found] or difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f'close matches: {", ".join(found)}' if found else f'{len(names)} configs there'
    return f'{hint} (`portraitisr config --list` lists them)'


def resolve_config(text: str) -> Path:
    """The config file ``text`` stands for.

    * an existing file given with a folder or the ``.py`` suffix (``my_config.py``, ``configs/x/y.py`` in a
      checkout) is that file: the user's own config;
    * otherwise ``text`` is a name of the package's configs, looked up only in :func:`configs_root`:
      ``portraitisr::osediff/osediff_sd21.py``, ``configs/osediff/osediff_sd21.py``, ``osediff/osediff_sd21.py``
      (the suffix may be left out), a model-zoo name (``osediff_sd21``) or a config's file name without its folder
      (``osediff_tiny``). A bare name is never a file of the current folder.

    Raises:
        FileNotFoundError: one line naming what was looked for and the closest names.
    """
    forced = text.startswith(PACKAGE_PREFIX)
    name = text[len(PACKAGE_PREFIX):] if forced else text
    looks_like_path = '/' in name or '\\' in name or name.endswith(_SUFFIX)
    if not forced and looks_like_path and Path(name).is_file():
        return Path(name)
    root = configs_root()
    if looks_like_path:
        relative = name.replace('\\', '/')
        relative = relative[len('configs/'):] if relative.startswith('configs/') else relative
        relative = relative if relative.endswith(_SUFFIX) else relative + _SUFFIX
        candidate = _inside(root, relative, f'config {text!r}')
        if candidate.is_file():
            return candidate
        what = 'not a config of' if forced else 'neither a file nor a config of'
        raise FileNotFoundError(f'config {text} is {what} the installed package ({root}); '
                                f'{_close_matches(relative, root)}')
    zoo = model_zoo.load_index()
    if name in zoo.models:
        return zoo_config_path(zoo.models[name].config, name)
    found = [n for n in config_names(root) if Path(n).stem == name]
    if len(found) == 1:
        return root / found[0]
    if found:
        raise FileNotFoundError(f'config name {name!r} is ambiguous: {", ".join(found)}; give the folder too')
    raise FileNotFoundError(f'no config or model called {name!r} in the installed package ({root}); '
                            f'{_close_matches(name, root)}')


def config_name(path: Path) -> Optional[str]:
    """``path`` relative to the package's configs (``debug/osediff_tiny.py``), None for a file outside them."""
    try:
        return Path(path).resolve().relative_to(configs_root().resolve()).as_posix()
    except (ValueError, FileNotFoundError):
        return None


def zoo_config_path(config: str, name: str) -> Path:
    """The file of ``config`` (the model-zoo index's ``configs/...`` path) of model ``name``, in the package.

    Raises:
        FileNotFoundError: the package has no such file (the message says to pass the config with ``--config``).
    """
    root = configs_root()
    relative = config[len('configs/'):] if config.startswith('configs/') else config
    candidate = _inside(root, relative, f'config {config!r} of model {name!r}')
    if not candidate.is_file():
        raise FileNotFoundError(f'config {config} of model {name!r} is not in the installed package ({root}); '
                                'reinstall portraitisr, or pass the config file with --config')
    return candidate
