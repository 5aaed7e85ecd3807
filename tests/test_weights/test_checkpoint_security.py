"""No checkpoint runs code: a crafted pickle (a marker file appears if it is ever unpickled the unsafe way) given
by path and by URL (a loopback HTTP server) to every documented way of loading one - ``tools/train.py --resume``,
``--cfg-options load_from=``, ``tools/test.py``, ``tools/export_weights.py``, ``portraitisr restore --checkpoint``,
the model zoo's cached files and the runner itself - is refused with one line, and the marker never appears.
"""
import itertools
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel

from portraitisr.apis import model_zoo
from portraitisr.weights import CheckpointLoadError, WeightsNotFoundError, sha256_of
from portraitisr.engine.checkpoint_loading import (CheckpointNotFoundError, UntrustedCheckpointError,
                                                   checkpoint_training_info, find_resumable_checkpoint,
                                                   resolve_checkpoint, split_checkpoint_spec)
from portraitisr.engine.runners import PortraitRunner

from tests.helpers.data_files import REPO_ROOT, require_pypi_weights
from tests.helpers.pickle_payload import write_payload_checkpoint

pytest_plugins = ('tests.helpers.file_server',)

TINY = 'configs/debug/osediff_tiny.py'


@pytest.fixture(autouse=True)
def offline(no_internet):
    """Connections beyond loopback fail."""


@pytest.fixture
def payload(tmp_path, file_server):
    """(path, URL, sha256, marker) of one crafted checkpoint, on disk and on the loopback server."""
    marker = tmp_path / 'CODE_RAN'
    path = tmp_path / 'payload.pth'
    write_payload_checkpoint(path, marker)
    url, sha = file_server.serve('payload.pth', path.read_bytes())
    return path, url, sha, marker


def test_the_payload_is_live(payload):
    """Loaded the unsafe way, the file does run code: the tests below would see it."""
    path, _, _, marker = payload
    subprocess.run([sys.executable, '-c', f'import torch; torch.load({str(path)!r}, weights_only=False)'],
                   check=True, capture_output=True)
    assert marker.read_text() == 'code from a checkpoint ran'


def _tool(args, tmp_path, monkeypatch, capsys):
    """Run a tool's ``main`` in this process (as ``python tools/X.py args``); returns (exit status, stderr)."""
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(sys, 'argv', [str(REPO_ROOT / args[0]), *args[1:]])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO_ROOT / args[0]), run_name='__main__')
    return info.value.code, capsys.readouterr().err


def _assert_refused_in_one_line(status, err, prog, *expected):
    assert status == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f'{prog}: ')]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]


WAYS = {
    'train --resume PATH': lambda w, p, u, s: ['tools/train.py', TINY, '--work-dir', w, '--resume', p],
    'train --resume URL#sha256': lambda w, p, u, s: ['tools/train.py', TINY, '--work-dir', w, '--resume',
                                                     f'{u}#sha256={s}'],
    'train --resume URL --trust-url': lambda w, p, u, s: ['tools/train.py', TINY, '--work-dir', w, '--resume', u,
                                                          '--trust-url'],
    'train load_from=PATH': lambda w, p, u, s: ['tools/train.py', TINY, '--work-dir', w, '--cfg-options',
                                                f'load_from={p}'],
    'train load_from=URL#sha256': lambda w, p, u, s: ['tools/train.py', TINY, '--work-dir', w, '--cfg-options',
                                                      f'load_from={u}#sha256={s}'],
    'test PATH': lambda w, p, u, s: ['tools/test.py', TINY, p, '--work-dir', w],
    'test URL#sha256': lambda w, p, u, s: ['tools/test.py', TINY, f'{u}#sha256={s}', '--work-dir', w],
    'export PATH': lambda w, p, u, s: ['tools/export_weights.py', TINY, p, f'{w}/out.safetensors'],
    'export URL --trust-url': lambda w, p, u, s: ['tools/export_weights.py', TINY, u, f'{w}/out.safetensors',
                                                  '--trust-url'],
}


