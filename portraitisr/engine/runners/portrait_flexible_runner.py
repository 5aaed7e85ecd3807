"""mmengine's ``FlexibleRunner`` (strategy-based: sharded training) with PortraitRunner's checkpoint guarantees.

A config chooses it with ``runner_type = 'PortraitFlexibleRunner'`` and a ``strategy`` (our
:class:`~portraitisr.engine.strategies.FSDP2Strategy`, or any mmengine strategy); ``tools/train.py`` and
``tools/dist_train.sh`` (torchrun, one or many nodes) run it as any other config. What it adds to mmengine's, as
:class:`~portraitisr.engine.runners.PortraitRunner` does for the plain runner:

* checkpoint paths and URLs are resolved by our resolver before the strategy reads them (a URL needs
  ``#sha256=`` or ``trust_checkpoint_url``); FSDP2Strategy itself loads with ``weights_only=True``;
* auto-resume (``--resume`` without a path) takes the newest checkpoint that loads, found by rank 0 and shared
  with the other ranks (so the file is scanned once, not once per rank);
* every checkpoint's ``meta`` records ``trained_iters``, ``config_name``, ``model_type``, ``portraitisr_version``
  (and ``fine_tuned_from``), as PortraitRunner's; FSDP2Strategy writes it atomically;
* a short log header (two environment lines, the hooks on one line) instead of mmengine's full dump.
"""
from typing import Callable, Optional, Union

import torch.distributed as dist
from mmengine.dist import get_dist_info, is_distributed, is_main_process
from mmengine.runner._flexible_runner import FlexibleRunner

from portraitisr.engine.checkpoint_loading import find_resumable_checkpoint, resolve_checkpoint
from portraitisr.engine.runners.run_records import checkpoint_meta, log_environment
from portraitisr.registry import RUNNERS, STRATEGIES
from portraitisr.weights import CheckpointLoadError

__all__ = ['PortraitFlexibleRunner']


def _share_from_rank0(value):
    """``value`` of rank 0 on every rank (a picklable object)."""
    if not is_distributed():
        return value
    holder = [value if get_dist_info()[0] == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@RUNNERS.register_module()
class PortraitFlexibleRunner(FlexibleRunner):
    """``FlexibleRunner`` with safe, atomic, auto-resumable checkpoints; see the module docstring."""

    @classmethod
    def from_cfg(cls, cfg) -> 'PortraitFlexibleRunner':
        if cfg.get('strategy') is None:
            raise KeyError('PortraitFlexibleRunner needs a `strategy` in the config (e.g. '
                           "dict(type='FSDP2Strategy', shard_modules=[...]))")
        return super().from_cfg(cfg)

    def build_strategy(self, strategy=None, **kwargs):
        """Our ``STRATEGIES`` registry (which also sees mmengine's): the runner builds the strategy before it sets
        the ``portraitisr`` default scope."""
        if isinstance(strategy, dict) and isinstance(strategy.get('type'), str):
            strategy = dict(strategy, type=STRATEGIES.get(strategy['type']))
        return super().build_strategy(strategy, **kwargs)

    # ---------------------------------------------------------------------------------------------- loading
    def _local_checkpoint(self, filename: str) -> str:
        return str(resolve_checkpoint(filename, trust_url=bool(self.cfg.get('trust_checkpoint_url', False))))

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module\.', '')]):
        super().load_checkpoint(self._local_checkpoint(filename), map_location, strict, revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        super().resume(self._local_checkpoint(filename), resume_optimizer, resume_param_scheduler, map_location)

    def load_or_resume(self) -> None:
        """As mmengine, except that auto-resume falls back to the newest checkpoint that loads."""
        if self._has_loaded:
            return
        if not (self._resume is True and self._load_from is None):
            super().load_or_resume()
            return
        found = None
        if is_main_process():
            point = find_resumable_checkpoint(self.work_dir)
            found = (None if point.path is None else str(point.path), [(str(p), r) for p, r in point.skipped])
            del point  # the checkpoint it loaded: the strategy reads the file again, memory-mapped
        path, skipped = _share_from_rank0(found)
        for skipped_path, reason in skipped:
            self.logger.warning(f'Not resuming from {skipped_path}: {reason}')
        if path is None:
            if skipped:
                raise CheckpointLoadError(
                    f'--resume: none of the {len(skipped)} checkpoints in {self.work_dir} loads (the newest: '
                    f'{skipped[0][1]}); move them away to train from the start')
            self.logger.info(f'No checkpoint to resume from in {self.work_dir}: training starts from the start.')
            return
        self.logger.info(f'Auto-resuming from {path}, the newest checkpoint that loads.')
        self.resume(path)
        self._has_loaded = True

    # ---------------------------------------------------------------------------------------------- saving
    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None) -> None:
        """mmengine's (every rank calls it: the strategy gathers the shards), with training-length metadata."""
        trained = self.iter if by_epoch else self.iter + 1
        meta = checkpoint_meta(meta, self.cfg, trained, self._load_from if not self._resume else None)
        super().save_checkpoint(out_dir, filename, file_client_args, save_optimizer, save_param_scheduler, meta,
                                by_epoch, backend_args)

    # ---------------------------------------------------------------------------------------------- logging
    def _log_env(self) -> None:
        """Two lines of environment and where the config is, instead of mmengine's full dump."""
        log_environment(self, f'strategy {type(self.strategy).__name__}, seed {self.seed}, launcher '
                              f'{self.strategy.launcher}, {self.world_size} process(es)')

    def get_hooks_info(self) -> str:
        return ', '.join(type(hook).__name__ for hook in self.hooks)
