"""Synthetic degradations (GT -> LQ) for training: Real-ESRGAN's second-order pipeline and the first-order
face pipeline, batched in torch on any device, exact to their references given the same random draws.

Importing this package registers ``RealESRGANDegradation`` and ``FaceDegradation`` in ``DEGRADATIONS``;
:func:`build_degradation` builds them from a preset name (``'realesrgan'``, ``'osediff'``, ``'seesr'``,
``'codeformer_face'``, ``'codeformer_stage2'``) or a config dict.
"""
from .diffjpeg import DiffJPEG, quality_to_factor
from .face import FaceDegradation, opencv_jpeg
from .kernels import KERNEL_TYPES, filter2d, sample_final_sinc, sample_mixed_kernels
from .noise import add_gaussian_noise, add_poisson_noise
from .presets import PRESETS, build_degradation, preset_config
from .realesrgan import RESIZE_MODES, RealESRGANDegradation, SeededDegradation, resize_per_sample
from .usm import USMSharp

__all__ = [
    'DiffJPEG', 'quality_to_factor', 'FaceDegradation', 'opencv_jpeg', 'KERNEL_TYPES', 'filter2d',
    'sample_final_sinc', 'sample_mixed_kernels', 'add_gaussian_noise', 'add_poisson_noise', 'PRESETS',
    'build_degradation', 'preset_config', 'RESIZE_MODES', 'RealESRGANDegradation', 'SeededDegradation',
    'resize_per_sample', 'USMSharp'
]
