"""tools/test.py --user-study: win rates of `portraitisr study results` land in Table 2's row of the same method."""
import subprocess
import sys

from portraitisr.study.win_rates import WinRateRow, write_win_rates

from tests.helpers.data_files import REPO_ROOT


def _win_rates(path, metric: str, method: str, value: float) -> None:
    write_win_rates(path, [WinRateRow(study='s', metric=metric, method=method, value=value, ci_low=value - 0.1,
                                      ci_high=value + 0.1, selections=3, answers=10, participants=2)])


def test_win_rates_fill_the_wr_columns_of_the_matching_row(tmp_path):
    _win_rates(tmp_path / 'wr_id.csv', 'WR_id', 'blending_tiny', 0.3125)
    _win_rates(tmp_path / 'wr_n.csv', 'WR_N', 'some_other_method', 0.5)
    result = subprocess.run([sys.executable, 'tools/test.py', 'configs/debug/blending_tiny.py', '--work-dir',
                             str(tmp_path / 'work'), '--user-study', str(tmp_path / 'wr_id.csv'),
                             str(tmp_path / 'wr_n.csv')],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'work' / 'tables' / 'blending_tiny.md').read_text(encoding='utf-8')
    header = [c.strip() for c in table.splitlines()[2].strip('|').split('|')]
    row = next(line for line in table.splitlines() if line.startswith('| test | blending_tiny |'))
    values = dict(zip(header, (c.strip() for c in row.strip('|').split('|'))))
    assert values['WR_id↑'] == '0.3125' and values['WR_N↑'] == ''
    assert "names methods with no row here: some_other_method" in result.stderr


def test_a_bad_study_file_stops_before_anything_is_computed(tmp_path):
    (tmp_path / 'bad.csv').write_text('not,a,win,rates,file\n', encoding='utf-8')
    result = subprocess.run([sys.executable, 'tools/test.py', 'configs/debug/blending_tiny.py', '--work-dir',
                             str(tmp_path / 'work'), '--user-study', str(tmp_path / 'bad.csv')],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.startswith('test.py: ') and 'Traceback' not in result.stderr
    assert not (tmp_path / 'work').exists()
