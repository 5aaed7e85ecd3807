"""Run the study app with uvicorn: in the foreground (``portraitisr study serve``: :func:`open_study_server`, then
:func:`serve_forever`) or in a background thread (tests, benchmarks, notebooks). The socket is bound first, so
``port=0`` takes a free port and the URL is known before the first request."""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import NamedTuple, Optional, Union

import uvicorn
from starlette.applications import Starlette

from .webapp import build_app

__all__ = ['bind_socket', 'BackgroundServer', 'StudyServer', 'open_study_server', 'serve_forever']

PathLike = Union[str, 'os.PathLike[str]']


def bind_socket(host: str = '127.0.0.1', port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port; see ``getsockname()``)."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f'http://[{host}]:{port}' if ':' in host else f'http://{host}:{port}'


class StudyServer(NamedTuple):
    """A study's app and its bound socket, before serving (``url``: where participants go)."""
    app: Starlette
    sock: socket.socket
    url: str


def open_study_server(study_dir: PathLike, db_path: Optional[PathLike] = None, admin_token: Optional[str] = None,
                      max_participants: Optional[int] = None, host: str = '127.0.0.1',
                      port: int = 8000) -> StudyServer:
    """Build the app of a study folder (:func:`~.webapp.build_app`, same errors) and bind its socket; nothing is
    served until :func:`serve_forever`."""
    app = build_app(study_dir, db_path=db_path, admin_token=admin_token, max_participants=max_participants)
    sock = bind_socket(host, port)
    return StudyServer(app, sock, _url(sock))


def _config(app, access_log: bool) -> uvicorn.Config:
    # One process: SQLite's writer lock is the bottleneck, not the CPU; see tools/benchmarks/study_load.py.
    return uvicorn.Config(app, log_level='warning', access_log=access_log, lifespan='off', timeout_keep_alive=30)


def serve_forever(app, sock: socket.socket, access_log: bool = False) -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl-C or SIGTERM); returns after a graceful shutdown."""
    try:
        uvicorn.Server(_config(app, access_log)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: it is how one stops a server
        pass


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on 127.0.0.1 (a free port) in a thread.

    Args:
        app: the ASGI app.
        host: address to bind (default loopback only).
        port: 0 for a free port.
    """

    def __init__(self, app, host: str = '127.0.0.1', port: int = 0) -> None:
        self.sock = bind_socket(host, port)
        self.url = _url(self.sock)
        self.server = uvicorn.Server(_config(app, access_log=False))
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[self.sock]), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f'the study server did not start on {self.url}')
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=20)
        self.sock.close()
