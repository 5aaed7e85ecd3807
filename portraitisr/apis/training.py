"""Train a model from a config file: what ``portraitisr train`` and ``tools/train.py`` run.

Checkpoints are loaded without running code from them: a path or an https URL with ``#sha256=<64 hex>`` (or
``trust_url``) for ``resume`` and ``load_from``; see docs/checkpoints_and_resume.md. A checkpoint that is missing,
refused or fails to download raises one of :data:`CHECKPOINT_ERRORS` before the model is built.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence, Union

from mmengine.config import Config, DictAction

from portraitisr.engine.checkpoint_loading import CHECKPOINT_ERRORS, verify_checkpoint
from portraitisr.utils.runner_setup import build_runner, prepare_config

__all__ = ['CHECKPOINT_ERRORS', 'parse_cfg_options', 'train']


def parse_cfg_options(pairs: Optional[Sequence[str]]) -> dict:
    """``['train_cfg.max_iters=2', 'a=[1,2]']`` -> ``{'train_cfg.max_iters': 2, 'a': [1, 2]}`` (mmengine's
    ``--cfg-options`` syntax, parsed by its ``DictAction``)."""
    namespace = argparse.Namespace(cfg_options=None)
    if pairs:
        DictAction(option_strings=['--cfg-options'], dest='cfg_options')(None, namespace, list(pairs))
    return namespace.cfg_options or {}


def train(config: Union[str, Path],
          work_dir: Optional[str] = None,
          resume: Optional[str] = None,
          trust_url: bool = False,
          amp: bool = False,
          cfg_options: Optional[dict] = None,
          launcher: str = 'none'):
    """Train with the config file ``config`` and return the runner after its last iteration.

    Args:
        config: a config file (resolve names first with :func:`~portraitisr.apis.config_location.resolve_config`).
        work_dir: where logs and checkpoints go (default: the config's ``work_dir``, else
            ``./work_dirs/<config name>``).
        resume: ``'auto'`` for the newest checkpoint in the work dir that loads, a path or an https URL to resume
            from, None to start afresh (from the config's ``load_from``, if any).
        trust_url: download a ``resume`` / ``load_from`` URL that has no ``#sha256=`` (still loaded with
            ``weights_only``).
        amp: automatic mixed precision (bf16 where supported, else fp16) for every optimizer wrapper.
        cfg_options: config overrides, ``{'train_cfg.max_iters': 4}``.
        launcher: ``'none'``, ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.

    Raises:
        One of :data:`CHECKPOINT_ERRORS`: a checkpoint is missing, refused or failed to download.
    """
    cfg = Config.fromfile(str(config))
    cfg = prepare_config(cfg, config_path=str(config), work_dir=work_dir, cfg_options=cfg_options,
                         launcher=launcher, amp=amp)
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
    cfg.trust_checkpoint_url = trust_url or bool(cfg.get('trust_checkpoint_url', False))
    if cfg.get('load_from'):
        # Before the model is built: a refused URL or a missing file is reported at once, and the runner gets the
        # verified local file.
        cfg.load_from = str(verify_checkpoint(cfg.load_from, trust_url=cfg.trust_checkpoint_url))
    runner = build_runner(cfg)
    runner.train()
    return runner
