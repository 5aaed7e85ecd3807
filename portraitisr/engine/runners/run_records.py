"""What both runners write about a run: the metadata of every checkpoint and the short log header."""
import os.path as osp
import platform
from typing import Optional

import mmengine
import torch
from mmengine.dist import is_main_process
from mmengine.utils.dl_utils import collect_env

from portraitisr.version import __version__

__all__ = ['config_name', 'checkpoint_meta', 'log_environment']


def config_name(cfg) -> Optional[str]:
    """The config's file name without ``.py`` (None for a config built in code)."""
    filename = getattr(cfg, 'filename', None)
    return osp.splitext(osp.basename(filename))[0] if filename else None


def checkpoint_meta(meta: Optional[dict], cfg, trained_iters: int, fine_tuned_from: Optional[str]) -> dict:
    """``meta`` (mmengine's, a dict or None) with ``trained_iters``, ``config_name``, ``model_type``,
    ``portraitisr_version`` and, for a ``load_from`` run, ``fine_tuned_from`` added where missing; read back by
    :func:`~portraitisr.engine.checkpoint_training_info`."""
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
    meta = dict(meta or {})
    meta.setdefault('trained_iters', trained_iters)
    meta.setdefault('config_name', config_name(cfg))
    model_cfg = cfg.get('model') if cfg else None
    meta.setdefault('model_type', model_cfg.get('type') if isinstance(model_cfg, dict) else None)
    meta.setdefault('portraitisr_version', __version__)
    if fine_tuned_from is not None:
        meta.setdefault('fine_tuned_from', str(fine_tuned_from))
    return meta


def log_environment(runner, run_line: str) -> None:
    """Two lines of environment (versions and devices, then ``run_line``: seed, launcher, processes) and where
    the config is, instead of mmengine's ~500-line dump; the full environment report goes to
    ``<log dir>/environment.txt``."""
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        device = f'CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {", ".join(names)}'
    else:
        device = 'CPU only'
    runner.logger.info(f'portraitisr {__version__}, torch {torch.__version__} ({device}), mmengine '
                       f'{mmengine.__version__}, Python {platform.python_version()} on {platform.system()}')
    runner.logger.info(run_line)
    if runner.cfg._cfg_dict:
        name = osp.basename(runner.cfg.filename) if runner.cfg.filename else f'{runner.timestamp}.py'
        runner.logger.info(f'Config: {osp.join(runner.work_dir, name)}')
    if is_main_process():
        report = osp.join(runner.log_dir, 'environment.txt')
        with open(report, 'w', encoding='utf-8') as f:
            f.writelines(f'{key}: {value}\n' for key, value in collect_env().items())
        runner.logger.info(f'Environment report: {report}')
