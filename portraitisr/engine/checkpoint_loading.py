"""Every checkpoint that enters a run: resolved to a verified local file, then loaded without unpickling code.

mmengine 0.10.7 loads ``load_from`` / ``--resume`` with ``torch.load``'s defaults and downloads URLs through
``torch.hub.load_state_dict_from_url(..., weights_only=False)`` into the torch hub cache, so a crafted file runs
code. :class:`~portraitisr.engine.runners.PortraitRunner` loads through the functions here instead:

* :func:`resolve_checkpoint` turns a path or a URL into a local file. A URL goes through the weight resolver and
  needs its sha256 (``https://host/x.pth#sha256=<64 hex>``, pip's notation) or an explicit ``trust_url=True``
  (``--trust-url``); downloads land in ``$PORTRAITISR_HOME/checkpoints/``, never in another tool's cache.
* :func:`load_checkpoint_file` reads it with ``torch.load(weights_only=True)`` or safetensors
  (:func:`~portraitisr.weights.load_state_dict`): a file that needs other Python objects is refused
  with one line, and nothing in it runs.
* :func:`find_resumable_checkpoint` picks the newest checkpoint of a work dir that loads, saying which newer ones
  it skipped and why (a checkpoint cut short by a crash must not stop ``--resume``).
* :func:`checkpoint_training_info` says how long a checkpoint was trained (``meta['trained_iters']``, written by
  the runner), so a restorer can tell an untrained model from a trained one.
"""
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from portraitisr.weights import (ChecksumError, CheckpointLoadError, WeightsNotFoundError, load_state_dict,
                                 resolve_file, sha256_of)

__all__ = ['UntrustedCheckpointError', 'CheckpointNotFoundError', 'CHECKPOINT_ERRORS', 'split_checkpoint_spec',
           'resolve_checkpoint', 'verify_checkpoint', 'load_checkpoint_file', 'ResumePoint',
           'find_resumable_checkpoint', 'checkpoint_training_info', 'CHECKPOINT_NAME_RE']

PathOrURL = Union[str, 'os.PathLike[str]']

_SHA256_FRAGMENT = re.compile(r'#sha256=(?P<sha>[0-9a-fA-F]{64})$')
#: The names mmengine's CheckpointHook gives periodic checkpoints (``iter_N.pth`` / ``epoch_N.pth``).
CHECKPOINT_NAME_RE = re.compile(r'^(?:iter|epoch)_(?P<step>\d+)\.pth$')


class UntrustedCheckpointError(ValueError):
    """A checkpoint location that will not be downloaded or read as given (one-line message)."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path that does not exist (one-line message)."""


#: What can go wrong with a checkpoint the user named. Each message is written for the user (one line; a failed
#: download one paragraph), so tools print it without a traceback and exit with status 2.
CHECKPOINT_ERRORS = (CheckpointLoadError, UntrustedCheckpointError, CheckpointNotFoundError, ChecksumError,
                     WeightsNotFoundError)


def split_checkpoint_spec(spec: PathOrURL) -> tuple[str, Optional[str]]:
    """``'https://h/x.pth#sha256=ab..'`` -> ``('https://h/x.pth', 'ab..')``; anything else -> ``(spec, None)``."""
    text = os.fspath(spec)
    match = _SHA256_FRAGMENT.search(text)
    if match is None:
        return text, None
    return text[:match.start()], match.group('sha').lower()


