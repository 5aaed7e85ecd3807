"""Single weight files: turn a spec (a path, a file name, a URL or a dict) into the path of a local file.

The order is always: the explicit location, then caches that already exist on this machine, then a download, and
the download happens only when it was allowed (``allow_download=True`` or ``PORTRAITISR_ALLOW_DOWNLOAD=1``). A file
in ``$PORTRAITISR_HOME`` or at an explicit path is the user's; a file that another tool put in its cache is used only
when its sha256 matches a known one, because anything can have downloaded it there under that name. When nothing is
found, one :class:`~portraitisr.weights.errors.WeightsNotFoundError` names what was wanted, every place looked at
and how to provide it.
"""
from __future__ import annotations

import http.client
import os
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from . import places
from .checksums import normalise_sha256, read_tofu_record, sha256_of, tofu_record_path, write_tofu_record
from .download import download_file
from .errors import ChecksumError, weights_not_found
from .hub import hf_cached_file
from .places import ENV_ALLOW_DOWNLOAD, ENV_HOME, download_allowed, portraitisr_home

__all__ = ['WeightSpec', 'resolve_file']

#: A local path, a file name, an http(s) URL, or a dict with keys ``path``, ``url``, ``sha256``, ``filename``.
WeightSpec = Union[str, 'os.PathLike[str]', Mapping[str, Any]]

_SPEC_KEYS = frozenset({'path', 'url', 'sha256', 'filename'})


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
    sha256 = normalise_sha256(sha256)

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
            hint = f'check the path, or pass a file name or URL to look it up in {portraitisr_home()}'
            raise weights_not_found(f'Weights file {explicit} not found.', looked, [hint], wanted=str(explicit))
    if filename is None:
        filename = _url_filename(url)  # url is set here: path and filename were both None otherwise
    name = _check_relative_name(os.fspath(filename))
    base = Path(name).name

    home_file = portraitisr_home() / name
    record = tofu_record_path(home_file) if trust_on_first_use and sha256 is None else None
    recorded = read_tofu_record(record) if record is not None else None
    expected = sha256 or recorded
    expected_note = f' (recorded at its first download in {record})' if recorded else ''

    # (label, path, whether another tool filled that folder)
    candidates: list[tuple[str, Path, bool]] = [(ENV_HOME, home_file, False)]
    if url is not None:
        hf_entry = hf_cached_file(url)
        if hf_entry is not None:
            candidates.append((*hf_entry, True))
    candidates += [(label, folder / base, True) for label, folder in places.file_cache_dirs()]

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
                write_tofu_record(record, sha256_of(candidate), name)
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
        raise weights_not_found(what, looked, hints, wanted=name, url=url)
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
        raise weights_not_found(what, looked, hints, wanted=name, url=url, reason=reason) from error
    if record is not None:
        digest = sha256_of(path)
        write_tofu_record(record, digest, name)
        warnings.warn(f'{url} was downloaded without a sha256 to verify it against; its digest ({digest}) is '
                      f'recorded in {record} and a later download must match it (trust on first use)', stacklevel=2)
    return path
