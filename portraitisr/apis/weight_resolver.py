"""Turn a weight spec into a local file or folder, with no network access the user did not ask for.

Two kinds of weights reach the library:

* single files (``.pth`` / ``.safetensors`` of a restorer, a face detector, a metric), resolved by
  :func:`resolve_file` from a local path, a file name, a URL, or a dict ``{path, url, sha256, filename}``;
* diffusers-layout model folders (Stable Diffusion 2.1), resolved by :func:`resolve_pretrained_dir` from a
  local folder or a Hugging Face hub id.

The order is always: the explicit location, then caches that already exist on this machine, then a download,
and the download happens only when it was allowed (``allow_download=True`` or ``PORTRAITISR_ALLOW_DOWNLOAD=1``).
When nothing is found, one :class:`WeightsNotFoundError` names what was wanted, every place looked at and how to
provide it. Files are loaded by :func:`load_state_dict`, which never unpickles arbitrary Python objects.

Importing this module is cheap: torch, safetensors and huggingface_hub are imported only by the functions that
need them.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pickle
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from tqdm import tqdm

__all__ = [
    'WeightsNotFoundError', 'ChecksumError', 'CheckpointLoadError', 'WeightSpec', 'portraitisr_home',
    'download_allowed', 'torch_hub_dir', 'hf_hub_cache_dir', 'resolve_file', 'download_file',
    'resolve_pretrained_dir', 'load_state_dict', 'sha256_of', 'DEFAULT_HUB_IGNORE_PATTERNS'
]

ENV_HOME = 'PORTRAITISR_HOME'
ENV_ALLOW_DOWNLOAD = 'PORTRAITISR_ALLOW_DOWNLOAD'
_TRUE_STRINGS = {'1', 'true', 'yes', 'on'}

#: A local path, a file name, an http(s) URL, or a dict with keys ``path``, ``url``, ``sha256``, ``filename``.
WeightSpec = Union[str, 'os.PathLike[str]', Mapping[str, Any]]

_SPEC_KEYS = frozenset({'path', 'url', 'sha256', 'filename'})
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
# ``org/name`` or ``org/name@revision``; a revision may contain slashes (``refs/pr/1``).
_HUB_ID_RE = re.compile(r'^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[\w.\-/]+))?$')


class WeightsNotFoundError(FileNotFoundError):
    """Weights are neither at the given place nor in any cache, and were not (or could not be) downloaded.

    The message names the wanted file (or hub repo), every place looked at and how to provide it.
    ``wanted``, ``looked`` and ``url`` keep the same facts for programs.
    """

    def __init__(self, message: str, *, wanted: Optional[str] = None, looked: Sequence[str] = (),
                 url: Optional[str] = None) -> None:
        # One positional argument only: OSError would otherwise format the message as "[Errno ...]".
        super().__init__(message)
        self.wanted = wanted
        self.looked = list(looked)
        self.url = url


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the expected one."""


class CheckpointLoadError(pickle.UnpicklingError):
    """A checkpoint cannot be loaded safely (it needs arbitrary unpickling) or is not a checkpoint at all."""


# --------------------------------------------------------------------------------------------------------------
# Places
# --------------------------------------------------------------------------------------------------------------
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


def _file_cache_dirs() -> list[tuple[str, Path]]:
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


# --------------------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------------------
# Keyed by (path, size, mtime): resolving the same file twice in a process should not hash it twice.
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Union[str, 'os.PathLike[str]'], chunk_size: int = 1 << 20) -> str:
    """Lower-case hex sha256 of a file's bytes (memoised per path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(chunk_size), b''):
                digest.update(block)
        _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]


def _normalise_sha256(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if value.startswith('sha256:'):
        value = value[len('sha256:'):]
    if not _SHA256_RE.match(value):
        raise ValueError(f'sha256 must be 64 hexadecimal characters, got {sha256!r}')
    return value


# --------------------------------------------------------------------------------------------------------------
# Single files
# --------------------------------------------------------------------------------------------------------------
def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ('http', 'https')


def _url_filename(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit('/', 1)[-1])
    if not name:
        raise ValueError(f'cannot take a file name from URL {url!r}; pass filename=')
    return name


def _check_relative_name(name: str) -> str:
    """A cache key must stay inside the cache folder: relative, without '..'."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or '..' in parts:
        raise ValueError(f'filename must be a relative path inside the cache, got {name!r}')
    return name


def _hf_url_parts(url: str) -> Optional[tuple[str, str, str, str]]:
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


def _hf_cached_file(url: str) -> Optional[tuple[str, Path]]:
    """(label, path) of a hub URL's entry in the Hugging Face cache (the real file when cached), else None."""
    hf = _hf_url_parts(url)
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