def resolve_checkpoint(spec: PathOrURL, *, trust_url: bool = False, progress: bool = True) -> Path:
    """The verified local file of a checkpoint given as a path or an http(s) URL.

    Args:
        spec: a local path, or an https URL (plain http only to a loopback address), optionally ending in
            ``#sha256=<64 hex>``. A path with that suffix is checked against it too.
        trust_url: download a URL that has no sha256 (the user vouches for the server). The file is still only
            ever loaded with ``weights_only=True``.
        progress: show a progress bar while downloading.

    Returns:
        The local file: the path itself, or the download in ``$PORTRAITISR_HOME/checkpoints/<key>/<name>`` (a
        URL already downloaded there is not fetched again).

    Raises:
        UntrustedCheckpointError: a URL without sha256 and without ``trust_url``, or a scheme mmengine would
            fetch itself (``torchvision://``, ``s3://``, ...).
        CheckpointNotFoundError: the path does not exist (one line).
        ChecksumError: the file's sha256 differs from the one given.
        WeightsNotFoundError: the download failed (one paragraph: what, from where, why, how to provide it).
    """
    location, sha256 = split_checkpoint_spec(spec)
    scheme = urllib.parse.urlparse(location).scheme
    if scheme in ('http', 'https'):
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path)).name or 'checkpoint.pth'
        if sha256 is not None:
            folder = sha256[:16]
        elif trust_url:
            folder = 'url-' + hashlib.sha256(location.encode()).hexdigest()[:16]
        else:
            raise UntrustedCheckpointError(
                f'refusing to download the checkpoint {location} without a sha256 to check it against: append '
                f'#sha256=<64 hex digits> to the URL, or pass --trust-url (trust_checkpoint_url=True) if you '
                'trust the server (the file is loaded with weights_only either way)')
        return resolve_file(location, filename=f'checkpoints/{folder}/{name}', sha256=sha256, allow_download=True,
                            progress=progress)
    if '://' in location:
        raise UntrustedCheckpointError(
            f'{location}: checkpoints are read from a local path or an https URL only; download it yourself '
            'and pass the path')
    path = Path(location).expanduser()
    if not path.is_file():
        state = 'is a directory' if path.is_dir() else 'does not exist'
        raise CheckpointNotFoundError(f'checkpoint {path} {state}')
    if sha256 is not None and sha256_of(path) != sha256:
        raise ChecksumError(f'{path}: sha256 mismatch, expected {sha256}, got {sha256_of(path)}',
                            expected=sha256, got=sha256_of(path))
    return path


def load_checkpoint_file(spec: PathOrURL, map_location: Any = 'cpu', *, trust_url: bool = False) -> dict:
    """:func:`resolve_checkpoint`, then load without unpickling code (raises ``CheckpointLoadError``)."""
    return load_state_dict(resolve_checkpoint(spec, trust_url=trust_url), map_location=map_location)


def _peek(path: Path) -> dict:
    """Load a checkpoint safely with its tensors memory-mapped, not read (old non-zip files: read)."""
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                return dict(__metadata__=f.metadata() or {})
        except SafetensorError as error:
            raise CheckpointLoadError(f'{path} is not a valid safetensors file: {error}') from error
    try:
        return load_state_dict(path, mmap=True)
    except CheckpointLoadError:
        return load_state_dict(path)  # raises again, with the reason, for a file that is not a checkpoint


