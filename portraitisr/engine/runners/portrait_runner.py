"""mmengine's ``Runner`` with checkpoint handling a user can rely on, and a short log header.

``tools/train.py``, ``tools/test.py`` and :func:`portraitisr.utils.runner_setup.build_runner` use it (config key
``runner_type``, default ``'PortraitRunner'``). What it changes, and why:

* **Loading** (``load_from``, ``--resume PATH|URL``, ``tools/test.py CKPT``) goes through
  :mod:`portraitisr.engine.checkpoint_loading`: URLs need a sha256 (``URL#sha256=...``) or ``trust_checkpoint_url``
  and are downloaded by our resolver, files are read with ``weights_only=True``. mmengine's own loader would
  download with ``weights_only=False`` and run whatever the file contains. ``init_cfg=dict(type='Pretrained')``
  with a URL (mmengine's loader again) is refused.
* **Auto-resume** (``--resume`` without a path) takes the newest checkpoint that loads and says which newer ones it
  skipped and why, instead of crashing on a checkpoint that a kill left truncated.
* **Saving** is atomic: the checkpoint is written to ``<name>.tmp`` in the same folder, fsynced and renamed, so a
  kill leaves the previous file intact (the checkpoint hook then updates ``last_checkpoint`` and only afterwards
  deletes old checkpoints; see :class:`~portraitisr.engine.hooks.AtomicCheckpointHook`). Every checkpoint's
  ``meta`` records ``trained_iters``, ``config_name``, ``model_type`` and ``portraitisr_version`` (and
  ``fine_tuned_from`` for a ``load_from`` run), which :func:`checkpoint_training_info` reads back.
* **Resume maps to the CPU**: the loaded tensors are copied into the model and optimisers anyway, and torch's
  random state must be a CPU tensor for :class:`~portraitisr.engine.hooks.RandomStateHook`.
* **The log** starts with two lines of environment (the full report goes to ``<log dir>/environment.txt``) and
  the path of the config dump, instead of mmengine's ~500 lines of environment and config, lists the hooks on
  one line, and leaves out mmengine's two lines per parameter of ``init_weights`` information.
"""
import os.path as osp
from typing import Any, Callable, Optional, Sequence, Union

import torch
from mmengine.dist import master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.model import BaseModule, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from mmengine.runner.priority import Priority

from portraitisr.engine.checkpoint_loading import find_resumable_checkpoint, load_checkpoint_file
from portraitisr.engine.hooks.atomic_checkpoint_hook import TEMPORARY_SUFFIX
from portraitisr.engine.runners.run_records import checkpoint_meta, log_environment
from portraitisr.registry import RUNNERS
from portraitisr.utils.atomic_files import publish_file
from portraitisr.weights import CheckpointLoadError

__all__ = ['PortraitRunner']


def _pretrained_urls(model: torch.nn.Module) -> list:
    """``init_cfg`` entries of type ``Pretrained`` whose checkpoint is a URL (``https://``, ``torchvision://``,
    ...), which mmengine would fetch and load with ``weights_only=False``."""
    found = []
    for name, module in model.named_modules():
        init_cfg = getattr(module, 'init_cfg', None)
        for cfg in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
            if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
                checkpoint = str(cfg.get('checkpoint', ''))
                if '://' in checkpoint:
                    found.append(f'{name or "model"}: {checkpoint}')
    return found


