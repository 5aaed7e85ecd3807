"""Downloading one weight file safely: https only, resumable only when provably the same file, checked, atomic.

Plain http is allowed only to a loopback address (tests, same-machine mirrors); a redirect may never go to a weaker
scheme. A ``.part`` is resumed only when the server identifies the same file version (ETag/Last-Modified via
``If-Range``); the length and, when known, the sha256 are checked before the file is moved into place. Callers decide
whether a download is allowed at all (:func:`portraitisr.weights.files.resolve_file`); this module always uses the
network.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from portraitisr.utils.atomic_files import fsync_folder, write_bytes_atomically

from .checksums import normalise_sha256, remember_sha256, sha256_of
from .errors import ChecksumError, InsecureURLError

__all__ = ['check_download_url', 'download_file']


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
    sha256 = normalise_sha256(sha256)
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
        remember_sha256(destination, digest)
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
