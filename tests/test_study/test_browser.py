"""End to end: a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) answers whole
questionnaires on a study server this test starts on 127.0.0.1.

Checked: answers land in the database exactly once (also across a lost connection and a double key press), a reload
resumes at the same question, the page and its API never contain a method name, an item name or a path, the layout
fits a phone-sized screen without sideways scrolling, the admin page needs the token, and the exported win rates
equal a hand computation from the stored answers. The screenshots of docs/user_study.md come from this test:
``PORTRAITISR_STUDY_SCREENSHOTS=docs/images pytest tests/test_study/test_browser.py`` refreshes them.
"""
import csv
import io
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.study_data import METHODS, make_restored_folders

pytestmark = pytest.mark.slow

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
TOKEN = 'browser-test-admin-token-0123'
#: Chromium without anything that talks to the network on its own; a fresh profile per test.
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage', '--hide-scrollbars', '--no-proxy-server', '--disable-extensions',
                  '--disable-default-apps', '--disable-domain-reliability', '--no-default-browser-check')


def _require_browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = f'{CHROMIUM} / {CHROMEDRIVER} missing: apt-get install chromium chromium-driver'
        if os.environ.get('CI'):
            pytest.fail(message)  # CI installs them (.ci/run): a skip there would hide a broken install
        pytest.skip(message)
    return pytest.importorskip('selenium.webdriver', reason='selenium is missing: pip install -e ".[dev]"')


@pytest.fixture
def browser(tmp_path):
    webdriver = _require_browser()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver path below, selenium never looks for (or fetches) a browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={tmp_path / "profile"}')
    options.add_argument('--window-size=1000,760')
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for {what}; screen={_screen(driver)}')


def _screen(driver):
    return driver.find_element('id', 'app').get_attribute('data-screen')


def _wait_question(driver, position):
    """Wait until question ``position`` (0-based) is shown with its images loaded."""
    def ready():
        app = driver.find_element('id', 'app')
        return (app.get_attribute('data-screen') == 'question' and app.get_attribute('data-ready') == '1'
                and app.get_attribute('data-position') == str(position))
    _wait(driver, ready, f'question {position + 1}')


def _image_sources(driver):
    return [img.get_attribute('src') for img in driver.find_elements('css selector', '#question img')
            if img.is_displayed()]


def _press(driver, key):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _assert_nothing_leaks(driver, url, forbidden):
    """Neither the page nor what its API sends names a method, an item or a path; images are opaque ids."""
    page = driver.page_source
    state = driver.execute_async_script(
        "const done = arguments[0]; fetch('/api/state').then(r => r.text()).then(done, e => done(String(e)));")
    for text in (page, state):
        lowered = text.lower()
        for word in forbidden:
            assert word.lower() not in lowered, word
    sources = _image_sources(driver)
    for src in sources:
        assert re.fullmatch(re.escape(url) + r'/img/[0-9a-f]{32}', src), src
    assert len(set(sources)) == len(sources)  # no image shown twice under one id (e.g. an attention check's answer)


def _shot(driver, tmp_path, name):
    """A screenshot in tmp_path; copied (as a small palette PNG) where PORTRAITISR_STUDY_SCREENSHOTS says."""
    from PIL import Image

    path = tmp_path / name
    driver.save_screenshot(str(path))
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.getextrema()[0][0] < im.getextrema()[0][1]  # a real, non-blank picture
        target = os.environ.get('PORTRAITISR_STUDY_SCREENSHOTS')
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            im.convert('RGB').quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
                Path(target) / name, optimize=True)
    return path


def _questions(db, participant):
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT position, kind, correct, option_labels FROM questions WHERE participant_id = ? '
                           'ORDER BY position', (participant,)).fetchall()
    finally:
        con.close()


def _answers(db):
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT a.participant_id, a.position, a.choice, q.kind, q.correct, q.option_labels '
                           'FROM answers a JOIN questions q ON q.id = a.question_id '
                           'ORDER BY a.participant_id, a.position').fetchall()
    finally:
        con.close()