@RUNNERS.register_module()
class PortraitRunner(Runner):
    """mmengine ``Runner`` whose checkpoints never run code, survive a kill, and say how long they trained.

    Extra config key: ``trust_checkpoint_url`` (default False): download a ``load_from`` / resume URL that has no
    ``#sha256=`` (``tools/train.py --trust-url``); the file is still loaded with ``weights_only=True``.
    """

    _resume_point: Optional[tuple] = None  # (path, checkpoint) found by auto-resume, loaded once

    # ---------------------------------------------------------------------------------------------- loading
    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: Sequence = ((r'^module.', ''), )) -> dict:
        """Load ``filename`` (path, or URL with sha256 / trusted) without unpickling code, into the model.

        Same contract as mmengine's ``Runner.load_checkpoint``: calls ``after_load_checkpoint`` hooks, loads the
        state dict (not strictly by default) and returns the checkpoint.
        """
        if self._resume_point is not None and self._resume_point[0] == str(filename):
            checkpoint, self._resume_point = self._resume_point[1], None
        else:
            checkpoint = load_checkpoint_file(filename, map_location,
                                              trust_url=bool(self.cfg.get('trust_checkpoint_url', False)))
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=list(revise_keys))
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        """mmengine's resume, loading to the CPU by default (see the module docstring)."""
        super().resume(filename, resume_optimizer, resume_param_scheduler,
                       'cpu' if map_location == 'default' else map_location)

    def load_or_resume(self) -> None:
        """As mmengine, except that auto-resume falls back to the newest checkpoint that loads."""
        if self._has_loaded:
            return
        if not (self._resume and self._load_from is None):
            super().load_or_resume()  # an explicit resume path or load_from: through load_checkpoint above
            return
        point = find_resumable_checkpoint(self.work_dir)
        for path, reason in point.skipped:
            self.logger.warning(f'Not resuming from {path}: {reason}')
        if point.path is None:
            if point.skipped:
                raise CheckpointLoadError(
                    f'--resume: none of the {len(point.skipped)} checkpoints in {self.work_dir} loads (the newest: '
                    f'{point.skipped[0][1]}); move them away to train from the start')
            self.logger.info(f'No checkpoint to resume from in {self.work_dir}: training starts from the start.')
            return
        self.logger.info(f'Auto-resuming from {point.path}, the newest checkpoint that loads.')
        self._resume_point = (str(point.path), point.checkpoint)
        self.resume(str(point.path))
        self._has_loaded = True

    def _init_model_weights(self) -> None:
        model = self.model.module if is_model_wrapper(self.model) else self.model
        remote = _pretrained_urls(model)
        if remote:
            raise CheckpointLoadError(
                f"init_cfg=dict(type='Pretrained') loads through mmengine's loader, which runs code from a "
                f'downloaded file: {"; ".join(remote)}. Use load_from (a path, or a URL with #sha256=) or the '
                "component's own weights argument instead")
        # mmengine's BaseModule writes two lines per parameter into the log file ("the value is the same before
        # and after calling init_weights": our components load their weights when built). For a one-step SD
        # model that is tens of thousands of lines; this instance's dump is skipped.
        has_dump = isinstance(model, BaseModule)
        if has_dump:
            model._dump_init_info = lambda: None
        try:
            super()._init_model_weights()
        finally:
            if has_dump:
                del model._dump_init_info

    # ---------------------------------------------------------------------------------------------- saving
    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None) -> None:
        """mmengine's save_checkpoint, written atomically (local folders) with training-length metadata."""
        trained = (meta or {}).get('iter', self.iter if by_epoch else self.iter + 1)
        meta = checkpoint_meta(meta, self.cfg, trained, self._load_from if not self._resume else None)
        local = file_client_args is None and isinstance(get_file_backend(out_dir, backend_args=backend_args),
                                                        LocalBackend)
        if not local:  # object stores write whole objects anyway
            super().save_checkpoint(out_dir, filename, file_client_args, save_optimizer, save_param_scheduler,
                                    meta, by_epoch, backend_args)
            return
        target = osp.join(out_dir, filename)
        temporary = target + TEMPORARY_SUFFIX
        super().save_checkpoint(out_dir, filename + TEMPORARY_SUFFIX, None, save_optimizer, save_param_scheduler,
                                meta, by_epoch, backend_args)
        publish_file(temporary, target)

    # ---------------------------------------------------------------------------------------------- logging
    def _log_env(self, env_cfg: dict) -> None:
        """Two lines of environment and where the config is, instead of mmengine's full dump."""
        log_environment(self, f'seed {self._seed}, deterministic {self._randomness_cfg.get("deterministic", False)}, '
                              f'launcher {self._launcher}, {self._world_size} process(es)')

    def get_hooks_info(self) -> str:
        """The hooks in the order they run, on one line (mmengine lists every stage of every hook)."""
        def priority(hook: Any) -> str:
            try:
                return Priority(hook.priority).name
            except ValueError:
                return str(hook.priority)
        return ', '.join(f'{type(hook).__name__} ({priority(hook)})' for hook in self.hooks)
