"""mmengine's CheckpointHook with an order of operations that never leaves a work dir without a good checkpoint."""
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from portraitisr.registry import HOOKS
from portraitisr.utils.atomic_files import write_bytes_atomically

#: A checkpoint being written is ``<name>.tmp`` (see :class:`~portraitisr.engine.runners.PortraitRunner`).
TEMPORARY_SUFFIX = '.tmp'


# Also registered as ``CheckpointHook``: inside the ``portraitisr`` scope a config that names mmengine's hook (as
# ours and mmengine's default hooks do) gets this one, so no config can fall back to deleting first.
@HOOKS.register_module(name=['AtomicCheckpointHook', 'CheckpointHook'])
class AtomicCheckpointHook(CheckpointHook):
    """Save, then point ``last_checkpoint`` at the new file, then delete the checkpoints beyond ``max_keep_ckpts``.

    mmengine 0.10.7 deletes the oldest kept checkpoint *before* writing the new one and writes in place: with
    ``max_keep_ckpts=1`` a kill during the write left only a truncated file, and ``last_checkpoint`` named the
    deleted one. Here the runner writes the new checkpoint to ``<name>.tmp`` and renames it after an fsync
    (:class:`~portraitisr.engine.runners.PortraitRunner`), ``last_checkpoint`` is replaced the same way, and only
    then are old checkpoints removed. At every moment the work dir holds a complete checkpoint that
    ``last_checkpoint`` or ``--resume``'s fallback finds. Left-over ``.tmp`` files of a killed run are removed
    when training starts again. ``save_best`` follows the same order: the new best checkpoint is written (atomically)
    before the previous one is deleted. All other behaviour (interval, ``save_last``, object-store backends) is
    mmengine's.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend) and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):
                if name.endswith('.pth' + TEMPORARY_SUFFIX):
                    os.remove(osp.join(self.out_dir, name))
                    runner.logger.info(f'Removed {name}, a checkpoint an earlier run did not finish writing.')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not isinstance(self.file_backend, LocalBackend):
            super()._save_checkpoint_with_step(runner, step, meta)
            return
        obsolete = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            # Same bookkeeping as mmengine (the saved message hub lists the kept ids, this one included), but the
            # files leave only after the new checkpoint is in place.
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                obsolete.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_bytes_atomically(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())
        for old_step in obsolete:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if path != self.last_ckpt and self.file_backend.isfile(path):
                self.file_backend.remove(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's, except that the previous best checkpoint is deleted after the new one is in place (mmengine
        deletes it first, so a kill while writing the new one left no best checkpoint at all)."""
        backend = self.file_backend
        if not isinstance(backend, LocalBackend):
            super()._save_best_checkpoint(runner, metrics)
            return
        replaced = []
        backend.remove = replaced.append  # shadows the method for this call: removals wait for the save
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            del backend.remove
        current = {getattr(self, 'best_ckpt_path', None), *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in replaced:
            if path not in current and backend.isfile(path):
                backend.remove(path)
