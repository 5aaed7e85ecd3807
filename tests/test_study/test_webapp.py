"""The study web app against bad input: forged, repeated, out-of-order and malformed answers, unknown question and
image ids, path traversal, missing or wrong admin tokens, a database of another study. Each gets a clear error and
the stored data stays exactly as it was (compared table by table)."""
import json
import sqlite3

import pytest

from tests.helpers.study_data import METHODS, make_restored_folders

pytest.importorskip('starlette', reason='starlette is missing: pip install -e ".[study]"')
pytest.importorskip('httpx', reason='httpx is missing: pip install -e ".[dev]"')

TOKEN = 'webapp-test-admin-token-000'


@pytest.fixture(scope='module')
def study_dir(tmp_path_factory):
    from portraitisr.study.create import create_study

    root = tmp_path_factory.mktemp('study')
    folders, gt = make_restored_folders(root / 'restored', count=5, size=64)
    create_study(root / 'study', 'wr_id', folders, gt=gt, questions=3, attention_checks=1, seed=2)
    return root / 'study'


@pytest.fixture
def app(study_dir, tmp_path):
    from portraitisr.study.webapp import build_app

    return build_app(study_dir, db_path=tmp_path / 'answers.sqlite', admin_token=TOKEN)


def _client(app):
    from starlette.testclient import TestClient

    return TestClient(app, base_url='http://127.0.0.1')


def _snapshot(app):
    """Every row of every table."""
    con = sqlite3.connect(app.state.study.store.path)
    try:
        return {table: con.execute(f'SELECT * FROM {table} ORDER BY 1').fetchall()
                for table in ('meta', 'participants', 'questions', 'answers')}
    finally:
        con.close()


def _started(app):
    client = _client(app)
    response = client.post('/api/start')
    assert response.status_code == 200
    return client, response.json()


def _answer(client, question_id, choice):
    return client.post('/api/answer', json={'question_id': question_id, 'choice': choice})


def test_a_participant_answers_and_sees_no_method_name(app):
    client, state = _started(app)
    assert state['position'] == 0 and state['total'] == 4 and not state['done']
    seen = [json.dumps(state)]
    while not state['done']:
        question = state['question']
        assert all(src.startswith('/img/') and len(src) == 37 for src in question['options'])
        response = _answer(client, question['id'], 0)
        assert response.status_code == 200 and response.json()['status'] == 'recorded'
        state = response.json()['state']
        seen.append(response.text)
    assert state == dict(done=True, position=4, total=4, prefetch=[])
    text = '\n'.join(seen + [client.get('/').text]).lower()
    for word in list(METHODS) + ['@clean', '@gt', 'attention', 'restored', 'item', 'labels', 'correct']:
        assert word.lower() not in text, word
    assert len(_snapshot(app)['answers']) == 4
    # The same browser session does not start a second questionnaire.
    again = client.post('/api/start')
    assert again.json()['done'] and len(_snapshot(app)['participants']) == 1


def test_repeated_answers_are_stored_once_and_cannot_change(app):
    client, state = _started(app)
    first = state['question']['id']
    assert _answer(client, first, 1).json()['status'] == 'recorded'
    before = _snapshot(app)
    repeat = _answer(client, first, 1)  # a retry after a lost connection
    assert repeat.status_code == 200 and repeat.json()['status'] == 'repeat'
    assert repeat.json()['state']['position'] == 1
    changed = _answer(client, first, 2)
    assert changed.status_code == 409 and 'already answered with another choice' in changed.json()['error']
    assert _snapshot(app) == before


@pytest.mark.parametrize('body, status, message', [
    (dict(question_id='0' * 24, choice=0), 404, 'unknown question'),
    (dict(question_id='../../etc/passwd', choice=0), 404, 'unknown question'),
    (dict(question_id=None, choice=0), 422, 'question_id'),
    (dict(choice=0), 422, 'question_id'),
    (dict(question_id='x', choice='1'), 422, 'integer'),
    (dict(question_id='x', choice=True), 422, 'integer'),
    (dict(question_id='x', choice=1.0), 422, 'integer'),
])
def test_malformed_or_unknown_answers_are_refused(app, body, status, message):
    client, _ = _started(app)
    before = _snapshot(app)
    response = client.post('/api/answer', json=body)
    assert response.status_code == status and message in response.json()['error']
    assert _snapshot(app) == before