def verify_checkpoint(spec: PathOrURL, *, trust_url: bool = False, progress: bool = True) -> Path:
    """:func:`resolve_checkpoint`, then parse the file the safe way without reading its tensors.

    Tools call this before they build a model (which can take minutes), so that a missing, refused or
    unreadable checkpoint is reported at once. Raises one of :data:`CHECKPOINT_ERRORS`.
    """
    path = resolve_checkpoint(spec, trust_url=trust_url, progress=progress)
    _peek(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ResumePoint:
    """The checkpoint to resume from (``path`` None: there is none) and the newer ones that were skipped."""

    path: Optional[Path] = None
    checkpoint: Optional[dict] = None
    skipped: list = field(default_factory=list)  # [(path, reason)]


def _named_by_last_checkpoint(work_dir: Path) -> Optional[Path]:
    record = work_dir / 'last_checkpoint'
    if not record.is_file():
        return None
    named = Path(record.read_text(encoding='utf-8').strip())
    if not named.is_file() and (work_dir / named.name).is_file():
        named = work_dir / named.name  # the work dir was moved after the record was written
    return named


def find_resumable_checkpoint(work_dir: PathOrURL, map_location: Any = 'cpu') -> ResumePoint:
    """The newest checkpoint in ``work_dir`` that loads safely and is a training checkpoint.

    Candidates are the file named by ``last_checkpoint`` and every ``iter_N.pth`` / ``epoch_N.pth``, newest (highest
    N) first; a file ``last_checkpoint`` names that matches neither pattern is tried first. A candidate that is
    missing, truncated, refused by the safe loader or not a training checkpoint (no ``meta`` with ``iter``, no
    ``state_dict``) is skipped with the reason. The checkpoint found is returned loaded, so the caller need not
    read it again.
    """
    work_dir = Path(work_dir)
    named = _named_by_last_checkpoint(work_dir)
    numbered = sorted(((int(m.group('step')), p) for p in (work_dir.iterdir() if work_dir.is_dir() else ())
                       if (m := CHECKPOINT_NAME_RE.match(p.name))), key=lambda item: item[0], reverse=True)
    candidates = [path for _, path in numbered]
    point = ResumePoint()
    if named is not None and named not in candidates:
        if named.is_file():
            candidates.insert(0, named)
        else:
            point.skipped.append((named, 'named by last_checkpoint, but it does not exist'))
    for path in candidates:
        try:
            checkpoint = load_state_dict(path, map_location=map_location)
        except (CheckpointLoadError, TypeError, OSError) as error:
            point.skipped.append((path, str(error).splitlines()[0]))
            continue
        meta = checkpoint.get('meta')
        if not (isinstance(meta, dict) and 'iter' in meta and 'state_dict' in checkpoint):
            point.skipped.append((path, 'not a training checkpoint (no meta.iter and state_dict)'))
            continue
        point.path, point.checkpoint = path, checkpoint
        break
    return point


# --------------------------------------------------------------------------------------------------------------
# How long a checkpoint was trained
# --------------------------------------------------------------------------------------------------------------
def _as_int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def checkpoint_training_info(path: PathOrURL) -> dict:
    """What a checkpoint file says about its training, read without loading its tensors into memory.

    Args:
        path: a training checkpoint of this library (``iter_N.pth``), weights exported by
            ``tools/export_weights.py`` (``.safetensors``), or any other checkpoint (e.g. a published release).

    Returns:
        A dict with
            - ``format``: ``'training checkpoint'`` (has ``meta``), ``'safetensors'`` or ``'weights'``;
            - ``trained_iters``: iterations this file's weights were trained for in our runner, ``0`` for none,
              ``None`` when the file does not say (a third-party release, an older file);
            - ``epoch``, ``config_name`` (config file name without ``.py``), ``model_type`` (``model.type``),
              ``saved_at`` (``YYYYmmdd_HHMMSS``), ``fine_tuned_from`` (the ``load_from`` of a fine-tuning run):
              each ``None`` when unknown;
            - ``trainable_only``: whether only the trained tensors are stored (our training checkpoints).

    Raises:
        CheckpointLoadError: the file cannot be read safely (one-line message).
        CheckpointNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'checkpoint {path} does not exist')
    info = dict(format='weights', trained_iters=None, epoch=None, config_name=None, model_type=None,
                saved_at=None, fine_tuned_from=None, trainable_only=False)
    checkpoint = _peek(path)
    if path.suffix == '.safetensors':
        metadata = checkpoint['__metadata__']
        info.update(format='safetensors', trained_iters=_as_int(metadata.get('trained_iters')),
                    config_name=metadata.get('config_name'), model_type=metadata.get('model_type'),
                    saved_at=metadata.get('saved_at'), trainable_only=True)
        return info
    meta = checkpoint.get('meta')
    if not isinstance(meta, dict):
        return info
    info.update(format='training checkpoint', trainable_only=bool(meta.get('trainable_only')),
                trained_iters=_as_int(meta.get('trained_iters', meta.get('iter'))), epoch=_as_int(meta.get('epoch')),
                config_name=meta.get('config_name'), model_type=meta.get('model_type'), saved_at=meta.get('time'),
                fine_tuned_from=meta.get('fine_tuned_from'))
    return info
