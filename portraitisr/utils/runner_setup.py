"""Config preparation shared by ``tools/train.py``, ``tools/test.py`` and the Python API."""
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config

from portraitisr.registry import LOOPS, RUNNERS

AMP_WRAPPER = 'AmpOptimWrapper'


def _use_amp(optim_wrapper: dict) -> None:
    """Turn every optimizer wrapper of a (multi-)optimizer config into an AMP wrapper."""
    if not torch.cuda.is_available():
        # mmengine's AmpOptimWrapper asserts an accelerator.
        raise SystemExit('--amp needs a GPU. On CPU, train in float32 (the one-step backbones '
                         'also take frozen_dtype="bfloat16" for their frozen weights).')
    dtype = 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    wrappers = [optim_wrapper] if 'optimizer' in optim_wrapper else [
        v for v in optim_wrapper.values() if isinstance(v, dict)]
    for wrapper in wrappers:
        if wrapper.get('type', 'OptimWrapper') != AMP_WRAPPER:
            wrapper['type'] = AMP_WRAPPER
            wrapper.setdefault('dtype', dtype)


def prepare_config(cfg: Config,
                   config_path: str,
                   work_dir: Optional[str] = None,
                   cfg_options: Optional[dict] = None,
                   launcher: str = 'none',
                   amp: bool = False) -> Config:
    """Apply command-line overrides, the work dir, the launcher and AMP to a loaded config."""
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        # NCCL needs GPUs; gloo runs the same distributed code on CPU processes, where DDP must
        # not be given CUDA device ids (mmengine passes LOCAL_RANK unless told otherwise).
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel',
                                                       broadcast_buffers=False)
        wrapper['device_ids'] = None
        cfg.model_wrapper_cfg = wrapper
    if amp:
        _use_amp(cfg.optim_wrapper)
    return cfg


def init_cpu_distributed(cfg: Config) -> None:
    """Start a gloo process group for ``--launcher pytorch`` on machines without CUDA.

    mmengine's ``init_dist`` always calls ``torch.cuda.set_device``, which fails without a GPU;
    it skips its own initialisation when a process group already exists.
    """
    import torch.distributed as dist

    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available() \
            and not dist.is_initialized():
        dist.init_process_group(backend='gloo')


def build_runner(cfg: Config):
    """The configured ``runner_type``, by default ``PortraitRunner`` (mmengine's ``Runner`` with safe checkpoint
    loading, atomic saving and resume fallback; see ``portraitisr/engine/runners/portrait_runner.py``). It is
    looked up in the registry, which imports the engine lazily."""
    init_cpu_distributed(cfg)
    cfg.setdefault('runner_type', 'PortraitRunner')
    return RUNNERS.build(cfg)


def run_test_sets(runner, test_sets: Optional[list] = None) -> list:
    """Test ``runner``'s model on every entry of ``test_sets`` (a config's list of
    ``dict(name=..., table=..., dataloader=..., evaluator=...)``), loading the checkpoint once; without
    ``test_sets``, on the config's ``test_dataloader``. Each set runs in the loop type of the config's
    ``test_cfg`` (``TestLoop`` by default; ``tools/test.py`` uses ``TolerantTestLoop``, which leaves out files it
    cannot read).

    Returns:
        ``[(name, table, metrics, failed)]`` in order; ``failed``: the one-line reasons of the test batches the loop
        left out (empty for mmengine's ``TestLoop``).
    """
    cfg = runner.cfg
    if not test_sets:
        metrics = runner.test()
        return [(cfg.get('test_set_name', 'test'), cfg.get('test_table', 'general'), metrics,
                 list(getattr(runner.test_loop, 'failed', [])))]
    loop_cfg = dict(cfg.get('test_cfg') or {})
    loop_cfg.setdefault('type', 'TestLoop')
    results = []
    for test_set in test_sets:
        missing = {'name', 'dataloader', 'evaluator'} - set(test_set)
        if missing:
            raise KeyError(f'test_sets entry {test_set.get("name", "?")!r} lacks {", ".join(sorted(missing))}')
        runner._test_loop = LOOPS.build(dict(loop_cfg, runner=runner, dataloader=test_set['dataloader'],
                                             evaluator=test_set['evaluator']))
        metrics = runner.test()
        results.append((test_set['name'], test_set.get('table', 'general'), metrics,
                        list(getattr(runner.test_loop, 'failed', []))))
    return results
