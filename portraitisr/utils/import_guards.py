"""Keep third-party imports that reach for the network out of our command-line tools.

mmengine registers bitsandbytes' optimizers when bitsandbytes is installed (pyiqa, an optional dependency, pulls it
in), so every tool that imports mmengine imports bitsandbytes. bitsandbytes 0.4x, on CPUs with AVX512-BF16, then
asks the ``kernels`` package for a compiled kernel from the Hugging Face Hub (``kernels-community/
quantization-bitsandbytes``): a download of native code at import time that nobody asked for, 5-10 s of start-up,
and a warning on every run when offline. No portraitisr component uses bitsandbytes, so our tools hide it before
they import mmengine. Library users who import our components into their own programs are not affected; set
``PORTRAITISR_ALLOW_BITSANDBYTES=1`` to keep it in the tools too (e.g. for a ``bnb_`` optimizer in a config).
"""
import os
import sys

__all__ = ['hide_bitsandbytes']


def hide_bitsandbytes() -> bool:
    """Make ``import bitsandbytes`` fail with ImportError in this process (mmengine then skips its optimizers).

    Call it before mmengine is imported. Returns True when bitsandbytes is hidden; False when the user opted out
    or it was already imported (then hiding it would break the modules holding it).
    """
    if os.environ.get('PORTRAITISR_ALLOW_BITSANDBYTES') == '1' or 'bitsandbytes' in sys.modules:
        return False
    sys.modules['bitsandbytes'] = None  # the import system's "not importable" marker
    return True
