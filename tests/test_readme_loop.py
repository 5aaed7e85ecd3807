"""The README's first-run loop is consistent: the restore uses the checkpoint that the training command writes,
each step reads what the step before wrote, and everything is written under work_dirs/.

(Running the loop takes minutes of training; it was run verbatim on a fresh clone when it was written.)
"""
import re
import shlex

from mmengine.config import Config

from tests.helpers.data_files import REPO_ROOT

FENCE = re.compile(r'^```bash\n(.*?)^```', re.MULTILINE | re.DOTALL)


def _loop_commands():
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    section = readme[readme.index('## First run'):]
    block = FENCE.search(section).group(1).replace('\\\n', ' ')
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_readme_loop_steps_fit_together():
    train, pairs, restore, score, look = _loop_commands()
    assert train[:2] == ['python', 'tools/train.py'] and pairs[1] == 'tools/make_test_pairs.py'
    assert restore[:2] == ['portraitisr', 'restore'] and score[1] == 'tools/eval_folders.py'
    assert look[1] == 'tools/make_comparison_grid.py'

    config = train[2]
    cfg = Config.fromfile(str(REPO_ROOT / config))
    run = config.rsplit('/', 1)[1][:-3]
    # the checkpoint the run ends with: tools/train.py's default work dir, the last iteration
    assert cfg.train_cfg.max_iters % cfg.default_hooks.checkpoint.interval == 0
    assert _option(restore, '--config') == config
    assert _option(restore, '--checkpoint') == f'work_dirs/{run}/iter_{cfg.train_cfg.max_iters}.pth'

    made = _option(pairs, '-o')
    assert restore[2] == f'{made}/lq' and _option(score, '--gt') == f'{made}/gt'
    assert _option(score, '--pred') == _option(restore, '-o') == _option(look, '--restored')
    assert _option(look, '--lq') == f'{made}/lq' and _option(look, '--gt') == f'{made}/gt'
    for written in (made, _option(restore, '-o'), _option(score, '--out'), _option(look, '--out')):
        assert written.startswith('work_dirs/'), written
