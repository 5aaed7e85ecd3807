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

Trust: a file in ``$PORTRAITISR_HOME`` or at an explicit path is the user's; a file that another tool put in its
cache (torch hub, pyiqa, CLIP, facexlib, the Hugging Face cache) is used only when its sha256 matches a known one,
because anything can have downloaded it there under that name. Downloads use https (plain http only to a loopback
address, for tests and same-machine mirrors), never follow a redirect to a weaker scheme, resume a ``.part`` only
when the server identifies the same file version (ETag/Last-Modified via ``If-Range``), and check the length and,
when known, the sha256 before the file is moved into place. Without a published sha256, ``trust_on_first_use``
records the digest of the first file next to it and refuses a different one later.

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

from portraitisr.utils.atomic_files import fsync_folder, write_bytes_atomically

__all__ = [
    'WeightsNotFoundError', 'ChecksumError', 'CheckpointLoadError', 'InsecureURLError', 'WeightSpec',
    'portraitisr_home', 'download_allowed', 'torch_hub_dir', 'hf_hub_cache_dir', 'resolve_file', 'download_file',
    'check_download_url', 'tofu_record_path', 'resolve_pretrained_dir', 'load_state_dict', 'sha256_of',
    'MIN_SAFE_TORCH', 'DEFAULT_HUB_IGNORE_PATTERNS'
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
    """A file's sha256 differs from the expected one (``expected`` and ``got`` hold both digests)."""

    def __init__(self, message: str, *, expected: Optional[str] = None, got: Optional[str] = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class CheckpointLoadError(pickle.UnpicklingError, ValueError):
    """A checkpoint cannot be loaded safely (it needs arbitrary unpickling) or is not a checkpoint at all.

    Also a ``ValueError``: it is bad input, and callers that report bad input in one line catch it as such.
    The message is one line.
    """


class InsecureURLError(OSError):
    """A download URL (or a redirect on the way) that is not https, or that downgrades the connection."""


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
        f'put the file at {home / name} (files in the other caches above count only with a matching sha256)',
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
                 sha256: Optional[str] = None, allow_download: Optional[bool] = None, progress: bool = True,
                 trust_on_first_use: bool = False, timeout: float = 30.0) -> Path:
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
            Files in the other tools' caches (every place after ``$PORTRAITISR_HOME``) are used only when their
            sha256 matches ``sha256`` (or the trust-on-first-use record); without one they are listed as "not
            used" in the error.
        filename: name of the file in the caches (default: from ``spec`` or the URL).
        url: where to download the file from when it is nowhere on disk (https, or http to a loopback address).
        sha256: expected 64-hex sha256. Given: an explicit file that differs raises :class:`ChecksumError`, a
            cached copy that differs is skipped, a download that differs is deleted and raises.
        allow_download: ``None`` reads env ``PORTRAITISR_ALLOW_DOWNLOAD``; without permission nothing touches
            the network.
        progress: show a tqdm bar while downloading.
        trust_on_first_use: without ``sha256``, record the digest of the first file found in
            ``$PORTRAITISR_HOME`` or downloaded in ``<file>.sha256`` (see :func:`tofu_record_path`); from then on
            the record acts as ``sha256``, so a different file is refused.
        timeout: seconds a download may wait for the server.

    Returns:
        Path of the file. Downloads are written to ``portraitisr_home() / filename``.

    Raises:
        WeightsNotFoundError: nothing found and no (successful) download; the message is one paragraph.
        ChecksumError: the explicit file or the download has the wrong sha256 (or differs from the first one).
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
                    raise ChecksumError(f'{explicit}: sha256 mismatch, expected {sha256}, got {got}', expected=sha256,
                                        got=got)
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

    home_file = portraitisr_home() / name
    record = tofu_record_path(home_file) if trust_on_first_use and sha256 is None else None
    recorded = _read_tofu_record(record) if record is not None else None
    expected = sha256 or recorded
    expected_note = f' (recorded at its first download in {record})' if recorded else ''

    # (label, path, whether another tool filled that folder)
    candidates: list[tuple[str, Path, bool]] = [(ENV_HOME, home_file, False)]
    if url is not None:
        hf_entry = _hf_cached_file(url)
        if hf_entry is not None:
            candidates.append((*hf_entry, True))
    candidates += [(label, folder / base, True) for label, folder in _file_cache_dirs()]

    seen: set[Path] = set()
    unverified: list[Path] = []
    for label, candidate, foreign in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        if not candidate.is_file():
            looked.append(f'{candidate} ({label})')
            continue
        if expected is not None:
            got = sha256_of(candidate)
            if got == expected:
                return candidate
            looked.append(f'{candidate} ({label}: present but sha256 is {got}, expected {expected}{expected_note})')
            continue
        if foreign:
            # Another tool downloaded it under this name, from wherever it was told to: not ours to trust.
            looked.append(f'{candidate} ({label}: present but not used: another tool put it there and no sha256 '
                          'is known to check it against)')
            unverified.append(candidate)
            continue
        if record is not None:
            try:
                _write_tofu_record(record, sha256_of(candidate), name)
            except OSError as error:  # a read-only shared cache: usable, but nothing to compare later files with
                warnings.warn(f'could not record the sha256 of {candidate} in {record} ({error}); a different file '
                              'there later will not be noticed', stacklevel=2)
        return candidate

    allowed = download_allowed(allow_download)
    what = f'Weights file {name!r} not found.'
    hints = _how_to_provide_file(name, url, allowed)
    if unverified:
        hints.append(f'or, if you trust {unverified[0]}, copy it to {home_file} (or pass its path explicitly)')
    if url is None or not allowed:
        raise _not_found(what, looked, hints, wanted=name, url=url)
    part = home_file.with_name(home_file.name + '.part')
    try:
        path = download_file(url, home_file, sha256=expected, progress=progress, timeout=timeout,
                             warn_unverified=record is None)
    except ChecksumError as error:
        if not recorded:
            raise
        raise ChecksumError(
            f'{url}: the downloaded file differs from the one first downloaded (sha256 {error.got}; {record} '
            f'records {recorded}); it was deleted. If the publisher replaced the file on purpose, delete {record} '
            'to trust the new one.', expected=recorded, got=error.got) from error
    except (OSError, http.client.HTTPException) as error:
        # urllib.error.URLError and InsecureURLError are OSErrors.
        reason = f'Downloading {url} to {home_file} failed: {error}.'
        if part.is_file():  # kept only when the server identified the file version, so a retry can resume
            reason += ' Running again resumes the download.'
        raise _not_found(what, looked, hints, wanted=name, url=url, reason=reason) from error
    if record is not None:
        digest = sha256_of(path)
        _write_tofu_record(record, digest, name)
        warnings.warn(f'{url} was downloaded without a sha256 to verify it against; its digest ({digest}) is '
                      f'recorded in {record} and a later download must match it (trust on first use)', stacklevel=2)
    return path


# --------------------------------------------------------------------------------------------------------------
# Trust on first use
# --------------------------------------------------------------------------------------------------------------
def tofu_record_path(path: Union[str, 'os.PathLike[str]']) -> Path:
    """Where the first-download digest of ``path`` is recorded: ``<path>.sha256`` (``sha256sum`` format)."""
    path = Path(path)
    return path.with_name(path.name + '.sha256')


def _read_tofu_record(record: Path) -> Optional[str]:
    if not record.is_file():
        return None
    fields = record.read_text(encoding='utf-8').split()
    if not fields or not _SHA256_RE.match(fields[0].lower()):
        # A damaged record must not silently turn into "no record" (which would trust any file again).
        raise ChecksumError(f'{record} does not hold a sha256 (expected "<64 hex digits>  <file name>"); '
                            'delete it to trust the current file again')
    return fields[0].lower()


def _write_tofu_record(record: Path, digest: str, name: str) -> None:
    if _read_tofu_record(record) == digest:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(record, f'{digest}  {Path(name).name}\n'.encode())


# --------------------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------------------
def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() == 'localhost':
        return True
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_download_url(url: str, *, previous: Optional[str] = None) -> None:
    """Refuse a URL the resolver will not download from.

    https anywhere; plain http only to a loopback address (the test suite's server, a mirror on the same machine),
    since nothing else protects an unpinned file on the way. ``previous`` is the URL that redirected here: a
    redirect may not go from https to anything else (no downgrade), nor anywhere but http(s).

    Raises:
        InsecureURLError: naming the URL and the rule.
    """
    parsed = urllib.parse.urlparse(url)
    came_from = f' (redirected from {previous})' if previous else ''
    if parsed.scheme == 'https':
        return
    if parsed.scheme == 'http' and _is_loopback(parsed.hostname):
        if previous is not None and urllib.parse.urlparse(previous).scheme == 'https':
            raise InsecureURLError(f'refusing the redirect from https to plain http: {url}{came_from}')
        return
    if parsed.scheme == 'http':
        raise InsecureURLError(f'refusing to download over plain http from {parsed.hostname}: {url}{came_from}; '
                               'use an https URL (plain http is allowed only to a loopback address)')
    raise InsecureURLError(f'refusing to download from a {parsed.scheme or "scheme-less"} URL: {url}{came_from}; '
                           'only https is allowed')


class _NoDowngradeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL that :func:`check_download_url` accepts (urllib would follow ftp too)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's hook)
        try:
            check_download_url(urllib.parse.urljoin(req.full_url, newurl), previous=req.full_url)
        except InsecureURLError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, headers: Mapping[str, str], timeout: float):
    check_download_url(url)
    opener = urllib.request.build_opener(_NoDowngradeRedirectHandler())
    return opener.open(urllib.request.Request(url, headers=dict(headers)), timeout=timeout)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise downloads of one file across processes (e.g. DDP ranks); the lock file is removed afterwards,
    also after a failure. The OS drops the lock if the process dies.

    Removing a lock file others may be waiting on is safe because a waiter that wakes up on a removed (or
    replaced) file lets go and locks the file now at ``lock_path`` instead.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are then the caller's job
        yield
        return
    while True:
        handle = open(lock_path, 'a')
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder before us removed this file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _content_range(header: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` or ``bytes */total`` header."""
    match = re.match(r'bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)', header or '')
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != '*' else None
    return start, total


def _validator(headers) -> Optional[str]:
    """The value to send in ``If-Range``: a strong ETag, else Last-Modified, else None (not resumable)."""
    etag = headers.get('ETag')
    if etag and not etag.startswith('W/'):  # If-Range needs a strong validator (RFC 9110, 13.1.5)
        return etag
    return headers.get('Last-Modified') or None


def _content_length(headers) -> Optional[int]:
    value = headers.get('Content-Length')
    return int(value) if value is not None and value.strip().isdigit() else None


class _PartState:
    """What a ``.part`` file holds: bytes of ``url`` in the version named by ``validator``, ``length`` in all.

    Stored as ``<name>.part.json`` next to the ``.part``. A ``.part`` without it (another program's, or an old
    one) is never resumed: its bytes cannot be tied to the file the server has now.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, url: str) -> Optional[dict]:
        import json
        try:
            state = json.loads(self.path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get('url') != url or not state.get('validator') \
                or not isinstance(state.get('length'), int):
            return None
        return state

    def write(self, url: str, validator: str, length: int) -> None:
        import json
        write_bytes_atomically(self.path, json.dumps(dict(url=url, validator=validator, length=length)).encode())

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def discard(self, part: Path) -> None:
        """Remove the ``.part`` and its record."""
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        self.forget()


def download_file(url: str, destination: Union[str, 'os.PathLike[str]'], *, sha256: Optional[str] = None,
                  progress: bool = True, timeout: float = 30.0, chunk_size: int = 1 << 20,
                  warn_unverified: bool = True) -> Path:
    """Download ``url`` to ``destination`` atomically, resuming a previous partial download when that is safe.

    Bytes go to ``<destination>.part``. An existing ``.part`` is resumed (HTTP ``Range``) only if it was started
    by this function from the same URL and the server still has the same file version: the ETag or
    Last-Modified recorded then is sent as ``If-Range``, and the reply must continue at the right byte of a file
    of the recorded length. Anything else (no validator, a changed file, a 416 reply) restarts from zero. The
    transfer must deliver every byte the server announced (``Content-Length``); a reply without a length (and not
    chunked) is refused unless ``sha256`` can tell a complete file from a cut one. The finished file is checked
    against ``sha256`` (a mismatch deletes it and raises :class:`ChecksumError`), fsynced, and only then moved
    into place with ``os.replace``, so ``destination`` never holds a partial or unverified file. An existing
    ``destination`` that matches ``sha256`` (or any existing one when ``sha256`` is None) is returned without
    downloading. The ``.lock`` file is removed afterwards, also after a failure; a ``.part`` is kept after a
    failure only when it can be resumed.

    This always uses the network: callers decide whether a download is allowed (see :func:`resolve_file`).

    Raises:
        InsecureURLError: ``url`` or a redirect is not https (see :func:`check_download_url`).
        ChecksumError: the downloaded bytes have the wrong sha256.
        OSError: network errors (``urllib.error.URLError``) or an incomplete transfer.
    """
    sha256 = _normalise_sha256(sha256)
    check_download_url(url)
    destination = Path(destination).expanduser()
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + '.part')
    state = _PartState(destination.with_name(destination.name + '.part.json'))
    with _exclusive_lock(destination.with_name(destination.name + '.lock')):
        # Another process may have finished this download while we waited for the lock.
        if destination.is_file() and (sha256 is None or sha256_of(destination) == sha256):
            return destination
        digest = _fetch_to_part(url, part, state, sha256=sha256, progress=progress, timeout=timeout,
                                chunk_size=chunk_size)
        if sha256 is not None and digest != sha256:
            state.discard(part)
            raise ChecksumError(f'{url}: sha256 mismatch, expected {sha256}, got {digest}; '
                                'the downloaded file was deleted', expected=sha256, got=digest)
        if sha256 is None and warn_unverified:
            warnings.warn(f'{url} was downloaded without a sha256 to verify it against ({digest})', stacklevel=2)
        os.replace(part, destination)
        fsync_folder(destination.parent)
        state.discard(part)
        st = destination.stat()
        _SHA256_MEMO[(str(destination.resolve()), st.st_size, st.st_mtime_ns)] = digest
    return destination


def _fetch_to_part(url: str, part: Path, state: _PartState, *, sha256: Optional[str], progress: bool,
                   timeout: float, chunk_size: int) -> str:
    """Complete ``part`` from ``url`` (resuming only what can be resumed) and return the sha256 of all of it."""
    if sha256 is not None and part.is_file() and sha256_of(part) == sha256:
        return sha256  # a run that stopped right before the rename: nothing left to fetch
    saved = state.read(url) if part.is_file() else None
    if saved is not None and 0 < part.stat().st_size < saved['length']:
        try:
            return _transfer(url, part, state, saved, sha256=sha256, progress=progress, timeout=timeout,
                             chunk_size=chunk_size)
        except _RestartDownload:
            pass
    # Not ours, from a server that gave no validator, too long, or not continuable: start again.
    state.discard(part)
    return _transfer(url, part, state, None, sha256=sha256, progress=progress, timeout=timeout,
                     chunk_size=chunk_size)


class _RestartDownload(Exception):
    """The ``.part`` cannot be continued (changed file, 416, a range elsewhere): start from zero."""


def _same_version(validator: str, headers) -> bool:
    """Whether a 206 reply's own ETag / Last-Modified (when it sends them) still names the recorded version."""
    if validator.startswith('"'):
        etag = headers.get('ETag')
        return etag is None or etag == validator
    last_modified = headers.get('Last-Modified')
    return last_modified is None or last_modified == validator


def _transfer(url: str, part: Path, state: _PartState, saved: Optional[dict], *, sha256: Optional[str],
              progress: bool, timeout: float, chunk_size: int) -> str:
    """One HTTP request: continue ``part`` (``saved`` given) or write it from the start; returns the sha256."""
    offset = part.stat().st_size if saved is not None else 0
    headers = {'User-Agent': 'portraitisr-weight-resolver'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
        headers['If-Range'] = saved['validator']
    try:
        response = _open(url, headers, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing after ``offset``, or a server that cannot serve the range: the .part's bytes are not
            # known to be the file (only a pinned sha256 could say, and it did not match). Start again.
            error.close()
            raise _RestartDownload() from error
        raise

    with response:
        digest = hashlib.sha256()
        length = _content_length(response.headers)
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get('Content-Range'))
            if start != offset or total != saved['length'] or not _same_version(saved['validator'],
                                                                                 response.headers) \
                    or (length is not None and offset + length != total):
                # Bytes of another version or from elsewhere in the file: they cannot continue the .part.
                raise _RestartDownload()
            with open(part, 'rb') as f:
                for block in iter(lambda: f.read(chunk_size), b''):
                    digest.update(block)
            mode, expected_total = 'ab', total
        elif response.status == 200:
            # A fresh download, or the file changed since the .part began (If-Range failed): all of it.
            offset, mode, expected_total = 0, 'wb', length
            state.forget()  # the old record (if any) describes the old bytes
            chunked = 'chunked' in response.headers.get('Transfer-Encoding', '').lower()
            if expected_total is None and not chunked and sha256 is None:
                # The body then ends wherever the connection happens to close: a cut file looks complete.
                state.discard(part)
                raise OSError(f'{url}: the server did not say how long the file is and no sha256 is known, so a '
                              'cut-short download could not be told from a complete one')
            validator = _validator(response.headers)
            if validator is not None and expected_total is not None:
                state.write(url, validator, expected_total)
        else:
            raise OSError(f'{url}: unexpected HTTP status {response.status} for a download')
        received = offset
        resumable = state.read(url) is not None
        try:
            with open(part, mode) as f, tqdm(total=expected_total, initial=offset, unit='B', unit_scale=True,
                                             unit_divisor=1024, desc=part.name[:-len('.part')],
                                             disable=not progress) as bar:
                for block in iter(lambda: response.read(chunk_size), b''):
                    f.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
            if expected_total is not None and received != expected_total:
                raise OSError(f'{url}: connection closed after {received} of {expected_total} bytes')
        except BaseException:
            if not resumable:
                state.discard(part)  # without a validator these bytes can never be continued
            raise
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
