"""Run ``tools/train.py`` and SIGKILL every process when training reaches an iteration (test-only).

    PORTRAITISR_TEST_KILL_AT_ITER=3 torchrun ... tests/helpers/kill_at_iter.py CONFIG [train.py args]

Just before iteration ``N + 1`` would run (after the checkpoint of iteration ``N`` is written), each process sends
itself SIGKILL: a crash or a preempted job, reproduced at an exact point, without any cleanup code running.
"""
import os
import os.path as osp
import runpy
import signal
import sys

from mmengine.runner.loops import IterBasedTrainLoop

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_kill_at = int(os.environ['PORTRAITISR_TEST_KILL_AT_ITER'])
_real_run_iter = IterBasedTrainLoop.run_iter


def _run_iter_or_die(self, data_batch):
    if self._iter >= _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_run_iter(self, data_batch)


IterBasedTrainLoop.run_iter = _run_iter_or_die
sys.argv = [osp.join(REPO_ROOT, 'tools', 'train.py'), *sys.argv[1:]]
sys.path.insert(0, REPO_ROOT)
runpy.run_path(sys.argv[0], run_name='__main__')
