"""End to end through tools/: tiny OSEDiff and HeadsUp training, exact resume (also after a kill -9 during a
checkpoint write, and past a truncated checkpoint), testing, two CPU ranks, checkpoint metadata and the log."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from portraitisr.engine.checkpoint_loading import checkpoint_training_info

from tests.helpers.data_files import REPO_ROOT, require_pypi_weights

TINY = 'configs/debug/osediff_tiny.py'
HEADSUP_TINY = 'configs/debug/headsup_tiny.py'


def _run(args, timeout=600, returncode=0, **env):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', **env)
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _train(work_dir, *options, config=TINY):
    return _run([sys.executable, 'tools/train.py', config, '--work-dir', str(work_dir),
                 '--cfg-options', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
                 *options])


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)  # safe loading suffices


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    require_pypi_weights('vgg16.ckpt')
    work_dir = tmp_path_factory.mktemp('straight')
    _train(work_dir, 'train_cfg.max_iters=4')
    return work_dir


def _assert_same_weights(straight_dir, resumed_dir, name='iter_4.pth'):
    straight = _load(straight_dir / name)['state_dict']
    resumed = _load(resumed_dir / name)['state_dict']
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def _assert_resume_is_exact(straight_dir, resumed_dir, config=TINY):
    _train(resumed_dir, 'train_cfg.max_iters=2', config=config)
    assert (resumed_dir / 'iter_2.pth').is_file()
    result = _train(resumed_dir, 'train_cfg.max_iters=4', '--resume', config=config)
    assert 'resumed' in (result.stdout + result.stderr).lower()
    straight = _load(straight_dir / 'iter_4.pth')['state_dict']
    resumed = _load(resumed_dir / 'iter_4.pth')['state_dict']
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    first = _load(resumed_dir / 'iter_2.pth')['state_dict']
    assert any(not torch.equal(first[k], straight[k]) for k in straight), 'weights did not train'
    return straight


def test_resume_continues_exactly(straight_run, tmp_path):
    _assert_resume_is_exact(straight_run, tmp_path)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_loses_nothing_and_resume_is_exact(straight_run, tmp_path):
    """kill -9 halfway through writing iter_4.pth with max_keep_ckpts=1 (mmengine's hook had already deleted
    iter_2.pth by then and wrote in place): iter_2.pth is intact and named by last_checkpoint, and --resume
    ends bit-identical to the uninterrupted run."""
    keep_one = 'default_hooks.checkpoint.max_keep_ckpts=1'
    _run([sys.executable, 'tests/helpers/kill_during_checkpoint.py', TINY, '--work-dir', str(tmp_path),
          '--cfg-options', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
          'train_cfg.max_iters=4', keep_one], returncode=-signal.SIGKILL,
         PORTRAITISR_TEST_KILL_DURING='iter_4.pth')
    assert sorted(p.name for p in tmp_path.glob('iter_*')) == ['iter_2.pth', 'iter_4.pth.tmp']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_2.pth')
    assert _load(tmp_path / 'iter_2.pth')['meta']['iter'] == 2  # complete
    result = _train(tmp_path, 'train_cfg.max_iters=4', keep_one, '--resume')
    log = result.stdout + result.stderr
    assert 'Removed iter_4.pth.tmp' in log and f'Auto-resuming from {tmp_path / "iter_2.pth"}' in log
    _assert_same_weights(straight_run, tmp_path)
    assert sorted(p.name for p in tmp_path.glob('iter_*')) == ['iter_4.pth']  # the old one went after


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_checkpoint(straight_run, tmp_path):
    """last_checkpoint names a truncated iter_4.pth (as mmengine's hook could leave it): --resume says so, takes
    iter_2.pth, and training still ends bit-identical."""
    shutil.copy(straight_run / 'iter_2.pth', tmp_path / 'iter_2.pth')
    data = (straight_run / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[:len(data) // 3])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    result = _train(tmp_path, 'train_cfg.max_iters=4', '--resume')
    log = result.stdout + result.stderr
    assert f'Not resuming from {tmp_path / "iter_4.pth"}: ' in log and 'not a readable torch checkpoint' in log
    _assert_same_weights(straight_run, tmp_path)


@pytest.mark.slow
def test_checkpoints_record_training_length_and_the_log_is_short(straight_run):
    meta = _load(straight_run / 'iter_4.pth')['meta']
    assert (meta['trained_iters'], meta['iter'], meta['config_name'], meta['model_type']) == (4, 4, 'osediff_tiny',
                                                                                               'OSEDiff')
    assert 'fine_tuned_from' not in meta and meta['trainable_only']
    info = checkpoint_training_info(straight_run / 'iter_2.pth')
    assert info['trained_iters'] == 2 and info['config_name'] == 'osediff_tiny'
    # The log: a short header, the config in the work dir (written once), the full environment in a file.
    log_file, = straight_run.glob('*/*.log')
    log = log_file.read_text(encoding='utf-8')
    assert len(log.splitlines()) < 40, log
    assert f'Config: {straight_run / "osediff_tiny.py"}' in log and (straight_run / 'osediff_tiny.py').is_file()
    assert "default_scope = 'portraitisr'" not in log and 'System environment' not in log
    assert 'PyTorch compiling details' in (log_file.parent / 'environment.txt').read_text(encoding='utf-8')


@pytest.fixture(scope='module')
def headsup_run(tmp_path_factory):
    require_pypi_weights('vgg16.ckpt')
    work_dir = tmp_path_factory.mktemp('headsup_straight')
    _train(work_dir, 'train_cfg.max_iters=4', config=HEADSUP_TINY)
    return work_dir


def test_headsup_resume_continues_exactly(headsup_run, tmp_path):
    straight = _assert_resume_is_exact(headsup_run, tmp_path, config=HEADSUP_TINY)
    # the discriminator trains, and its spectral-norm vectors are checkpointed for the resume
    assert any(k.startswith('discriminator.') and k.endswith('._u') for k in straight)
    assert set(_load(headsup_run / 'iter_4.pth')['optimizer']) == {'backbone', 'regularizer', 'discriminator'}


def test_headsup_tests_with_and_without_references(headsup_run, tmp_path):
    checkpoint = str(headsup_run / 'iter_4.pth')
    scores = {}
    for use_ref in ('True', 'False'):
        save_dir = tmp_path / f'ref_{use_ref}'
        result = _run([sys.executable, 'tools/test.py', HEADSUP_TINY, checkpoint, '--work-dir',
                       str(tmp_path / 'work'), '--save-dir', str(save_dir), '--cfg-options',
                       f'model.use_reference_at_test={use_ref}'])
        scores[use_ref] = [line for line in (result.stdout + result.stderr).splitlines() if 'PSNR:' in line][-1]
        assert sorted(os.listdir(save_dir)) == ['astronaut.png', 'camera.png', 'grace_hopper.png']
    # four steps leave the new conv_in channels almost at zero, but not exactly: references count
    assert scores['True'] != scores['False']


def test_checkpoints_hold_only_trainable_tensors(straight_run):
    checkpoint = _load(straight_run / 'iter_4.pth')
    keys = list(checkpoint['state_dict'])
    assert keys and all('lora_' in k or 'conv_in.base_layer' in k for k in keys)
    assert any(k.startswith('backbone.') for k in keys)
    assert any(k.startswith('regularizer.') for k in keys)
    assert set(checkpoint['optimizer']) == {'backbone', 'regularizer'}
    assert 'random_state' in checkpoint


def test_test_tool_restores_and_scores(straight_run, tmp_path):
    result = _run([sys.executable, 'tools/test.py', TINY, str(straight_run / 'iter_4.pth'),
                   '--work-dir', str(tmp_path), '--save-dir', str(tmp_path / 'images')])
    assert 'PSNR' in result.stdout + result.stderr
    saved = sorted(os.listdir(tmp_path / 'images'))
    assert saved == ['astronaut.png', 'camera.png', 'grace_hopper.png']
    table = (tmp_path / 'tables' / 'osediff_tiny.md').read_text(encoding='utf-8')
    assert '| Dataset | Method | PSNR↑ | SSIM↑ |' in table
    assert '| test | osediff_tiny | ' in table


def test_test_tool_writes_one_table_row_per_test_set(straight_run, tmp_path):
    """A config's ``test_sets``: every set is restored and scored; rows land in their tables' layouts."""
    config = tmp_path / 'two_sets.py'
    config.write_text(f"""_base_ = [{str(REPO_ROOT / TINY)!r}]
method_name = 'tiny'
test_sets = [
    dict(name='SetA', table='general', dataloader=_base_.test_dataloader,
         evaluator=[dict(type='PSNR', prefix='SetA'), dict(type='SSIM', prefix='SetA')]),
    dict(name='SetB', table='portrait', dataloader=_base_.test_dataloader, evaluator=[dict(type='PSNR')]),
]
""")
    result = _run([sys.executable, 'tools/test.py', str(config), str(straight_run / 'iter_4.pth'), '--work-dir',
                   str(tmp_path)])
    log = result.stdout + result.stderr
    with open(tmp_path / 'tables' / 'tiny_general.csv', newline='') as f:
        general = list(csv.DictReader(f))
    with open(tmp_path / 'tables' / 'tiny_portrait.csv', newline='') as f:
        portrait = list(csv.DictReader(f))
    assert [(r['dataset'], r['method']) for r in general] == [('SetA', 'tiny')]
    # the table holds what the metrics computed: the values the test loop logged for SetA (both to 4 decimals)
    logged = {name: float(re.search(rf'SetA/{name}: (-?[0-9.]+)', log).group(1)) for name in ('PSNR', 'SSIM')}
    assert {name: float(general[0][name]) for name in logged} == logged
    assert general[0]['MANIQA'] == ''  # not computed: left empty, not invented
    assert [r['dataset'] for r in portrait] == ['SetB'] and float(portrait[0]['PSNR']) == float(general[0]['PSNR'])


def _assert_two_ranks_agree(config, tmp_path, port):
    require_pypi_weights('vgg16.ckpt')
    _run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
          f'--master_port={port}', 'tests/helpers/train_and_dump_weights.py', config, str(tmp_path),
          '3'])
    rank0 = torch.load(tmp_path / 'weights_rank0.pt')
    rank1 = torch.load(tmp_path / 'weights_rank1.pt')
    assert rank0['final'].keys() == rank1['final'].keys()
    for key in rank0['final']:
        assert torch.equal(rank0['final'][key], rank1['final'][key]), key
    assert any(not torch.equal(rank0['initial'][k], rank0['final'][k]) for k in rank0['final'])
    # The checkpoint of the distributed run holds exactly those trained tensors.
    saved = _load(tmp_path / 'iter_3.pth')['state_dict']
    # runner.model is MMSeparateDistributedDataParallel(Model(backbone=DDP(...), ...))
    final = {k.replace('module.', ''): v for k, v in rank0['final'].items()}
    assert set(final) <= set(saved)
    for key in final:
        assert torch.equal(saved[key], final[key]), key
    # ... and loads into a single-process model.
    result = _run([sys.executable, 'tools/test.py', config, str(tmp_path / 'iter_3.pth'),
                   '--work-dir', str(tmp_path / 'test')])
    assert 'PSNR' in result.stdout + result.stderr
    return final


def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    _assert_two_ranks_agree(TINY, tmp_path, 29531)


def test_headsup_two_cpu_ranks_end_with_identical_weights(tmp_path):
    """Three separately wrapped children (generator, regulariser, discriminator) stay in sync."""
    final = _assert_two_ranks_agree(HEADSUP_TINY, tmp_path, 29533)
    assert any(k.startswith('discriminator.') for k in final)


def test_export_weights_round_trip(straight_run, tmp_path, tiny_cfg):
    from portraitisr.registry import BACKBONES

    out = tmp_path / 'osediff_tiny.safetensors'
    _run([sys.executable, 'tools/export_weights.py', TINY, str(straight_run / 'iter_4.pth'),
          str(out)])
    pkl = tmp_path / 'osediff_tiny.pkl'
    _run([sys.executable, 'tools/export_weights.py', TINY, str(straight_run / 'iter_4.pth'),
          str(pkl), '--format', 'osediff'])
    trained = _load(straight_run / 'iter_4.pth')['state_dict']
    info = checkpoint_training_info(out)
    assert (info['trained_iters'], info['config_name'], info['model_type']) == (4, 'osediff_tiny', 'OSEDiff')
    for weights in (out, pkl):
        backbone = BACKBONES.build(dict(tiny_cfg.tiny_backbone, trained_weights=str(weights)))
        for name, value in backbone.trainable_state_dict().items():
            assert torch.equal(value, trained['backbone.' + name]), name
