"""pytest plugin: ``--fail-on-skip`` turns a skipped test into a failed run unless its reason is allowed.

A skip hides a test that did not run. Locally that is convenient (no ``../shared``, no fetched weights); in CI, where
everything the tests need is installed, a skip means a check silently stopped checking. With ``--fail-on-skip`` the
run's exit status is 1 when any test skipped for a reason that matches none of the regular expressions in the
``allowed_skip_reasons`` ini option (``setup.cfg``: only "no CUDA"), and the summary lists those tests and reasons.

Loaded by ``tests/conftest.py``; usable alone with ``-p tests.helpers.skip_policy``.
"""
import re
from typing import List, Sequence, Tuple

import pytest


def pytest_addoption(parser) -> None:
    parser.addoption('--fail-on-skip', action='store_true', default=False,
                     help='exit with status 1 when a test is skipped for a reason that matches none of the '
                          '`allowed_skip_reasons` patterns')
    parser.addini('allowed_skip_reasons', type='linelist', default=[],
                  help='regular expressions (re.search) of the skip reasons that --fail-on-skip accepts')


def pytest_configure(config) -> None:
    if config.getoption('--fail-on-skip'):
        config.pluginmanager.register(SkipPolicy(config), 'portraitisr-skip-policy')


def skip_reason(report) -> str:
    """The reason of a skipped report: ``longrepr`` is ``(path, line, 'Skipped: reason')`` for skips."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len('Skipped: '):] if reason.startswith('Skipped: ') else reason


def disallowed_skips(skips: Sequence[Tuple[str, str]], patterns: Sequence[str]) -> List[Tuple[str, str]]:
    """The ``(nodeid, reason)`` pairs whose reason matches none of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    return [(nodeid, reason) for nodeid, reason in skips if not any(p.search(reason) for p in compiled)]


class SkipPolicy:
    """Collects the skips of a run and fails it at the end when one is not allowed."""

    def __init__(self, config) -> None:
        self.config = config
        self.skips: List[Tuple[str, str]] = []
        self.disallowed: List[Tuple[str, str]] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, 'wasxfail'):
            self.skips.append((report.nodeid, skip_reason(report)))

    def pytest_collectreport(self, report) -> None:
        if report.skipped:  # a module skipped as a whole (pytest.importorskip / skip at import)
            self.skips.append((report.nodeid, skip_reason(report)))

    def pytest_sessionfinish(self, session) -> None:
        self.disallowed = disallowed_skips(self.skips, self.config.getini('allowed_skip_reasons'))
        if self.disallowed and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.disallowed:
            return
        terminalreporter.section('skips that --fail-on-skip does not allow', sep='=', red=True, bold=True)
        for nodeid, reason in self.disallowed:
            terminalreporter.line(f'{nodeid}: {reason}')
        allowed = self.config.getini('allowed_skip_reasons')
        terminalreporter.line(f'{len(self.disallowed)} skip(s) outside allowed_skip_reasons {allowed}: the run fails')