def test_whole_questionnaires_in_headless_chromium(browser, tmp_path):
    import json

    import httpx

    from portraitisr.study.create import create_study
    from portraitisr.study.server import BackgroundServer
    from portraitisr.study.webapp import build_app

    driver = browser
    folders, gt = make_restored_folders(tmp_path / 'restored', count=6, size=256)
    study_dir = tmp_path / 'study'
    create_study(study_dir, 'wr_id', folders, gt=gt, questions=4, attention_checks=1, seed=5, face_crops=False,
                 title='Which face is closest?')
    db = study_dir / 'responses.sqlite'
    forbidden = list(METHODS) + [str(tmp_path), 'restored', '0001', '.png', '@clean', '@blur', 'attention']
    app = build_app(study_dir, admin_token=TOKEN)
    chosen = {}  # (participant, position) -> choice the "participant" made
    with BackgroundServer(app) as url:
        # ---- participant 1: clicks, keys, a reload, a lost connection, a double key press, a phone-sized screen
        driver.get(url + '/')
        _wait(driver, lambda: _screen(driver) == 'intro', 'the start screen')
        assert not driver.find_element('id', 'progress-box').is_displayed()  # no progress before the start
        _shot(driver, tmp_path, 'study_intro.png')
        _assert_nothing_leaks(driver, url, forbidden)
        driver.find_element('id', 'start').click()
        _wait_question(driver, 0)
        key = _questions(db, 1)
        assert [row[0] for row in key] == list(range(5)) and [row[1] for row in key].count('attention') == 1

        def answer(position, how):
            """Answer like a careful participant: the attention check right, the others by a fixed rule."""
            _, kind, correct, _ = key[position]
            choice = correct if kind == 'attention' else (position % 3)
            chosen[(1, position)] = choice
            if how == 'click':
                driver.find_elements('css selector', '#options button.option')[choice].click()
            else:
                _press(driver, str(choice + 1))
            return choice

        _assert_nothing_leaks(driver, url, forbidden)
        assert not driver.find_element('id', 'ab-answers').is_displayed()  # A/B buttons only in A/B studies
        _shot(driver, tmp_path, 'study_question.png')
        answer(0, 'click')
        _wait_question(driver, 1)
        answer(1, 'key')
        _wait_question(driver, 2)
        before = _image_sources(driver)
        driver.refresh()  # resumes at the same question, same images
        _wait_question(driver, 2)
        assert _image_sources(driver) == before
        assert driver.find_element('id', 'progress-text').text == 'Question 3 of 5'

        # Lost connection: the answer waits, the page says so, and it is stored once when the network is back.
        driver.execute_cdp_cmd('Network.enable', {})
        driver.execute_cdp_cmd('Network.emulateNetworkConditions', dict(offline=True, latency=0,
                                                                        downloadThroughput=-1, uploadThroughput=-1))
        answer(2, 'key')
        _wait(driver, lambda: 'Connection lost' in driver.find_element('id', 'banner').text, 'the offline banner')
        assert len([a for a in _answers(db) if a[0] == 1]) == 2  # nothing arrived while offline
        driver.execute_cdp_cmd('Network.emulateNetworkConditions', dict(offline=False, latency=0,
                                                                        downloadThroughput=-1, uploadThroughput=-1))
        _wait_question(driver, 3)
        assert not driver.find_element('id', 'banner').is_displayed()

        # Phone-sized screen: everything fits the width, nothing scrolls sideways.
        driver.set_window_size(390, 844)
        _wait_question(driver, 3)
        width = driver.execute_script('return [document.documentElement.scrollWidth, window.innerWidth]')
        assert width[0] <= width[1], width
        for img in driver.find_elements('css selector', '#options img'):
            assert img.rect['x'] >= 0 and img.rect['x'] + img.rect['width'] <= width[1] + 1
        _shot(driver, tmp_path, 'study_phone.png')
        _assert_nothing_leaks(driver, url, forbidden)
        # A double key press (two keydown events before the first answer is back): one answer, one step forward.
        _, kind, correct, _ = key[3]
        choice = chosen[(1, 3)] = correct if kind == 'attention' else 0
        driver.execute_script("for (let i = 0; i < 2; i++) "
                              "document.dispatchEvent(new KeyboardEvent('keydown', {key: arguments[0]}));",
                              str(choice + 1))
        _wait_question(driver, 4)
        answer(4, 'click')
        _wait(driver, lambda: _screen(driver) == 'done', 'the thank-you screen')
        assert driver.find_element('id', 'progress-text').text == 'Done: 5 of 5'
        driver.refresh()
        _wait(driver, lambda: _screen(driver) == 'done', 'the thank-you screen after a reload')
        driver.set_window_size(1000, 760)

        # ---- participant 2 (a fresh session): keyboard only; fails the attention check on purpose
        driver.delete_all_cookies()
        driver.get(url + '/')
        _wait(driver, lambda: _screen(driver) == 'intro', 'the start screen')
        _press(driver, '\ue007')  # Enter starts
        _wait_question(driver, 0)
        key2 = _questions(db, 2)
        for position, (_, kind, correct, _) in enumerate(key2):
            _wait_question(driver, position)
            _assert_nothing_leaks(driver, url, forbidden)  # every screen, the attention check included
            choice = (correct + 1) % 3 if kind == 'attention' else 2
            chosen[(2, position)] = choice
            _press(driver, str(choice + 1))
        _wait(driver, lambda: _screen(driver) == 'done', 'the thank-you screen')

        # ---- participant 3: a careful one, answers everything with the first image (attention check right)
        driver.delete_all_cookies()
        driver.get(url + '/')
        _wait(driver, lambda: _screen(driver) == 'intro', 'the start screen')
        driver.find_element('id', 'start').click()
        _wait_question(driver, 0)
        key3 = _questions(db, 3)
        for position, (_, kind, correct, _) in enumerate(key3):
            _wait_question(driver, position)
            choice = correct if kind == 'attention' else 0
            chosen[(3, position)] = choice
            _press(driver, str(choice + 1))
        _wait(driver, lambda: _screen(driver) == 'done', 'the thank-you screen')

        # ---- the database: every answer exactly once, as given
        stored = _answers(db)
        assert [(p, pos) for p, pos, *_ in stored] == sorted(chosen)
        assert {(p, pos): c for p, pos, c, *_ in stored} == chosen

        # ---- admin: refused without the token, then the page after logging in
        assert httpx.get(url + '/admin/export/win_rates.csv').status_code == 401
        assert httpx.get(url + '/admin/export/win_rates.csv',
                         headers={'Authorization': 'Bearer wrong-token-wrong-token'}).status_code == 403
        driver.get(url + '/admin')
        driver.find_element('id', 'token').send_keys(TOKEN)
        driver.find_element('id', 'login').click()
        _wait(driver, lambda: driver.find_elements('id', 'answers'), 'the admin page')
        assert driver.find_element('id', 'answers').text == '15'
        assert driver.find_element('id', 'participants').text == '3'
        _shot(driver, tmp_path, 'study_admin.png')
        export = httpx.get(url + '/admin/export/win_rates.csv', headers={'Authorization': f'Bearer {TOKEN}'})
        assert export.status_code == 200

    # ---- the exported win rates against a hand computation from the stored answers
    passed = {p for p in (1, 2, 3)
              if all(c == correct for q, _, c, kind, correct, _ in stored if q == p and kind == 'attention')}
    assert passed == {1, 3}
    picks = [json.loads(labels)[c] for p, _, c, kind, _, labels in stored if p in passed and kind == 'question']
    rows = {r['method']: r for r in csv.DictReader(io.StringIO(export.text))}
    assert set(rows) == set(METHODS)
    for method in METHODS:
        assert float(rows[method]['value']) == pytest.approx(picks.count(method) / len(picks), abs=1e-6)
        assert int(rows[method]['selections']) == picks.count(method)
        assert int(rows[method]['answers']) == len(picks) == 8
        assert int(rows[method]['participants']) == 2