def _how_to_provide_file(name: str, url: Optional[str], allowed: bool) -> list[str]:
    home = portraitisr_home()
    hints = [
        f'put the file at one of the places above, e.g. {home / name}',
        'or pass an explicit path to it (a path, or {"path": ...} in the config)',
        f'or set {ENV_HOME} to a folder that contains {name}',
    ]
    if url is None:
        hints.append('no download URL is known for it; pass url= (with sha256=) to let it be downloaded')
    elif not allowed:
        hints.append(f'or allow the download from {url} with allow_download=True or {ENV_ALLOW_DOWNLOAD}=1')
    return hints


def _not_found(headline: str, looked: Sequence[str], hints: Sequence[str], *, wanted: str,
               url: Optional[str] = None, reason: Optional[str] = None) -> WeightsNotFoundError:
    """One error that says what is wanted, why it failed, every place looked at and how to provide it."""
    lines = [headline]
    if reason:
        lines.append(reason)
    lines.append('Looked in:')
    lines += [f'  - {place}' for place in looked]
    lines.append('How to provide it:')
    lines += [f'  - {hint}' for hint in hints]
    return WeightsNotFoundError('\n'.join(lines), wanted=wanted, looked=looked, url=url)


def resolve_file(spec: Optional[WeightSpec] = None, *, filename: Optional[str] = None, url: Optional[str] = None,
                 sha256: Optional[str] = None, allow_download: Optional[bool] = None,
                 progress: bool = True) -> Path:
    """Turn a weight spec into the path of an existing local file.

    Args:
        spec: one of
            - an existing local path: returned as is (verified first when ``sha256`` is given);
            - a file name or relative name (``'RealESRGAN_x4plus.pth'``, ``'facexlib/parsing.pth'``): looked up
              in ``$PORTRAITISR_HOME/<name>``, then by base name in the torch hub ``checkpoints``, ``pyiqa`` and
              ``clip`` folders, ``$TORCH_HOME/checkpoints`` and facexlib's ``weights`` folder;
            - an http(s) URL: the file name is taken from it (Hugging Face ``/resolve/`` URLs are also looked
              up in the Hugging Face cache);
            - a dict with keys ``path``, ``url``, ``sha256``, ``filename`` (all optional).
            An absolute path that does not exist is an error unless a URL or file name says what else to look for.
        filename: name of the file in the caches (default: from ``spec`` or the URL).
        url: where to download the file from when it is nowhere on disk.
        sha256: expected 64-hex sha256. Given: an explicit file that differs raises :class:`ChecksumError`, a
            cached copy that differs is skipped, a download that differs is deleted and raises.
        allow_download: ``None`` reads env ``PORTRAITISR_ALLOW_DOWNLOAD``; without permission nothing touches
            the network.
        progress: show a tqdm bar while downloading.

    Returns:
        Path of the file. Downloads are written to ``portraitisr_home() / filename``.

    Raises:
        WeightsNotFoundError: nothing found and no (successful) download.
        ChecksumError: the explicit file or the download has the wrong sha256.
        ValueError: a malformed spec or sha256.
    """
    path: Optional[str] = None
    if isinstance(spec, Mapping):
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise ValueError(f'unknown weight spec keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}')
        path = os.fspath(spec['path']) if spec.get('path') is not None else None
        url = url or spec.get('url')
        sha256 = sha256 or spec.get('sha256')
        filename = filename or spec.get('filename')
    elif spec is not None:
        text = os.fspath(spec)
        if _is_url(text):
            if url is not None and url != text:
                raise ValueError(f'two different URLs given: spec={text!r}, url={url!r}')
            url = text
        else:
            path = text
    if path is None and url is None and filename is None:
        raise ValueError('resolve_file needs a path, a file name or a URL')
    sha256 = _normalise_sha256(sha256)

    looked: list[str] = []
    if path is not None:
        explicit = Path(path).expanduser()
        if explicit.is_file():
            if sha256 is not None:
                got = sha256_of(explicit)
                if got != sha256:
                    # The user's own file: report, never delete.
                    raise ChecksumError(f'{explicit}: sha256 mismatch, expected {sha256}, got {got}')
            return explicit
        state = 'is a directory, not a file' if explicit.is_dir() else 'does not exist'
        looked.append(f'{explicit.absolute()} (explicit path: {state})')
        # A bare or relative name doubles as a cache key; a path that names a place (absolute, ~, ./) does not,
        # unless a dict spec also said what else the file is called or where it comes from.
        names_a_place = Path(path).is_absolute() or path.startswith(('~', './', '.\\', '../', '..\\'))
        if filename is None and not names_a_place:
            filename = path
        elif filename is None and url is None:
            raise _not_found(f'Weights file {explicit} not found.', looked,
                             [f'check the path, or pass a file name or URL to look it up in {portraitisr_home()}'],
                             wanted=str(explicit))
    if filename is None:
        filename = _url_filename(url)  # url is set here: path and filename were both None otherwise
    name = _check_relative_name(os.fspath(filename))
    base = Path(name).name

    candidates: list[tuple[str, Path]] = [(ENV_HOME, portraitisr_home() / name)]
    if url is not None:
        hf_entry = _hf_cached_file(url)
        if hf_entry is not None:
            candidates.append(hf_entry)
    candidates += [(label, folder / base) for label, folder in _file_cache_dirs()]

    seen: set[Path] = set()
    for label, candidate in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        if candidate.is_file():
            if sha256 is not None:
                got = sha256_of(candidate)
                if got != sha256:
                    looked.append(f'{candidate} ({label}: present but sha256 is {got}, expected {sha256})')
                    continue
            return candidate
        looked.append(f'{candidate} ({label})')

    allowed = download_allowed(allow_download)
    what = f'Weights file {name!r} not found.'
    if url is None or not allowed:
        raise _not_found(what, looked, _how_to_provide_file(name, url, allowed), wanted=name, url=url)
    destination = portraitisr_home() / name
    try:
        return download_file(url, destination, sha256=sha256, progress=progress)
    except ChecksumError:
        raise
    except (OSError, http.client.HTTPException) as error:
        # urllib.error.URLError is an OSError; the partial .part file is kept so a retry resumes.
        reason = f'Downloading {url} to {destination} failed: {error}. Running again resumes the download.'
        raise _not_found(what, looked, _how_to_provide_file(name, url, allowed), wanted=name, url=url,
                         reason=reason) from error


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise downloads of one file across processes (e.g. DDP ranks); the OS drops the lock if we die."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are then the caller's job
        yield
        return
    with open(lock_path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _content_range(header: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` or ``bytes */total`` header."""
    match = re.match(r'bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)', header or '')
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != '*' else None
    return start, total


def download_file(url: str, destination: Union[str, 'os.PathLike[str]'], *, sha256: Optional[str] = None,
                  progress: bool = True, timeout: float = 30.0, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``destination`` atomically, resuming a previous partial download.

    Bytes go to ``<destination>.part``; an existing ``.part`` is resumed with an HTTP ``Range`` request (a
    server that ignores it makes the download restart). The finished file is checked against ``sha256`` (a
    mismatch deletes it and raises :class:`ChecksumError` naming both hashes) and then moved into place with
    ``os.replace``, so ``destination`` never holds a partial or unverified file. An existing ``destination``
    that matches ``sha256`` (or any existing one when ``sha256`` is None) is returned without downloading.

    This always uses the network: callers decide whether a download is allowed (see :func:`resolve_file`).

    Raises:
        ChecksumError: the downloaded bytes have the wrong sha256.
        OSError: network errors (``urllib.error.URLError``) or an incomplete transfer; ``.part`` is kept.
    """
    sha256 = _normalise_sha256(sha256)
    destination = Path(destination).expanduser()
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + '.part')
    lock = destination.with_name(destination.name + '.lock')
    with _exclusive_lock(lock):
        # Another process may have finished this download while we waited for the lock.
        if destination.is_file() and (sha256 is None or sha256_of(destination) == sha256):
            return destination
        digest = _fetch_to_part(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
        if sha256 is not None and digest != sha256:
            part.unlink()
            raise ChecksumError(f'{url}: sha256 mismatch, expected {sha256}, got {digest}; '
                                'the downloaded file was deleted')
        if sha256 is None:
            warnings.warn(f'{url} was downloaded without a sha256 to verify it against ({digest})', stacklevel=2)
        os.replace(part, destination)
    # Safe once the file is in place: a process waiting on the old lock re-checks the destination first.
    with contextlib.suppress(OSError):
        lock.unlink()
    return destination


def _fetch_to_part(url: str, part: Path, *, progress: bool, timeout: float, chunk_size: int) -> str:
    """Complete ``part`` from ``url`` (resuming what is there) and return the sha256 of its full contents."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {'User-Agent': 'portraitisr-weight-resolver'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        # 416: nothing after ``offset``. The .part may hold every byte already (a run stopped before the
        # rename); if its size is not the file's size it is stale, so start again.
        _, total = _content_range(error.headers.get('Content-Range'))
        error.close()
        if total is not None and total != offset:
            part.unlink()
            return _fetch_to_part(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
        return sha256_of(part)

    with response:
        digest = hashlib.sha256()
        mode = 'wb'
        if offset and response.status == 206:
            start, _ = _content_range(response.headers.get('Content-Range'))
            if start != offset:
                # Bytes from somewhere else in the file: neither appendable nor the whole file; start again.
                response.close()
                part.unlink()
                return _fetch_to_part(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
            mode = 'ab'
            with open(part, 'rb') as f:
                for block in iter(lambda: f.read(chunk_size), b''):
                    digest.update(block)
        if mode == 'wb':
            offset = 0  # the server ignored the Range header (200) and sends everything
        length = response.headers.get('Content-Length')
        total = offset + int(length) if length is not None and length.isdigit() else None
        received = offset
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit='B', unit_scale=True,
                                         unit_divisor=1024, desc=part.name[:-len('.part')],
                                         disable=not progress) as bar:
            for block in iter(lambda: response.read(chunk_size), b''):
                f.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and received != total:
        raise OSError(f'{url}: connection closed after {received} of {total} bytes')
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# diffusers-layout folders
# --------------------------------------------------------------------------------------------------------------
#: Never fetched by default: framework exports and monolithic checkpoints that diffusers does not read.
DEFAULT_HUB_IGNORE_PATTERNS = ('*.ckpt', '*.msgpack', '*.h5', '*.onnx', '*.onnx_data', '*.pb', '*.ot',
                               '*.tflite', '*.mlmodel', '*.mlpackage/*')
_WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.ckpt')


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
        raise _not_found(f'Model folder {explicit} is incomplete: missing {", ".join(missing)}.',
                         [f'{explicit} (explicit folder: missing {", ".join(missing)})'],
                         ['complete the folder (a diffusers save_pretrained / hub snapshot layout)',
                          'or pass a hub id such as stabilityai/stable-diffusion-2-1-base'], wanted=str(explicit))
    looked = [f"{explicit} (explicit folder: {'is a file' if explicit.exists() else 'does not exist'})"]
    if repo_id is None:
        raise _not_found(f'Model folder {text!r} not found.', looked,
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
        raise _not_found(f'Model {text!r} not found.', looked, hints, wanted=text)

    try:
        from huggingface_hub import HfApi, snapshot_download
        patterns = allow_patterns
        if patterns is None:
            patterns = _select_hub_files(HfApi().list_repo_files(repo_id, revision=revision), required)
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                        allow_patterns=list(patterns), ignore_patterns=list(ignore_patterns)))
    except (ImportError, OSError, ValueError) as error:  # hub HTTP errors are OSErrors
        raise _not_found(f'Model {text!r} not found.', looked, hints, wanted=text,
                         reason=f'Downloading {repo_id} failed: {error}') from error
    missing = _missing_files(folder, required)
    if missing:
        looked.append(f'{folder} (downloaded: missing {", ".join(missing)})')
        raise _not_found(f'Model {text!r} is incomplete.', looked, hints, wanted=text,
                         reason=f'The hub repo {repo_id} has no {", ".join(missing)}.')
    return folder


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def load_state_dict(path: Union[str, 'os.PathLike[str]'], map_location: Any = 'cpu', *,
                    safe_globals: Sequence[Any] = ()) -> dict:
    """Load a checkpoint without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``.
    A file that needs other Python objects is refused (never retried with ``weights_only=False``).

    Args:
        path: the checkpoint file.
        map_location: device for the tensors (``'cpu'``, ``'cuda:0'``, a ``torch.device``; for torch files
            anything ``torch.load`` accepts).
        safe_globals: extra classes/functions the caller trusts in a torch pickle (e.g. the few mmengine types
            in a training checkpoint); passed to ``torch.serialization.safe_globals``.

    Returns:
        The checkpoint's top-level dict (a state dict, or a dict that holds one, e.g. ``{'params_ema': ...}``).

    Raises:
        CheckpointLoadError: the file needs arbitrary unpickling, or is not a valid checkpoint.
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

    guard = torch.serialization.safe_globals(list(safe_globals)) if safe_globals else contextlib.nullcontext()
    try:
        with guard:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next((line.strip() for line in str(error).splitlines() if 'WeightsUnpickler error' in line),
                      str(error).splitlines()[0] if str(error) else type(error).__name__)
        if 'Unsupported global' in detail:
            # Name the offending type; the fix is to re-save the tensors, not to trust the pickle.
            raise CheckpointLoadError(
                f'{path} contains pickled Python objects that portraitisr will not load ({detail}). Loading it '
                'would mean running arbitrary code. Re-save only its tensors, in a trusted environment, as '
                'safetensors or a plain dict of tensors; or, if you trust exactly those types, pass them in '
                'safe_globals=.') from error
        raise CheckpointLoadError(f'{path} is not a readable torch checkpoint ({detail})') from error
    except RuntimeError as error:  # e.g. a truncated zip archive
        raise CheckpointLoadError(f'{path} is not a readable torch checkpoint ({error})') from error
    if not isinstance(checkpoint, dict):
        raise TypeError(f'{path} holds a {type(checkpoint).__name__}, not a dict of tensors')
    return checkpoint
