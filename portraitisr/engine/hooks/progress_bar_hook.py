"""A tqdm progress bar over the test and validation loops (the logger prints only every few iterations)."""
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from tqdm import tqdm

from portraitisr.registry import HOOKS


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Show ``<desc>: i/N images`` while testing (main process only)."""

    priority = 'VERY_LOW'

    def __init__(self, desc: str = 'testing') -> None:
        self.desc = desc
        self._bar: Optional[tqdm] = None

    def _open(self, runner, loop) -> None:
        if is_main_process():
            self._bar = tqdm(total=len(loop.dataloader), desc=self.desc, unit='batch', dynamic_ncols=True)

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def before_test_epoch(self, runner) -> None:
        self._open(runner, runner.test_loop)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close()
