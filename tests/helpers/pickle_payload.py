"""A crafted checkpoint: a pickle that, loaded the unsafe way, runs code writing a marker file.

The object's ``__reduce__`` makes the unpickler call ``builtins.exec`` with a line of Python. Loaded with
``torch.load(weights_only=False)`` (mmengine's URL loader, torch < 2.6's default) the marker appears; the safe
loader refuses the ``exec`` global before calling anything.
"""
import torch


class CodeOnLoad:
    """Pickles as "call exec(<write the marker>)"."""

    def __init__(self, marker: str) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("code from a checkpoint ran")', )


def write_payload_checkpoint(path, marker) -> None:
    """A file shaped like a training checkpoint (meta, state_dict) that carries the payload."""
    torch.save({'meta': {'iter': 2, 'epoch': 0}, 'state_dict': {'w': torch.zeros(2)}, 'message_hub': {},
                'payload': CodeOnLoad(marker)}, path)
