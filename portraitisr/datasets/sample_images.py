"""Real photos that ship with installed packages, addressed as ``sample://NAME``.

The debug configs and the tests train and evaluate on them, so every machine has real data
without a download: ``astronaut`` and ``camera`` (scikit-image), ``grace_hopper`` (matplotlib).
"""
from typing import Callable, Dict

import numpy as np

SAMPLE_SCHEME = 'sample://'


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data
        return getattr(data, name)()
    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data('grace_hopper.jpg') as f:
        return np.asarray(Image.open(f).convert('RGB'))


SAMPLE_IMAGES: Dict[str, Callable[[], np.ndarray]] = {
    'astronaut': _skimage('astronaut'),
    'camera': _skimage('camera'),
    'grace_hopper': _grace_hopper,
}


def is_sample(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SAMPLE_SCHEME)


def load_sample_image(path: str) -> np.ndarray:
    """``sample://NAME`` -> float32 ``H x W x 3`` RGB in [0, 1] (grayscale expanded)."""
    name = path[len(SAMPLE_SCHEME):]
    if name not in SAMPLE_IMAGES:
        raise KeyError(f'Unknown sample image {name!r}; available: {sorted(SAMPLE_IMAGES)}')
    try:
        array = SAMPLE_IMAGES[name]()
    except ImportError as error:
        raise ImportError(f'{path} needs scikit-image and matplotlib: pip install -e ".[dev]"') from error
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return array.astype(np.float32) / 255.0
