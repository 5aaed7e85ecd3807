"""The model zoo: a machine-readable index of the public checkpoints the library uses, and their downloads.

The index (``portraitisr/model_zoo/index.json``, shipped as package data) has two tables:

* ``weights``: one entry per downloadable thing, either a single file (``filename``, ``url``, ``sha256`` or
  null when no published hash could be found, ``licence``, ``source``) or a diffusers folder (``hub_id``,
  ``required`` files);
* ``models``: one entry per runnable config (``config`` relative to the repository, found in the installed package
  by :func:`portraitisr.apis.config_location.zoo_config_path`, ``checkpoint`` naming a
  weights entry or null, ``checkpoint_option`` the config key that takes it, ``released``, ``requires`` the
  weights entries restoring with the config loads, ``train_requires`` those only training adds (e.g. the
  recogniser behind HeadsUp's identity loss), ``optional`` those restoring uses when they are present and does
  without, with a warning, when they are not (the DAPE tagger of OSEDiff's prompts), ``licence``, ``paper``
  numbers with the table they come from).

Every download goes through :mod:`portraitisr.weights` (https only, resume with a validator, length
and sha256 checks, atomic rename, lock), and nothing here touches the network unless :func:`download` is called.
An entry with a published sha256 is *pinned*: only that file is accepted. An entry without one is *trust on first
use*: the digest of the first file (downloaded, or found in ``$PORTRAITISR_HOME``) is recorded next to it as
``<file>.sha256``, and a different file is refused from then on; files other tools cached under the same name are
not used for it. :func:`check_available` turns missing files into one
:class:`~portraitisr.weights.WeightsNotFoundError` that names every missing file and the command that
fetches it; :func:`download` reports every file it could not get in one such error.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from portraitisr.weights import (ChecksumError, WeightsNotFoundError, portraitisr_home, resolve_file,
                                 resolve_pretrained_dir)

__all__ = ['INDEX_PATH', 'WeightsEntry', 'ModelEntry', 'ModelZoo', 'load_index', 'list_models', 'get_model',
           'check_available', 'download']

INDEX_PATH = Path(__file__).resolve().parents[1] / 'model_zoo' / 'index.json'
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_NAME_RE = re.compile(r'^[a-z0-9][a-z0-9_.\-]*$')


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable file (``filename`` + ``url``) or diffusers folder (``hub_id``)."""

    name: str
    description: str
    licence: str
    source: str
    filename: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None
    hub_id: Optional[str] = None
    required: tuple = ()

    @property
    def is_folder(self) -> bool:
        return self.hub_id is not None

    @property
    def verified(self) -> bool:
        """Whether downloads are checked against a published sha256 (always False for hub folders, which the
        Hugging Face client verifies file by file itself)."""
        return self.sha256 is not None

    @property
    def trust(self) -> str:
        """How a file is checked: ``'pinned'`` (published sha256), ``'TOFU'`` (trust on first use: the first
        file's digest is recorded and later ones must match) or ``'hub'`` (the Hugging Face client's checks)."""
        if self.is_folder:
            return 'hub'
        return 'pinned' if self.verified else 'TOFU'


@dataclass(frozen=True)
class ModelEntry:
    """A runnable model: a config plus the weights it needs."""

    name: str
    description: str
    config: str
    licence: str
    released: bool
    requires: tuple
    checkpoint: Optional[str] = None
    checkpoint_option: Optional[str] = None
    how_to_get: Optional[str] = None
    paper: Optional[dict] = field(default=None, compare=False)
    train_requires: tuple = ()
    optional: tuple = ()


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f'model zoo index, {where}: {problem}')


def _weights_entry(name: str, raw: dict) -> WeightsEntry:
    where = f'weights[{name!r}]'
    if not _NAME_RE.match(name):
        raise _fail(where, 'names are lower-case letters, digits, "_", "-" and "."')
    for key in ('description', 'licence', 'source'):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _fail(where, f'needs a non-empty {key!r}')
    if raw.get('hub_id'):
        if raw.get('url') or raw.get('filename'):
            raise _fail(where, 'a hub folder has hub_id and required, not url/filename')
        return WeightsEntry(name, raw['description'], raw['licence'], raw['source'], hub_id=raw['hub_id'],
                            required=tuple(raw.get('required', ())))
    url, filename, sha256 = raw.get('url'), raw.get('filename'), raw.get('sha256', 'missing')
    if not (isinstance(url, str) and url.startswith('https://')):
        raise _fail(where, f'url must be an https URL, got {url!r}')
    if not isinstance(filename, str) or '/' in filename or not filename:
        raise _fail(where, f'filename must be a plain file name, got {filename!r}')
    if sha256 == 'missing':
        raise _fail(where, 'sha256 must be given: a 64-hex digest from a public source, or null (unverified)')
    if sha256 is not None:
        if not (isinstance(sha256, str) and _SHA256_RE.match(sha256)):
            raise _fail(where, f'sha256 must be 64 lower-case hex digits or null, got {sha256!r}')
        if not raw.get('sha256_source'):
            raise _fail(where, 'a sha256 needs a sha256_source saying where it was published')
    return WeightsEntry(name, raw['description'], raw['licence'], raw['source'], filename=filename, url=url,
                        sha256=sha256)


