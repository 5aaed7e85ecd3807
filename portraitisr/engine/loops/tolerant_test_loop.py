"""A test loop that leaves out a test image it cannot read instead of stopping the whole run.

mmengine's ``TestLoop`` stops at the first exception of the dataloader, so one corrupt file (or a decompression
bomb refused by the pixel limit of :func:`~portraitisr.utils.image_io.read_image`) among thousands of test
images loses the run. :class:`TolerantTestLoop` catches the file errors a dataset raises while loading a batch,
logs one line naming the file and the reason, goes on with the next batch and keeps the reasons in
:attr:`TolerantTestLoop.failed`, so ``tools/test.py`` can end with a summary and a non-zero exit status. Errors of
the model or the metrics still stop the run: they are bugs or setup errors, not bad files.
"""
import logging
import re
from typing import List

from mmengine.logging import print_log
from mmengine.runner import TestLoop
from mmengine.runner.loops import _parse_losses

from portraitisr.registry import LOOPS
from portraitisr.utils.image_io import ImageReadError

__all__ = ['TolerantTestLoop', 'NoTestDataError', 'file_error_line', 'FILE_ERRORS']

#: What a dataset raises for a file it cannot load: unreadable, corrupt, too many pixels (``ImageReadError`` and
#: its ``ImageTooLargeError``), missing or not readable on disk. Other ``OSError``s (e.g. a DataLoader worker's
#: shared memory) are not about one file and still stop the run.
FILE_ERRORS = (ImageReadError, FileNotFoundError, PermissionError, IsADirectoryError)
_TYPE_PREFIX = re.compile(r'^[\w.]*(Error|Exception): ')


class NoTestDataError(RuntimeError):
    """Not one batch of a test set could be loaded: nothing to score."""


def file_error_line(error: BaseException) -> str:
    """One line for a file error: the message itself, or, for an error a DataLoader worker re-raised (whose text is
    ``Caught X in DataLoader worker process N. Original Traceback ...``), the last line of the worker's traceback
    without its exception-type prefix."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and lines[0].startswith('Caught ') and 'DataLoader worker' in lines[0]:
        return _TYPE_PREFIX.sub('', lines[-1])
    return lines[0]


@LOOPS.register_module()
class TolerantTestLoop(TestLoop):
    """``TestLoop`` that skips batches whose files cannot be loaded (see the module docstring).

    A skipped batch is logged as ``skipped a test batch: <reason>`` (the reason names the file) and its reason
    appended to :attr:`failed`; the metrics are computed over the batches that loaded. With ``batch_size > 1`` the
    whole batch of the bad file is left out, and the line says how many images that was. If no batch loads, the
    run stops with :class:`NoTestDataError`.
    """

    def __init__(self, runner, dataloader, evaluator, fp16: bool = False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16=fp16)
        self.failed: List[str] = []

    def run(self) -> dict:
        self.runner.call_hook('before_test')
        self.runner.call_hook('before_test_epoch')
        self.runner.model.eval()
        self.test_loss.clear()
        self.failed = []
        batch_size = getattr(self.dataloader, 'batch_size', None) or 1
        batches, idx = iter(self.dataloader), 0
        loaded = 0
        while True:
            try:
                data_batch = next(batches)
            except StopIteration:
                break
            except FILE_ERRORS as error:  # the dataloader's iterator stays usable: go on with the next batch
                reason = file_error_line(error)
                self.failed.append(reason)
                lost = f' (its batch of {batch_size} images left out)' if batch_size > 1 else ''
                print_log(f'skipped a test batch: {reason}{lost}', logger='current', level=logging.WARNING)
                idx += 1
                continue
            self.run_iter(idx, data_batch)
            idx += 1
            loaded += 1
        if loaded == 0:
            raise NoTestDataError(f'no test batch could be loaded ({len(self.failed)} skipped; the first: '
                               f'{self.failed[0] if self.failed else "the test set is empty"})')
        metrics = self.evaluator.evaluate(len(self.dataloader.dataset))
        if self.test_loss:
            metrics.update(_parse_losses(self.test_loss, 'test'))
        self.runner.call_hook('after_test_epoch', metrics=metrics)
        self.runner.call_hook('after_test')
        return metrics
