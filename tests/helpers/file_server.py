"""A loopback HTTP file server that speaks HTTP Range like a real file host, plus offline test fixtures.

Shared by the weight-resolver and model-zoo tests: a test module loads it as a plugin,
``pytest_plugins = ('tests.helpers.file_server',)``, and gets the fixtures ``file_server``, ``no_internet`` and
``weight_env`` (importing it directly instead would skip pytest's assertion rewriting here).
"""
import email.utils
import hashlib
import http.server
import re
import socket
import threading

import pytest


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``server.root`` with ETag and Last-Modified; honours ``Range: bytes=N-`` (unless
    ``server.honour_range`` is False) and ``If-Range`` (unless ``server.honour_if_range`` is False). Steering:
    ``server.validators`` (send ETag/Last-Modified), ``server.send_length`` (send Content-Length),
    ``server.cut_after`` (close the connection after that many body bytes, once), ``server.redirects``
    ({path: (status, Location)})."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        rng = self.headers.get('Range')
        server.requests.append((self.path, rng))
        server.if_range.append(self.headers.get('If-Range'))
        if self.path in server.redirects:
            status, location = server.redirects[self.path]
            self.send_response(status)
            self.send_header('Location', location)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        path = server.root / self.path.lstrip('/')
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        last_modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        if_range = self.headers.get('If-Range')
        use_range = rng and server.honour_range and (
            if_range is None or not server.honour_if_range or if_range in (etag, last_modified))
        # Taken before any byte is sent: a client that hangs up on the headers (and a test that then steers the
        # next request) must not find this request's thread still holding the cut.
        cut_after, server.cut_after = server.cut_after, None
        start = 0
        if use_range:
            start = int(re.fullmatch(r'bytes=(\d+)-', rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        if server.validators:
            self.send_header('ETag', etag)
            self.send_header('Last-Modified', last_modified)
        if server.send_length:
            self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if cut_after is not None:
            body = body[:cut_after]
        self.wfile.write(body)
        server.bytes_sent += len(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """A threaded server on 127.0.0.1 serving ``server.root``; ``server.url``, ``server.requests`` (path,
    Range header), ``server.if_range`` (If-Range headers), ``server.bytes_sent`` and the steering attributes of
    :class:`RangeHandler` let tests inspect and steer it; ``server.serve(name, data)`` publishes bytes (returns
    URL, sha256) and ``server.down_url(name)`` is a URL on a port nobody listens on."""
    root = tmp_path / 'served'
    root.mkdir()
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), RangeHandler)
    server.root, server.requests, server.if_range, server.bytes_sent = root, [], [], 0
    server.honour_range, server.honour_if_range, server.validators, server.send_length = True, True, True, True
    server.cut_after, server.redirects = None, {}
    server.url = f'http://127.0.0.1:{server.server_address[1]}'
    server.serve = lambda name, data: serve(server, name, data)
    server.down_url = free_port_url
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def serve(server, name: str, data: bytes) -> tuple:
    """Put ``data`` on ``server`` as ``name``; returns (URL, sha256)."""
    (server.root / name).write_bytes(data)
    return f'{server.url}/{name}', hashlib.sha256(data).hexdigest()


def free_port_url(name: str = 'x.pth') -> str:
    """A URL on a loopback port nobody listens on (a server that is down)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/{name}'


@pytest.fixture
def no_internet(monkeypatch):
    """Fail loudly if anything tries to connect beyond the loopback interface."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ('127.0.0.1', 'localhost', '::1') and self.family in (
                socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f'test tried to reach the network: {address}')
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, 'connect', guarded_connect)


@pytest.fixture
def weight_env(tmp_path, monkeypatch):
    """Point every cache the resolver knows at empty folders under tmp_path; downloads not allowed by env."""
    dirs = {
        'home': tmp_path / 'portraitisr_home',
        'torch_home': tmp_path / 'torch_home',
        'hf_cache': tmp_path / 'hf_cache',
    }
    monkeypatch.setenv('PORTRAITISR_HOME', str(dirs['home']))
    monkeypatch.setenv('TORCH_HOME', str(dirs['torch_home']))
    monkeypatch.setenv('HF_HUB_CACHE', str(dirs['hf_cache']))
    monkeypatch.delenv('PORTRAITISR_ALLOW_DOWNLOAD', raising=False)
    return dirs