def _model_entry(name: str, raw: dict, weights: dict[str, WeightsEntry]) -> ModelEntry:
    where = f'models[{name!r}]'
    if not _NAME_RE.match(name):
        raise _fail(where, 'names are lower-case letters, digits, "_", "-" and "."')
    for key in ('description', 'config', 'licence'):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _fail(where, f'needs a non-empty {key!r}')
    if not isinstance(raw.get('released'), bool):
        raise _fail(where, 'needs released: true/false')
    requires = tuple(raw.get('requires', ()))
    train_requires = tuple(raw.get('train_requires', ()))
    optional = tuple(raw.get('optional', ()))
    unknown = [w for w in requires + train_requires + optional + ((raw['checkpoint'],) if raw.get('checkpoint') else ())
               if w not in weights]
    if unknown:
        raise _fail(where, f'names weights that are not in the index: {unknown}')
    if raw.get('checkpoint') and not raw.get('checkpoint_option'):
        raise _fail(where, 'a checkpoint needs checkpoint_option (the config key that takes its path)')
    if not raw['released'] and not raw.get('how_to_get'):
        raise _fail(where, 'an unreleased model needs how_to_get (how to train it meanwhile)')
    paper = raw.get('paper')
    if paper is not None and not (isinstance(paper, dict) and paper.get('source')):
        raise _fail(where, 'paper numbers need a source (paper and table)')
    return ModelEntry(name, raw['description'], raw['config'], raw['licence'], raw['released'], requires,
                      checkpoint=raw.get('checkpoint'), checkpoint_option=raw.get('checkpoint_option'),
                      how_to_get=raw.get('how_to_get'), paper=paper, train_requires=train_requires,
                      optional=optional)


@dataclass
class ModelZoo:
    """A validated index: ``weights`` and ``models`` by name."""

    weights: dict[str, WeightsEntry]
    models: dict[str, ModelEntry]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> 'ModelZoo':
        """Validate a parsed index; raises ``ValueError`` naming the entry and the problem."""
        if raw.get('format') != 'portraitisr.model_zoo/1':
            raise _fail('format', f'expected "portraitisr.model_zoo/1", got {raw.get("format")!r}')
        weights = {name: _weights_entry(name, entry) for name, entry in raw.get('weights', {}).items()}
        models = {name: _model_entry(name, entry, weights) for name, entry in raw.get('models', {}).items()}
        return cls(weights, models)


def load_index(path: Optional[Path] = None) -> ModelZoo:
    """Read and validate the index (default: the one shipped with the package)."""
    with open(path or INDEX_PATH, encoding='utf-8') as f:
        return ModelZoo.from_dict(json.load(f))


def list_models(zoo: Optional[ModelZoo] = None) -> list[ModelEntry]:
    """Model entries, sorted by name."""
    zoo = zoo or load_index()
    return [zoo.models[name] for name in sorted(zoo.models)]


def get_model(name: str, zoo: Optional[ModelZoo] = None) -> ModelEntry:
    """The entry called ``name``; ``KeyError`` listing the known names otherwise."""
    zoo = zoo or load_index()
    if name not in zoo.models:
        raise KeyError(f'{name!r} is not in the model zoo; known models: {", ".join(sorted(zoo.models))} '
                       '(`portraitisr models` lists them)')
    return zoo.models[name]


def _weight_names(entry: ModelEntry, training: bool = False, optional: bool = False) -> list[str]:
    """The weights entries to restore with ``entry`` (``training``: also those to train it; ``optional``: also
    those restoring uses when present)."""
    names = list(entry.requires)
    extra = (entry.train_requires if training else ()) + (entry.optional if optional else ())
    names += [w for w in dict.fromkeys(extra) if w not in names]
    if entry.checkpoint and entry.checkpoint not in names:
        names.append(entry.checkpoint)
    return names