@pytest.mark.parametrize('way', sorted(WAYS))
def test_tools_refuse_the_payload(way, payload, tmp_path, monkeypatch, capsys):
    path, url, sha, marker = payload
    work = tmp_path / 'work'
    args = WAYS[way](str(work), str(path), url, sha)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the trusted URL's "downloaded without a sha256"
        status, err = _tool(args, tmp_path, monkeypatch, capsys)
    _assert_refused_in_one_line(status, err, Path(args[0]).name, 'contains pickled Python objects', 'it needs exec',
                                'arbitrary code')
    assert not marker.exists()
    assert not (tmp_path / 'torch').exists()  # nothing went through torch.hub
    assert not (work / 'out.safetensors').exists()
    if '--trust-url' in way or '#sha256' in way:  # downloaded by our resolver into our folder, not torch hub's
        assert len(list((tmp_path / 'home' / 'checkpoints').glob('*/payload.pth'))) == 1


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_tools_refuse_a_checkpoint_url_without_sha256_before_downloading(tool, payload, tmp_path, file_server,
                                                                         monkeypatch, capsys):
    _, url, _, marker = payload
    args = [tool, TINY, '--resume', url] if tool.endswith('train.py') else [tool, TINY, url]
    status, err = _tool(args + ['--work-dir', str(tmp_path / 'w')], tmp_path, monkeypatch, capsys)
    _assert_refused_in_one_line(status, err, Path(tool).name,
                                f'refusing to download the checkpoint {url} without a sha256', '--trust-url')
    assert file_server.requests == [] and not marker.exists()


def test_tools_report_a_missing_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    status, err = _tool(['tools/test.py', TINY, str(tmp_path / 'nope.pth'), '--work-dir', str(tmp_path / 'w')],
                        tmp_path, monkeypatch, capsys)
    _assert_refused_in_one_line(status, err, 'test.py', f'checkpoint {tmp_path / "nope.pth"} does not exist')


@pytest.mark.slow
def test_train_tool_process_refuses_a_payload_url(payload, tmp_path):
    """The same as a user runs it: a separate process, its exit status and its stderr (no traceback)."""
    _, url, sha, marker = payload
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT),
               PORTRAITISR_HOME=str(tmp_path / 'home'), TORCH_HOME=str(tmp_path / 'torch'))
    result = subprocess.run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(tmp_path / 'w'), '--resume',
                             f'{url}#sha256={sha}'], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    _assert_refused_in_one_line(result.returncode, result.stderr, 'train.py', 'it needs exec')
    assert 'Traceback' not in result.stderr and not marker.exists() and not (tmp_path / 'torch').exists()