def test_forged_answers_are_refused_and_change_nothing(app):
    alice, state_a = _started(app)
    bob, state_b = _started(app)
    before = _snapshot(app)
    question = state_a['question']
    # Bob answers Alice's question: unknown for him (ids of others are not confirmed to exist).
    assert _answer(bob, question['id'], 0).status_code == 404
    # A choice out of range, negative, or beyond the candidates.
    for choice in (-1, len(question['options']), 99, 2 ** 62):
        response = _answer(alice, question['id'], choice)
        assert response.status_code == 422 and 'choice must be 0 to' in response.json()['error']
    # A later question than the current one.
    later = _snapshot(app)['questions']
    later_id = next(row[0] for row in later if row[1] == 1 and row[2] == 2)
    response = _answer(alice, later_id, 0)
    assert response.status_code == 409 and 'not the current one' in response.json()['error']
    # No session, a forged session cookie.
    anonymous = _client(app)
    assert _answer(anonymous, question['id'], 0).status_code == 401
    anonymous.cookies.set('study_session', 'forged-token')
    assert _answer(anonymous, question['id'], 0).status_code == 401
    assert anonymous.get('/api/state').status_code == 401
    # Not JSON, the wrong content type, a body that is too large.
    assert alice.post('/api/answer', content=b'{not json', headers={'content-type': 'application/json'}
                      ).status_code == 400
    assert alice.post('/api/answer', content=b'[1, 2]', headers={'content-type': 'application/json'}
                      ).status_code == 400
    assert alice.post('/api/answer', data={'question_id': question['id'], 'choice': '0'}).status_code == 415
    big = json.dumps(dict(question_id=question['id'], choice=0, padding='x' * 10000))
    assert alice.post('/api/answer', content=big, headers={'content-type': 'application/json'}).status_code == 413
    assert _snapshot(app) == before
    assert state_b['question']['id'] != question['id']


@pytest.mark.parametrize('path', [
    '/img/' + '0' * 32, '/img/..%2Fstudy.json', '/img/..%2F..%2Fetc%2Fpasswd', '/img/%2e%2e/study.json',
    '/img/../study.json', '/img/study.json', '/img/' + 'A' * 32, '/img/', '/static/../study.json',
    '/static/..%2F..%2Fstudy.json', '/study.json', '/responses.sqlite', '/images/',
])
def test_image_ids_never_reach_other_files(app, path):
    client, _ = _started(app)
    response = client.get(path)
    assert response.status_code == 404
    assert b'"kind"' not in response.content and b'SQLite' not in response.content


def test_known_images_are_served_with_safe_headers(app):
    client, state = _started(app)
    response = client.get(state['question']['options'][0])
    assert response.status_code == 200 and response.headers['content-type'] == 'image/png'
    assert response.content[:8] == b'\x89PNG\r\n\x1a\n'
    assert response.headers['cache-control'] == 'private, max-age=86400, immutable'
    assert client.get('/static/study.js').headers['cache-control'] == 'no-cache'
    page = client.get('/')
    assert "default-src 'self'" in page.headers['content-security-policy']
    assert page.headers['cache-control'] == 'no-store' and page.headers['x-content-type-options'] == 'nosniff'
    assert client.get('/api/state').headers['cache-control'] == 'no-store'


def test_admin_needs_the_token(app):
    client, state = _started(app)
    _answer(client, state['question']['id'], 0)
    before = _snapshot(app)
    for path in ('/admin/export/answers.csv', '/admin/export/win_rates.csv'):
        missing = client.get(path)
        assert missing.status_code == 401 and 'admin token required' in missing.json()['error']
        wrong = client.get(path, headers={'Authorization': 'Bearer ' + 'x' * 30})
        assert wrong.status_code == 403 and wrong.json()['error'] == 'wrong admin token'
        client.cookies.set('study_admin', 'forged')
        assert client.get(path).status_code == 403
        client.cookies.delete('study_admin')
        ok = client.get(path, headers={'Authorization': f'Bearer {TOKEN}'})
        assert ok.status_code == 200 and ok.headers['content-type'].startswith('text/csv')
    # The admin page: a login form, then the summary; a wrong token gets the form again with an error.
    page = client.get('/admin')
    assert page.status_code == 200 and 'name="token"' in page.text and 'osediffzz' not in page.text
    assert client.post('/admin/login', data={'token': 'nope'}).status_code == 403
    assert client.post('/admin/login', data={}).status_code == 401
    login = client.post('/admin/login', data={'token': TOKEN}, follow_redirects=False)
    assert login.status_code == 303 and 'httponly' in login.headers['set-cookie'].lower()
    summary = client.get('/admin')
    assert 'osediffzz' in summary.text and '<b id="answers">1</b>' in summary.text
    assert client.get('/admin/export/answers.csv').status_code == 200  # the cookie works for the exports
    client.post('/admin/logout')
    assert client.get('/admin/export/answers.csv').status_code == 401
    assert _snapshot(app) == before