def _locate(weights: WeightsEntry, allow_download: bool, progress: bool = True) -> Path:
    """The local file/folder of one weights entry; downloads only with ``allow_download``."""
    if weights.is_folder:
        return resolve_pretrained_dir(weights.hub_id, required=weights.required, allow_download=allow_download)
    # Entries without a published sha256 are trusted on first use: the first file's digest is recorded.
    return resolve_file(weights.filename, url=weights.url, sha256=weights.sha256, allow_download=allow_download,
                        progress=progress, trust_on_first_use=weights.sha256 is None)


def check_available(name: str, zoo: Optional[ModelZoo] = None, need_checkpoint: bool = True) -> dict[str, Path]:
    """Local paths of every weights entry model ``name`` needs, without touching the network.

    ``need_checkpoint=False`` accepts an unreleased model (the caller brings its own trained checkpoint). For an
    unreleased model without a checkpoint, what training needs is checked too (training is the way to get it).

    Raises:
        WeightsNotFoundError: one message naming every missing file, where it was looked for, and how to get
            it (``portraitisr download NAME``, or how to train an unreleased model).
    """
    zoo = zoo or load_index()
    entry = get_model(name, zoo)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for weight_name in _weight_names(entry, training=not entry.released and need_checkpoint):
        weights = zoo.weights[weight_name]
        try:
            found[weight_name] = _locate(weights, allow_download=False)
        except WeightsNotFoundError as error:
            # The entry names no explicit path, so the resolver's "explicit path" line is noise here.
            places = [place for place in error.looked if '(explicit' not in place]
            looked = '; '.join(places[:2]) + (' ...' if len(places) > 2 else '')
            what = weights.hub_id if weights.is_folder else weights.filename
            missing.append(f'  - {what} ({weights.description}); looked in {looked}')
    lines = []
    if not entry.released and need_checkpoint:
        lines.append(f'Model {name!r} has no released checkpoint: {entry.how_to_get}')
    if missing:
        lines.append(f'Model {name!r} needs weights that are not on this machine:')
        lines += missing
        lines.append(f'Get them with `portraitisr download {name}` on a machine with network (files go to '
                     f'{portraitisr_home()}, or set PORTRAITISR_HOME to where you copy them).')
    if lines:
        raise WeightsNotFoundError('\n'.join(lines), wanted=name, looked=missing)
    return found


def download(name: str, zoo: Optional[ModelZoo] = None, progress: bool = True) -> dict[str, Path]:
    """Download what model ``name`` needs to restore and to train, and what it uses when present (or the single
    weights entry ``name``); existing files are kept.

    Files go to ``$PORTRAITISR_HOME`` through :func:`~portraitisr.weights.resolve_file` (https,
    partial files resume only against the same file version, pinned sha256 or trust-on-first-use record checked,
    atomic rename); SD folders go to the Hugging Face cache. Every entry is tried, so one run reports everything
    that is missing. Returns ``{weights name: local path}``.

    Raises:
        KeyError: ``name`` is neither a model nor a weights entry.
        WeightsNotFoundError: one paragraph naming each file that could not be obtained, where it was to come
            from, why it failed, and how to provide it instead.
    """
    zoo = zoo or load_index()
    if name in zoo.weights:
        names = [name]
    else:
        names = _weight_names(get_model(name, zoo), training=True, optional=True)
    found: dict[str, Path] = {}
    failed: list[str] = []
    for weight_name in names:
        weights = zoo.weights[weight_name]
        try:
            found[weight_name] = _locate(weights, allow_download=True, progress=progress)
        except (WeightsNotFoundError, ChecksumError) as error:
            what = (f'the {weights.hub_id} folder from huggingface.co' if weights.is_folder
                    else f'{weights.filename} from {weights.url}')
            failed.append(f'  - {weight_name} ({what}): {_failure_reason(error)}')
    if failed:
        home = portraitisr_home()
        lines = [f'Could not download {len(failed)} of the {len(names)} weights {name!r} needs:', *failed,
                 f'Run `portraitisr download {name}` again where the network reaches these hosts, or copy the files '
                 f'into {home} (SD folders as {home}/<org>--<name>; set PORTRAITISR_HOME to use another folder). '
                 'Files already downloaded stay in place.']
        raise WeightsNotFoundError('\n'.join(lines), wanted=name, looked=failed)
    return found


def _failure_reason(error: Exception) -> str:
    """The one line of a resolver error that says why it failed (not the list of places looked at)."""
    lines = str(error).splitlines()
    reason = next((line for line in lines if 'failed' in line or 'refusing' in line), None)
    return (reason or lines[0]).strip()
