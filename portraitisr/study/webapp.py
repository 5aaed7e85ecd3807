"""``portraitisr study serve``: the web app participants answer in (Starlette; uvicorn serves it, see :mod:`.cli`).

Participants
    ``GET /`` is one page (``static/index.html`` + ``study.js``) that shows one question per screen. ``POST
    /api/start`` makes a participant (a random session token in an HttpOnly, SameSite=Strict cookie; only its sha256
    is stored) and draws the questionnaire; ``GET /api/state`` gives the current question, so a reload or a new tab
    resumes where the participant is; ``POST /api/answer`` with JSON ``{"question_id", "choice"}`` stores an answer
    and returns the next question. What the page receives names no method and no file: questions and images are
    opaque random ids (``GET /img/<32 hex>``), options are in a shuffled order.

Answers
    Idempotent: the same answer posted again (a retry after a lost connection) is acknowledged as ``repeat`` and
    stored once. Refused, with a JSON ``{"error": ...}`` and nothing changed: no session (401), a question that is
    not in the participant's questionnaire (404), a choice out of range or a malformed body (422 / 400 / 415), another
    answer to an answered question or an answer to a later question (409), a closed study (403).

Admin
    ``/admin`` (a login form), ``/admin/export/answers.csv`` (every answer with the method it picked) and
    ``/admin/export/win_rates.csv`` (the analysis with default settings) need the admin token: ``Authorization:
    Bearer <token>`` or the cookie set by logging in on ``/admin``. No token: 401; a wrong one: 403.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import json
import os
import re
import secrets
from pathlib import Path
from string import Template
from typing import Optional, Union
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .analysis import analyse
from .design import STUDY_KINDS, draw_questionnaire, load_study
from .storage import DB_FILE, AnswerError, StudyClosed, StudyStore
from .win_rates import format_win_rates

__all__ = ['build_app', 'PARTICIPANT_COOKIE', 'ADMIN_COOKIE', 'MIN_ADMIN_TOKEN_LENGTH']

PathLike = Union[str, 'os.PathLike[str]']

STATIC = Path(__file__).resolve().parent / 'static'
PARTICIPANT_COOKIE = 'study_session'
ADMIN_COOKIE = 'study_admin'
MIN_ADMIN_TOKEN_LENGTH = 16
#: Image ids are 128-bit random hex strings (see create.py); anything else is refused before any lookup.
IMAGE_ID = re.compile(r'^[0-9a-f]{32}$')
#: A participant's answer is a few dozen bytes; anything far larger is refused unread.
MAX_BODY = 4096
SECURITY_HEADERS = [
    (b'content-security-policy', b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b'x-content-type-options', b'nosniff'),
    (b'referrer-policy', b'no-referrer'),
    (b'x-frame-options', b'DENY'),
]


class SecurityHeaders:
    """ASGI middleware: security headers on every response, and the caching rules: images never change under their
    id (cached for a day), static files are revalidated (ETag), everything else is ``no-store`` (answers and
    questions must never come from a cache)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return
        path = scope['path']
        cache = (b'private, max-age=86400, immutable' if path.startswith('/img/')
                 else b'no-cache' if path.startswith('/static/') else b'no-store')

        async def with_headers(message):
            if message['type'] == 'http.response.start':
                headers = [(k, v) for k, v in message.get('headers', []) if k.lower() != b'cache-control']
                headers += SECURITY_HEADERS + [(b'cache-control', cache)]
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, with_headers)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status)