@pytest.mark.slow
def test_restore_command_refuses_the_payload(payload, tmp_path):
    import numpy as np

    from portraitisr.utils.image_io import write_image

    path, _, _, marker = payload
    write_image(tmp_path / 'photo.png', np.full((32, 32, 3), 128, np.uint8))
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT),
               TORCH_HOME=str(tmp_path / 'torch'))
    result = subprocess.run([sys.executable, '-m', 'portraitisr', 'restore', str(tmp_path / 'photo.png'), '-o',
                             str(tmp_path / 'out'), '--config', TINY, '--checkpoint', str(path)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr and 'contains pickled Python objects' in result.stderr
    assert not marker.exists() and not (tmp_path / 'out').exists()


# ------------------------------------------------------------------------------------------------ the model zoo
def _zoo_with(filename: str, sha256=None) -> model_zoo.ModelZoo:
    weights = dict(description='d', filename=filename, url=f'https://example.invalid/{filename}', sha256=sha256,
                   licence='MIT', source='tests')
    if sha256:
        weights['sha256_source'] = 'the test'
    return model_zoo.ModelZoo.from_dict({
        'format': 'portraitisr.model_zoo/1', 'weights': {'lora': weights},
        'models': {'tiny': dict(description='d', config=TINY, licence='MIT', released=True, requires=[],
                                checkpoint='lora', checkpoint_option='model.backbone.trained_weights')}})


def test_zoo_never_takes_a_planted_file_from_the_torch_hub_cache(payload, weight_env):
    """What mmengine's ``--resume URL`` left in the torch hub cache under a zoo file name is not the zoo's file."""
    path, _, _, marker = payload
    planted = weight_env['torch_home'] / 'hub' / 'checkpoints' / 'osediff.pkl'
    planted.parent.mkdir(parents=True)
    planted.write_bytes(path.read_bytes())
    with pytest.raises(WeightsNotFoundError, match='present but not used'):
        model_zoo.check_available('tiny', _zoo_with('osediff.pkl'))
    # Only a published sha256 that matches makes another tool's copy acceptable (and then it is loaded safely).
    assert model_zoo.check_available('tiny', _zoo_with('osediff.pkl', sha256_of(planted)))['lora'] == planted
    assert not marker.exists()


def test_zoo_file_is_loaded_safely(payload, tmp_path, monkeypatch):
    """A crafted file where the zoo keeps its downloads: the restorer's build refuses it in one line."""
    from portraitisr.apis.portrait_restorer import PortraitRestorer

    real_home = require_pypi_weights('vgg16.ckpt')
    home = tmp_path / 'zoo_home'
    home.mkdir()
    for entry in real_home.iterdir():  # the tokenizer and weights the tiny config needs
        (home / entry.name).symlink_to(entry)
    path, _, _, marker = payload
    (home / 'evil_lora.pkl').write_bytes(path.read_bytes())
    monkeypatch.setenv('PORTRAITISR_HOME', str(home))
    zoo = _zoo_with('evil_lora.pkl')
    monkeypatch.setattr(model_zoo, 'load_index', lambda path=None: zoo)
    with pytest.raises(CheckpointLoadError, match='it needs exec') as info:
        PortraitRestorer.from_zoo('tiny', device='cpu')
    assert '\n' not in str(info.value) and not marker.exists()


# ------------------------------------------------------------------------------------------------ the runner
class ToyModel(BaseModel):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.linear(inputs)


_RUNNER_IDS = itertools.count()


def _runner(tmp_path, **kwargs):
    return PortraitRunner(model=ToyModel(kwargs.pop('init_cfg', None)), work_dir=str(tmp_path / 'work'),
                          experiment_name=f'toy_{next(_RUNNER_IDS)}_{tmp_path.name}', **kwargs)


def test_runner_loads_only_safely(payload, tmp_path, weight_env, monkeypatch):
    """Code that builds a PortraitRunner itself (not through the tools) gets the same safe loading."""
    path, url, sha, marker = payload
    with pytest.raises(CheckpointLoadError, match='it needs exec'):
        _runner(tmp_path, load_from=str(path)).load_or_resume()
    with pytest.raises(UntrustedCheckpointError, match='without a sha256'):
        _runner(tmp_path, load_from=url).load_or_resume()
    with pytest.raises(CheckpointLoadError, match='it needs exec'):
        _runner(tmp_path, load_from=f'{url}#sha256={sha}', resume=True).load_or_resume()
    with pytest.raises(UntrustedCheckpointError, match='local path or an https URL'):
        _runner(tmp_path, load_from='torchvision://resnet50').load_or_resume()
    assert not marker.exists() and not weight_env['torch_home'].exists()
    # A good checkpoint loads.
    good = ToyModel()
    torch.save({'meta': {'iter': 3}, 'state_dict': good.state_dict()}, tmp_path / 'good.pth')
    runner = _runner(tmp_path, load_from=str(tmp_path / 'good.pth'))
    runner.load_or_resume()
    assert torch.equal(runner.model.linear.weight, good.linear.weight)


def test_runner_refuses_pretrained_init_cfg_urls(tmp_path):
    runner = _runner(tmp_path, init_cfg=dict(type='Pretrained', checkpoint='https://example.invalid/x.pth'))
    with pytest.raises(CheckpointLoadError, match="init_cfg=dict\\(type='Pretrained'\\)"):
        runner._init_model_weights()


# ------------------------------------------------------------------------------------------------ helpers
def test_checkpoint_spec_and_resolution_rules(tmp_path, file_server, weight_env):
    sha = 'ab' * 32
    assert split_checkpoint_spec(f'https://h/x.pth#sha256={sha.upper()}') == ('https://h/x.pth', sha)
    assert split_checkpoint_spec('work_dirs/x/iter_4.pth') == ('work_dirs/x/iter_4.pth', None)
    with pytest.raises(CheckpointNotFoundError, match='does not exist'):
        resolve_checkpoint(tmp_path / 'missing.pth')
    data = b'some checkpoint bytes'
    (tmp_path / 'c.pth').write_bytes(data)
    url, good = file_server.serve('c.pth', data)
    assert resolve_checkpoint(f'{tmp_path / "c.pth"}#sha256={good}') == tmp_path / 'c.pth'
    with pytest.raises(Exception, match='sha256 mismatch'):
        resolve_checkpoint(f'{tmp_path / "c.pth"}#sha256={sha}')
    # A trusted URL is downloaded once, into $PORTRAITISR_HOME/checkpoints, under a key of its URL.
    with pytest.warns(UserWarning, match='without a sha256'):
        first = resolve_checkpoint(url, trust_url=True, progress=False)
    assert first.parent.parent == weight_env['home'] / 'checkpoints' and first.read_bytes() == data
    assert resolve_checkpoint(url, trust_url=True) == first and len(file_server.requests) == 1


def test_resume_candidates_skip_truncated_and_missing_checkpoints(tmp_path):
    """The newest checkpoint that loads wins; the skipped ones come with their reasons."""
    work = tmp_path / 'work'
    work.mkdir()
    for step in (2, 4):
        torch.save({'meta': {'iter': step}, 'state_dict': {'w': torch.full((3, ), float(step))}},
                   work / f'iter_{step}.pth')
    data = (work / 'iter_4.pth').read_bytes()
    (work / 'iter_6.pth').write_bytes(data[:len(data) // 2])  # cut short by a kill
    torch.save({'w': torch.zeros(1)}, work / 'iter_8.pth')  # loads, but is no training checkpoint
    (work / 'iter_5.pth.tmp').write_bytes(data)  # a write in progress: never a candidate
    (work / 'last_checkpoint').write_text(str(work / 'iter_10.pth'))  # names a deleted file
    point = find_resumable_checkpoint(work)
    assert point.path == work / 'iter_4.pth' and point.checkpoint['meta']['iter'] == 4
    assert [(p.name, reason.split(' (')[0]) for p, reason in point.skipped] == [
        ('iter_10.pth', 'named by last_checkpoint, but it does not exist'),
        ('iter_8.pth', 'not a training checkpoint'),
        ('iter_6.pth', f'{work / "iter_6.pth"} is not a readable torch checkpoint'),
    ]
    assert find_resumable_checkpoint(tmp_path / 'empty').path is None


def test_checkpoint_training_info(tmp_path):
    torch.save({'meta': {'iter': 40, 'epoch': 0, 'trained_iters': 40, 'config_name': 'osediff_tiny',
                         'model_type': 'OSEDiff', 'time': '20260101_120000', 'trainable_only': True},
                'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'iter_40.pth')
    info = checkpoint_training_info(tmp_path / 'iter_40.pth')
    assert info == dict(format='training checkpoint', trained_iters=40, epoch=0, config_name='osediff_tiny',
                        model_type='OSEDiff', saved_at='20260101_120000', fine_tuned_from=None, trainable_only=True)
    torch.save({'meta': {'iter': 7}, 'state_dict': {}}, tmp_path / 'older.pth')  # before trained_iters existed
    assert checkpoint_training_info(tmp_path / 'older.pth')['trained_iters'] == 7
    torch.save({'state_dict_unet': {}}, tmp_path / 'release.pkl')  # a third-party release says nothing
    assert checkpoint_training_info(tmp_path / 'release.pkl')['trained_iters'] is None
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(1)}, str(tmp_path / 'g.safetensors'), metadata={'trained_iters': '0',
                                                                                 'config_name': 'x'})
    info = checkpoint_training_info(tmp_path / 'g.safetensors')
    assert info['format'] == 'safetensors' and info['trained_iters'] == 0 and info['config_name'] == 'x'
    with pytest.raises(CheckpointLoadError, match='it needs'):
        write_payload_checkpoint(tmp_path / 'evil.pth', tmp_path / 'marker')
        checkpoint_training_info(tmp_path / 'evil.pth')
    assert not (tmp_path / 'marker').exists()


def test_a_new_best_checkpoint_is_written_before_the_old_one_goes(tmp_path):
    """save_best: mmengine deleted the previous best checkpoint before writing the new one (a kill in between left
    none); here the old best is still on disk while the new one is written, and gone afterwards."""
    from types import SimpleNamespace

    from mmengine.fileio import LocalBackend
    from mmengine.logging import MessageHub, MMLogger

    from portraitisr.engine.hooks import AtomicCheckpointHook

    hook = AtomicCheckpointHook(save_best='psnr', rule='greater', by_epoch=False)
    hook.out_dir, hook.file_backend, hook.best_ckpt_path = str(tmp_path), LocalBackend(), None
    seen_during_save = []

    def save_checkpoint(out_dir, filename, **kwargs):
        seen_during_save.append(sorted(p.name for p in tmp_path.glob('best_*.pth')))
        (tmp_path / filename).write_bytes(b'checkpoint')

    runner = SimpleNamespace(epoch=0, iter=0, save_checkpoint=save_checkpoint, logger=MMLogger.get_current_instance(),
                             message_hub=MessageHub.get_instance(f'best_{tmp_path.name}'))
    for iteration, psnr in ((1, 20.0), (2, 19.0), (3, 21.0)):  # 19 is no new best: nothing written
        runner.iter = iteration
        hook._save_best_checkpoint(runner, {'psnr': psnr})
    assert seen_during_save == [[], ['best_psnr_iter_1.pth']]  # the old best is there while the new one is written
    assert [p.name for p in tmp_path.glob('best_*.pth')] == ['best_psnr_iter_3.pth']
