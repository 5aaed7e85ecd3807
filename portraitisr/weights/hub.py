"""The Hugging Face hub: diffusers-layout model folders, and single files in the Hugging Face cache.

:func:`resolve_pretrained_dir` turns a local folder or a hub id (``org/name[@revision]``) into a local folder:
the explicit folder, then ``$PORTRAITISR_HOME/<org>--<name>``, then the Hugging Face cache, then (only when
allowed) a download of just the files diffusers reads. :func:`hf_cached_file` finds a ``huggingface.co/.../resolve/``
URL's file in the cache for :func:`portraitisr.weights.files.resolve_file`. huggingface_hub is imported only by the
functions that need it.
"""
from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from .errors import weights_not_found
from .places import ENV_ALLOW_DOWNLOAD, ENV_HOME, download_allowed, hf_hub_cache_dir, portraitisr_home

__all__ = ['DEFAULT_HUB_IGNORE_PATTERNS', 'resolve_pretrained_dir', 'hf_url_parts', 'hf_cached_file']

# ``org/name`` or ``org/name@revision``; a revision may contain slashes (``refs/pr/1``).
_HUB_ID_RE = re.compile(r'^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[\w.\-/]+))?$')

#: Never fetched by default: framework exports and monolithic checkpoints that diffusers does not read.
DEFAULT_HUB_IGNORE_PATTERNS = ('*.ckpt', '*.msgpack', '*.h5', '*.onnx', '*.onnx_data', '*.pb', '*.ot',
                               '*.tflite', '*.mlmodel', '*.mlpackage/*')
_WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.ckpt')


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub call raises: OSError, ValueError (bad ids), ImportError, and the HTTP errors of the httpx
    client that huggingface_hub uses (not OSErrors: an offline machine raises ``httpx.ConnectError``). Read when an
    exception is being matched, so the httpx module huggingface_hub loaded is in ``sys.modules`` by then."""
    errors: list[type[BaseException]] = [ImportError, OSError, ValueError]
    for name in ('httpx', 'httpx2'):  # huggingface_hub's HTTP client: httpx, or httpx2 in the newest releases
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, 'HTTPError', None), type):
            errors.append(module.HTTPError)
    return tuple(errors)


def _missing_files(folder: Path, required: Sequence[str]) -> list[str]:
    # exists() follows symlinks, so a snapshot entry pointing at a missing blob counts as missing.
    return [rel for rel in required if not (folder / rel).exists()]


def _select_hub_files(repo_files: Sequence[str], required: Sequence[str] = ()) -> list[str]:
    """Choose the files of a hub repo that diffusers needs, instead of the whole repository.

    A model repo such as stable-diffusion-2-1-base holds each component's weights several times (``.bin`` and
    ``.safetensors``, ``fp16`` / ``non_ema`` variants) plus monolithic ``.ckpt``/``.safetensors`` files at the
    top level: about 20 GB of which diffusers reads 5. Per folder this keeps every non-weight file and one set
    of weights: non-variant safetensors, else non-variant ``.bin``, else whatever weights there are. In a
    pipeline repo (``model_index.json`` at the top), top-level weights are skipped. ``required`` files are
    always kept.
    """
    from fnmatch import fnmatch

    pipeline = 'model_index.json' in repo_files
    by_folder: dict[str, list[str]] = {}
    for rel in repo_files:
        if any(fnmatch(rel, pattern) for pattern in DEFAULT_HUB_IGNORE_PATTERNS):
            continue
        by_folder.setdefault(rel.rpartition('/')[0], []).append(rel)

    selected: list[str] = []
    for folder, files in by_folder.items():
        weights = [f for f in files if f.endswith(_WEIGHT_SUFFIXES)]
        selected += [f for f in files if f not in weights]
        if folder == '' and pipeline:
            continue
        # A variant carries an extra dotted tag: diffusion_pytorch_model.fp16.safetensors.
        plain = [f for f in weights if f.rpartition('/')[2].count('.') == 1]
        for suffix in ('.safetensors', '.bin'):
            chosen = [f for f in plain if f.endswith(suffix)]
            if chosen:
                selected += chosen
                break
        else:
            selected += weights
    selected += [rel for rel in required if rel in repo_files and rel not in selected]
    return sorted(selected)


def _parse_hub_id(text: str) -> tuple[Optional[str], Optional[str]]:
    match = _HUB_ID_RE.match(text)
    if match is None:
        return None, None
    return match.group('repo'), match.group('rev')


def _hf_cache_snapshot(repo_id: str, revision: Optional[str], cache: Path,
                       required: Sequence[str]) -> tuple[Optional[Path], str]:
    """Find a complete cached snapshot offline; returns (folder or None, description of what was looked at)."""
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    place = f"{repo_folder / 'snapshots'}/<refs/{revision or 'main'}> (Hugging Face cache)"
    snapshot: Optional[Path] = None
    problem = 'not cached'
    try:
        from huggingface_hub import snapshot_download
        # local_files_only: resolves refs/<revision> -> snapshots/<commit> without any network call.
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except ImportError:
        problem = 'huggingface_hub is not installed'
    except (OSError, ValueError) as error:  # LocalEntryNotFoundError, IncompleteSnapshotError, bad ids
        problem = str(error).splitlines()[0] if repo_folder.exists() else 'not cached'
    if snapshot is not None:
        missing = _missing_files(snapshot, required)
        if not missing:
            return snapshot, place
        return None, f'{snapshot} (Hugging Face cache: missing {", ".join(missing)})'
    if revision is None and (repo_folder / 'snapshots').is_dir():
        # No refs/main (e.g. a snapshot copied by hand): take the newest snapshot that has what is needed.
        complete = [p for p in (repo_folder / 'snapshots').iterdir()
                    if p.is_dir() and not _missing_files(p, required)]
        if complete:
            return max(complete, key=lambda p: p.stat().st_mtime), place
    return None, f'{place}: {problem}'


def resolve_pretrained_dir(spec: Union[str, 'os.PathLike[str]'], *, required: Sequence[str] = (),
                           allow_download: Optional[bool] = None, allow_patterns: Optional[Sequence[str]] = None,
                           ignore_patterns: Sequence[str] = DEFAULT_HUB_IGNORE_PATTERNS) -> Path:
    """Turn a diffusers-layout model spec (local folder or hub id) into a local folder.

    Args:
        spec: a local folder, or a hub id ``org/name`` or ``org/name@revision`` (branch, tag or commit).
        required: relative paths that must exist in the folder (e.g. ``('unet/config.json',
            'vae/config.json')``); a folder missing any of them is not a match.
        allow_download: ``None`` reads env ``PORTRAITISR_ALLOW_DOWNLOAD``. Only then is the hub contacted
            (``huggingface_hub.snapshot_download`` into the Hugging Face cache).
        allow_patterns: files to download (fnmatch patterns). Default: the files diffusers needs, chosen from
            the repo's file list (one set of weights per component; see ``_select_hub_files``).
        ignore_patterns: files never downloaded.

    Looks at, in order: the explicit folder; ``$PORTRAITISR_HOME/<org>--<name>``; the Hugging Face cache
    (``models--org--name/snapshots/<commit>`` via ``refs/<revision>``, default ``main``); then downloads.

    Returns:
        The folder (a snapshot folder in the Hugging Face cache, or a plain folder).

    Raises:
        WeightsNotFoundError: nothing complete found and no (successful) download; lists what was missing where.
    """
    text = os.fspath(spec)
    required = tuple(required)
    explicit = Path(text).expanduser()
    repo_id, revision = _parse_hub_id(text)
    if explicit.is_dir():
        missing = _missing_files(explicit, required)
        if not missing:
            return explicit
        raise weights_not_found(f'Model folder {explicit} is incomplete: missing {", ".join(missing)}.',
                                [f'{explicit} (explicit folder: missing {", ".join(missing)})'],
                                ['complete the folder (a diffusers save_pretrained / hub snapshot layout)',
                                 'or pass a hub id such as stabilityai/stable-diffusion-2-1-base'],
                                wanted=str(explicit))
    looked = [f"{explicit} (explicit folder: {'is a file' if explicit.exists() else 'does not exist'})"]
    if repo_id is None:
        raise weights_not_found(f'Model folder {text!r} not found.', looked,
                                ['pass an existing folder or a hub id of the form org/name[@revision]'], wanted=text)

    home_dir = portraitisr_home() / repo_id.replace('/', '--')
    if home_dir.is_dir():
        missing = _missing_files(home_dir, required)
        if not missing:
            return home_dir
        looked.append(f'{home_dir} ({ENV_HOME}: missing {", ".join(missing)})')
    else:
        looked.append(f'{home_dir} ({ENV_HOME})')

    cache = hf_hub_cache_dir()
    snapshot, place = _hf_cache_snapshot(repo_id, revision, cache, required)
    if snapshot is not None:
        return snapshot
    looked.append(place)

    allowed = download_allowed(allow_download)
    hints = [
        f'put a diffusers folder at {home_dir} (on a machine with network: '
        f'`hf download {repo_id} --local-dir {home_dir}`)',
        'or pass the local folder itself',
        f'or set {ENV_HOME} (or HF_HUB_CACHE / HF_HOME) to where it is',
    ]
    if required:
        hints.append(f'the folder must contain: {", ".join(required)}')
    if not allowed:
        hints.append(f'or allow the download of {repo_id} with allow_download=True or {ENV_ALLOW_DOWNLOAD}=1')
        raise weights_not_found(f'Model {text!r} not found.', looked, hints, wanted=text)

    try:
        from huggingface_hub import HfApi, snapshot_download
        patterns = allow_patterns
        if patterns is None:
            patterns = _select_hub_files(HfApi().list_repo_files(repo_id, revision=revision), required)
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                        allow_patterns=list(patterns), ignore_patterns=list(ignore_patterns)))
    except _hub_errors() as error:
        raise weights_not_found(f'Model {text!r} not found.', looked, hints, wanted=text,
                                reason=f'Downloading {repo_id} failed: {error}') from error
    missing = _missing_files(folder, required)
    if missing:
        looked.append(f'{folder} (downloaded: missing {", ".join(missing)})')
        raise weights_not_found(f'Model {text!r} is incomplete.', looked, hints, wanted=text,
                                reason=f'The hub repo {repo_id} has no {", ".join(missing)}.')
    return folder


def hf_url_parts(url: str) -> Optional[tuple[str, str, str, str]]:
    """(repo_id, repo_type, revision, path in repo) of a ``huggingface.co/.../resolve/...`` URL, else None."""
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ('huggingface.co', 'hf.co'):
        return None
    parts = [urllib.parse.unquote(p) for p in parsed.path.strip('/').split('/')]
    repo_type = 'model'
    if parts and parts[0] in ('datasets', 'spaces'):
        repo_type, parts = parts[0][:-1], parts[1:]
    if len(parts) < 5 or parts[2] != 'resolve':
        return None
    return f'{parts[0]}/{parts[1]}', repo_type, parts[3], '/'.join(parts[4:])


def hf_cached_file(url: str) -> Optional[tuple[str, Path]]:
    """(label, path) of a hub URL's entry in the Hugging Face cache (the real file when cached), else None."""
    hf = hf_url_parts(url)
    if hf is None:
        return None
    repo_id, repo_type, revision, filename = hf
    cache = hf_hub_cache_dir()
    label = f'Hugging Face cache, {repo_id}@{revision}'
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision, repo_type=repo_type)
    except (ImportError, ValueError, OSError):
        found = None
    if isinstance(found, str):
        return label, Path(found)
    kind = {'model': 'models', 'dataset': 'datasets', 'space': 'spaces'}[repo_type]
    return label, cache / f"{kind}--{repo_id.replace('/', '--')}" / 'snapshots' / f'<refs/{revision}>' / filename