class StudyApp:
    """The routes of one study; see the module docstring."""

    def __init__(self, study_dir: PathLike, db_path: Optional[PathLike] = None, admin_token: Optional[str] = None,
                 max_participants: Optional[int] = None) -> None:
        self.study_dir = Path(study_dir)
        self.design, fingerprint = load_study(self.study_dir)
        self.store = StudyStore(db_path or self.study_dir / DB_FILE, fingerprint)
        if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f'the admin token must have at least {MIN_ADMIN_TOKEN_LENGTH} characters')
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        # The admin cookie holds a MAC of the token, not the token itself.
        self._admin_session = hmac.new(self.admin_token.encode(), b'portraitisr-study-admin',
                                       hashlib.sha256).hexdigest()
        self.max_participants = max_participants
        images = self.study_dir.resolve()
        self.images = {image_id: images / relative for image_id, relative in self.design.images.items()}
        page = (STATIC / 'index.html').read_text(encoding='utf-8')
        self.index_page = Template(page).substitute(title=html.escape(self.design.title))

    # ------------------------------------------------------------------------------------------ helpers
    def _participant(self, request: Request) -> Optional[int]:
        token = request.cookies.get(PARTICIPANT_COOKIE)
        return self.store.participant(token) if token else None

    def _choices(self, question: dict) -> int:
        return self.design.choices(len(question['option_labels']))

    def _public(self, state: dict) -> dict:
        """What the page sees: positions, prompt, opaque image URLs; never labels, items or the right answer."""
        kind = self.design.study_kind
        question = state['question']
        public = dict(done=question is None, position=state['position'], total=state['total'])
        if question is not None:
            public['question'] = dict(
                id=question['id'], prompt=self.design.prompt, layout='ab' if kind.answers else 'choose',
                reference=None if question['reference'] is None else f'/img/{question["reference"]}',
                options=[f'/img/{image}' for image in question['option_images']], answers=list(kind.answers))
        following = state.get('next')
        public['prefetch'] = [] if following is None else (
            [f'/img/{image}' for image in following['option_images']]
            + ([f'/img/{following["reference"]}'] if following['reference'] else []))
        return public

    def _is_admin(self, request: Request) -> Optional[Response]:
        """None when the request carries the admin token (or the login cookie); else the error response."""
        header = request.headers.get('authorization', '')
        cookie = request.cookies.get(ADMIN_COOKIE)
        if header.lower().startswith('bearer '):
            if hmac.compare_digest(header[7:].strip().encode(), self.admin_token.encode()):
                return None
            return _error('wrong admin token', 403)
        if cookie is not None:
            if hmac.compare_digest(cookie.encode(), self._admin_session.encode()):
                return None
            return _error('wrong admin session: log in again on /admin', 403)
        return _error('admin token required (Authorization: Bearer <token>, or log in on /admin)', 401)

    async def _json_body(self, request: Request) -> Union[dict, Response]:
        if request.headers.get('content-type', '').split(';')[0].strip() != 'application/json':
            return _error('send the answer as application/json', 415)
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error('request body too large', 413)
        try:
            data = json.loads(body)
        except ValueError:
            return _error('the body is not valid JSON', 400)
        if not isinstance(data, dict):
            return _error('the body must be a JSON object', 400)
        return data

    # ------------------------------------------------------------------------------------------ participant routes
    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.index_page)

    def start(self, request: Request) -> Response:
        participant = self._participant(request)
        if participant is not None:
            return JSONResponse(self._public(self.store.state(participant)))
        token = secrets.token_urlsafe(32)
        try:
            participant = self.store.start_participant(
                token, lambda number: draw_questionnaire(self.design, number),
                user_agent=request.headers.get('user-agent', ''), max_participants=self.max_participants)
        except StudyClosed as error:
            return _error(str(error), error.status)
        response = JSONResponse(self._public(self.store.state(participant)))
        response.set_cookie(PARTICIPANT_COOKIE, token, max_age=60 * 60 * 24 * 60, httponly=True, samesite='strict',
                            secure=request.url.scheme == 'https')
        return response

    def state(self, request: Request) -> Response:
        participant = self._participant(request)
        if participant is None:
            return _error('no participant session: press Start on the study page', 401)
        return JSONResponse(self._public(self.store.state(participant)))

    async def answer(self, request: Request) -> Response:
        data = await self._json_body(request)
        if isinstance(data, Response):
            return data
        question_id, choice = data.get('question_id'), data.get('choice')
        if not isinstance(question_id, str) or not isinstance(choice, int) or isinstance(choice, bool):
            return _error('the body must be {"question_id": string, "choice": integer}', 422)
        # The store is synchronous (SQLite): run it on a worker thread, as Starlette does for sync endpoints.
        return await run_in_threadpool(self._answer, request, question_id, choice)

    def _answer(self, request: Request, question_id: str, choice: int) -> Response:
        participant = self._participant(request)
        if participant is None:
            return _error('no participant session: press Start on the study page', 401)
        try:
            status, state = self.store.record_answer(participant, question_id, choice, self._choices)
        except AnswerError as error:
            return _error(str(error), error.status)
        return JSONResponse(dict(status=status, state=self._public(state)))

    def image(self, request: Request) -> Response:
        image_id = request.path_params['image_id']
        path = self.images.get(image_id) if IMAGE_ID.match(image_id) else None
        if path is None:
            return _error('unknown image', 404)
        return FileResponse(path)

    # ------------------------------------------------------------------------------------------ admin routes
    def _login_page(self, message: str = '', status: int = 200) -> HTMLResponse:
        note = f'<p class="error">{html.escape(message)}</p>' if message else ''
        return HTMLResponse(_ADMIN_LOGIN.substitute(title=html.escape(self.design.title), note=note),
                            status_code=status)

    def admin(self, request: Request) -> Response:
        if request.cookies.get(ADMIN_COOKIE) is None and 'authorization' not in request.headers:
            return self._login_page()
        refused = self._is_admin(request)
        if refused is not None:
            return self._login_page('Your admin session is not valid: log in again.', refused.status_code)
        responses = self.store.responses()
        results = analyse(self.design, responses, bootstrap=0)
        rows = ''.join(
            f'<tr><td>{s.participant}</td><td>{s.answered} / {s.questions}</td>'
            f'<td>{s.attention_answered - s.attention_failed} / {s.attention_answered}</td>'
            f'<td>{"yes" if s.included else html.escape(s.reason)}</td></tr>' for s in results.participants)
        rates = ''.join(f'<tr><td>{html.escape(r.method)}</td><td>{r.value:.3f}</td><td>{r.selections}</td>'
                        f'<td>{r.answers}</td></tr>' for r in results.win_rates)
        counts = self.store.counts()
        return HTMLResponse(_ADMIN_PAGE.substitute(
            title=html.escape(self.design.title), kind=html.escape(self.design.kind),
            metric=html.escape(results.metric), participants=counts['participants'], finished=counts['finished'],
            answers=counts['answers'], rows=rows, rates=rates, per=self.design.questions_total))

    async def admin_login(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return self._login_page('Request too large.', 413)
        token = parse_qs(body.decode('utf-8', 'replace')).get('token', [''])[0]
        if not token:
            return self._login_page('Enter the admin token.', 401)
        if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return self._login_page('Wrong admin token.', 403)
        response = RedirectResponse('/admin', status_code=303)
        response.set_cookie(ADMIN_COOKIE, self._admin_session, max_age=60 * 60 * 12, httponly=True,
                            samesite='strict', secure=request.url.scheme == 'https')
        return response

    def admin_logout(self, request: Request) -> Response:
        response = RedirectResponse('/admin', status_code=303)
        response.delete_cookie(ADMIN_COOKIE)
        return response

    def export_answers(self, request: Request) -> Response:
        refused = self._is_admin(request)
        if refused is not None:
            return refused
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(['participant', 'position', 'kind', 'item', 'options', 'choice', 'chosen', 'correct',
                         'answered_at'])
        answers = STUDY_KINDS[self.design.kind].answers
        for a in self.store.responses().answers:
            chosen = answers[a.choice] if answers else a.labels[a.choice]
            writer.writerow([a.participant, a.position + 1, a.kind, a.item, '|'.join(a.labels), a.choice, chosen,
                             '' if a.correct is None else a.correct, f'{a.answered_at:.3f}'])
        return Response(out.getvalue(), media_type='text/csv; charset=utf-8',
                        headers={'content-disposition': 'attachment; filename="answers.csv"'})

    def export_win_rates(self, request: Request) -> Response:
        refused = self._is_admin(request)
        if refused is not None:
            return refused
        results = analyse(self.design, self.store.responses())
        return Response(format_win_rates(results.win_rates), media_type='text/csv; charset=utf-8',
                        headers={'content-disposition': 'attachment; filename="win_rates.csv"'})


def build_app(study_dir: PathLike, db_path: Optional[PathLike] = None, admin_token: Optional[str] = None,
              max_participants: Optional[int] = None) -> Starlette:
    """The ASGI app of a study folder (``app.state.study`` is the :class:`StudyApp`, ``.admin_token`` its token).

    Raises:
        StudyFileError: not a study folder, or a database of another study.
        ValueError: an admin token shorter than :data:`MIN_ADMIN_TOKEN_LENGTH`.
    """
    study = StudyApp(study_dir, db_path, admin_token, max_participants)
    routes = [
        Route('/', study.index),
        Route('/api/start', study.start, methods=['POST']),
        Route('/api/state', study.state),
        Route('/api/answer', study.answer, methods=['POST']),
        Route('/img/{image_id}', study.image),
        Route('/admin', study.admin),
        Route('/admin/login', study.admin_login, methods=['POST']),
        Route('/admin/logout', study.admin_logout, methods=['POST']),
        Route('/admin/export/answers.csv', study.export_answers),
        Route('/admin/export/win_rates.csv', study.export_win_rates),
        Mount('/static', StaticFiles(directory=STATIC), name='static'),
    ]
    app = Starlette(routes=routes, middleware=[])
    app.state.study = study
    app.add_middleware(SecurityHeaders)
    return app


_ADMIN_LOGIN = Template('''<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Admin: $title</title><link rel="stylesheet" href="/static/study.css"></head>
<body><main class="admin"><h1>Admin: $title</h1>$note
<form method="post" action="/admin/login"><label>Admin token <input type="password" name="token" id="token"
autocomplete="current-password" required></label> <button type="submit" id="login">Log in</button></form>
</main></body></html>
''')

_ADMIN_PAGE = Template('''<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Admin: $title</title><link rel="stylesheet" href="/static/study.css"></head>
<body><main class="admin"><h1>Admin: $title</h1>
<p>Study kind <b>$kind</b> ($metric), $per questions per participant (attention checks included).
<b id="participants">$participants</b> participants, <b id="finished">$finished</b> finished,
<b id="answers">$answers</b> answers stored.</p>
<p><a href="/admin/export/answers.csv">answers.csv</a> &middot; <a href="/admin/export/win_rates.csv">win_rates.csv</a>
(with 95% bootstrap intervals; the full analysis: <code>portraitisr study results</code>)</p>
<h2>Win rates so far (every finished participant who passed the checks)</h2>
<table><tr><th>method</th><th>$metric</th><th>picked / won</th><th>of</th></tr>$rates</table>
<h2>Participants</h2>
<table><tr><th>#</th><th>answered</th><th>attention checks passed</th><th>counted</th></tr>$rows</table>
<form method="post" action="/admin/logout"><button type="submit">Log out</button></form>
</main></body></html>
''')