def test_answers_export_names_what_was_picked(app):
    client, state = _started(app)
    question = state['question']
    _answer(client, question['id'], 2)
    rows = _client(app).get('/admin/export/answers.csv', headers={'Authorization': f'Bearer {TOKEN}'}).text
    header, line = rows.strip().splitlines()
    assert header == 'participant,position,kind,item,options,choice,chosen,correct,answered_at'
    fields = line.split(',')
    labels = fields[4].split('|')
    assert fields[:2] == ['1', '1'] and fields[5] == '2' and fields[6] == labels[2] and set(labels) == set(METHODS)


def test_a_closed_study_refuses_new_participants(study_dir, tmp_path):
    from portraitisr.study.webapp import build_app

    app = build_app(study_dir, db_path=tmp_path / 'a.sqlite', admin_token=TOKEN, max_participants=1)
    _started(app)
    response = _client(app).post('/api/start')
    assert response.status_code == 403 and 'closed' in response.json()['error']
    assert len(_snapshot(app)['participants']) == 1


def test_the_database_of_another_study_is_refused(study_dir, tmp_path):
    from portraitisr.study.create import create_study
    from portraitisr.study.design import StudyFileError
    from portraitisr.study.webapp import build_app

    db = tmp_path / 'a.sqlite'
    _started(build_app(study_dir, db_path=db, admin_token=TOKEN))
    folders, gt = make_restored_folders(tmp_path / 'other', count=3, size=32)
    create_study(tmp_path / 'other_study', 'wr_n', folders, questions=2, attention_checks=0)
    before = db.read_bytes()
    with pytest.raises(StudyFileError, match='holds answers to another study'):
        build_app(tmp_path / 'other_study', db_path=db, admin_token=TOKEN)
    assert db.read_bytes() == before
    with pytest.raises(ValueError, match='at least 16 characters'):
        build_app(study_dir, db_path=tmp_path / 'b.sqlite', admin_token='short')
    # Not a database, a folder that does not exist: a clear error, the file untouched.
    text = tmp_path / 'notes.txt'
    text.write_text('my notes, not a database ' * 100)
    with pytest.raises(StudyFileError, match='cannot use .*notes.txt as the answers database: file is not a database'):
        build_app(study_dir, db_path=text, admin_token=TOKEN)
    assert text.read_text() == 'my notes, not a database ' * 100
    with pytest.raises(StudyFileError, match='cannot use .* as the answers database: unable to open'):
        build_app(study_dir, db_path=tmp_path / 'missing' / 'a.sqlite', admin_token=TOKEN)


def test_a_reload_resumes_at_the_same_question(app):
    client, state = _started(app)
    _answer(client, state['question']['id'], 0)
    now = client.get('/api/state').json()
    assert now['position'] == 1 and client.get('/api/state').json() == now  # stable across reloads
    assert now['question']['options'] != state['question']['options']


def test_study_serve_on_the_command_line(study_dir, tmp_path):
    """`python -m portraitisr.study serve --port 0` prints its URL, answers on 127.0.0.1 and stops on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.helpers.data_files import REPO_ROOT

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PORTRAITISR_STUDY_ADMIN_TOKEN=TOKEN)
    command = [sys.executable, '-m', 'portraitisr.study', 'serve', str(study_dir), '--db', str(tmp_path / 'db.sqlite'),
               '--port', '0']
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving 'Image study' (wr_id) at http://127.0.0.1:"), line
        url = line.split(' at ')[1].strip().rstrip('/')
        assert 'admin token' not in process.stdout.readline() + process.stdout.readline()  # given by the env
        for _ in range(100):
            try:
                page = httpx.get(url + '/', trust_env=False)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert page.status_code == 200 and 'study.js' in page.text
        assert httpx.get(url + '/admin/export/answers.csv', trust_env=False,
                         headers={'Authorization': f'Bearer {TOKEN}'}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    assert 'Traceback' not in process.stderr.read()
    failed = subprocess.run([sys.executable, '-m', 'portraitisr.study', 'serve', str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert failed.returncode == 2 and failed.stderr.startswith('portraitisr study serve: ')
    assert 'is not a study folder' in failed.stderr