def test_ab_study_in_headless_chromium(browser, tmp_path):
    """The A/B screen: two images and three answers, keys A / B / S; the answers stored as pressed."""
    from portraitisr.study.create import create_study
    from portraitisr.study.server import BackgroundServer
    from portraitisr.study.webapp import build_app

    driver = browser
    folders, _ = make_restored_folders(tmp_path / 'restored', count=4, size=256)
    study_dir = tmp_path / 'study'
    create_study(study_dir, 'ab', folders, questions=3, attention_checks=0, seed=1, ab_reference=METHODS[2],
                 title='Which photo is better?')
    with BackgroundServer(build_app(study_dir, admin_token=TOKEN)) as url:
        driver.get(url + '/')
        _wait(driver, lambda: _screen(driver) == 'intro', 'the start screen')
        driver.find_element('id', 'start').click()
        _wait_question(driver, 0)
        assert driver.find_element('id', 'progress-text').text == 'Question 1 of 3'
        buttons = [b.text for b in driver.find_elements('css selector', '#ab-answers button')]
        assert buttons == ['A is better (A)', 'B is better (B)', 'Both are equally good (S)']
        _shot(driver, tmp_path, 'study_ab.png')
        _assert_nothing_leaks(driver, url, list(METHODS) + [str(tmp_path)])
        for position, key in enumerate('bsa'):
            _wait_question(driver, position)
            _press(driver, key)
        _wait(driver, lambda: _screen(driver) == 'done', 'the thank-you screen')
    assert [a[2] for a in _answers(study_dir / 'responses.sqlite')] == [1, 2, 0]
    shutil.rmtree(tmp_path / 'restored')
