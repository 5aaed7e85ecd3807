"""Run ``tools/train.py`` and kill -9 the process halfway through writing one checkpoint (test-only).

    PORTRAITISR_TEST_KILL_DURING=iter_4.pth python tests/helpers/kill_during_checkpoint.py CONFIG [train.py args]

When the checkpoint writer (mmengine's ``LocalBackend.put``, which ``save_checkpoint`` calls with the whole
file) is about to write a file whose name starts with the given one (``iter_4.pth`` or the runner's temporary
``iter_4.pth.tmp``), half of the bytes are written and flushed to disk, then the process sends itself SIGKILL:
the state a crash or an out-of-memory kill leaves, reproduced at an exact point.
"""
import os
import os.path as osp
import runpy
import signal
import sys

from mmengine.fileio.backends.local_backend import LocalBackend

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_target = os.environ['PORTRAITISR_TEST_KILL_DURING']
_real_put = LocalBackend.put


def _put_then_die(self, obj, filepath):
    if osp.basename(str(filepath)).startswith(_target):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_put(self, obj, filepath)


LocalBackend.put = _put_then_die
sys.argv = [osp.join(REPO_ROOT, 'tools', 'train.py'), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name='__main__')
