"""Named degradation settings of the reference training recipes, and :func:`build_degradation`.

Every preset is a config dict for the ``DEGRADATIONS`` registry with the exact values of the file it cites.
"""
import copy
from typing import Dict, Union

from torch import nn

from portraitisr.registry import DEGRADATIONS

_KERNEL_LIST = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')
_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)

# xinntao/Real-ESRGAN options/train_realesrgan_x4plus.yml (model keys + datasets.train kernel keys);
# USM on the GT (l1_gt_usm / percep_gt_usm True). gt_size 256 crop and queue_size 180 are training-loop
# options, not part of the degradation.
REALESRGAN = dict(
    type='RealESRGANDegradation',
    resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5),
    gaussian_noise_prob=0.5, noise_range=(1, 30), poisson_scale_range=(0.05, 3),
    gray_noise_prob=0.4, jpeg_range=(30, 95),
    second_blur_prob=0.8,
    resize_prob2=(0.3, 0.4, 0.3), resize_range2=(0.3, 1.2),
    gaussian_noise_prob2=0.5, noise_range2=(1, 25), poisson_scale_range2=(0.05, 2.5),
    gray_noise_prob2=0.4, jpeg_range2=(30, 95),
    blur_kernel_size=21, kernel_list=_KERNEL_LIST, kernel_prob=_KERNEL_PROB, sinc_prob=0.1,
    blur_sigma=(0.2, 3), betag_range=(0.5, 4), betap_range=(1, 2),
    blur_kernel_size2=21, kernel_list2=_KERNEL_LIST, kernel_prob2=_KERNEL_PROB, sinc_prob2=0.1,
    blur_sigma2=(0.2, 1.5), betag_range2=(0.5, 4), betap_range2=(1, 2),
    final_sinc_prob=0.8,
    scale=4, resize_back=False, use_usm=True, seed=0)

# cswry/OSEDiff dataloaders/params_realesrgan.yml (same values as Real-ESRGAN) run by
# dataloaders/realesrgan.py: USM commented out, scale_final 4, degrade_process(resize_bak=True) from
# dataloaders/realsr_dataset.py; color_jitter_prob and gray_prob are 0.
OSEDIFF = dict(REALESRGAN, use_usm=False, resize_back=True, scale=4)

# cswry/SeeSR dataloaders/params_realesrgan.yml == csslc/PiSA-SR src/datasets/params.yml (the milder column),
# run by the same degrade_process(resize_bak=True) without USM (PiSA-SR src/datasets/realesrgan.py is
# OSEDiff's file; SeeSR basicsr/data/ram_tag_singleImage_dataset.py also uses resize_bak=True).
SEESR = dict(
    OSEDIFF,
    resize_range=(0.3, 1.5), noise_range=(1, 15), poisson_scale_range=(0.05, 2.0), jpeg_range=(60, 95),
    second_blur_prob=0.5, resize_range2=(0.6, 1.2), noise_range2=(1, 12), poisson_scale_range2=(0.05, 1.0),
    jpeg_range2=(60, 100))

# cswry/OSEDiff dataloaders/params_codeformer.yml, pipeline of dataloaders/facesr_dataset.py (OSEDiff_Face):
# blur_kernel_size 41, kernel_list [iso, aniso], kernel_prob [0.5, 0.5], blur_sigma [1, 15],
# downsample_range [1, 30], noise_range [0, 20], jpeg_range [30, 100]; OpenCV JPEG, no final rounding.
CODEFORMER_FACE = dict(
    type='FaceDegradation',
    blur_kernel_size=41, kernel_list=('iso', 'aniso'), kernel_prob=(0.5, 0.5), blur_sigma=(1, 15),
    downsample_range=(1, 30), noise_range=(0, 20), jpeg_range=(30, 100),
    round_output=False, jpeg_backend='opencv', seed=0)

# sczhou/CodeFormer options/CodeFormer_stage2.yml run by basicsr/data/ffhq_blind_dataset.py:
# downsample_range [4, 30], jpeg_range [30, 80], final clip(round(255 x)) / 255.
CODEFORMER_STAGE2 = dict(CODEFORMER_FACE, downsample_range=(4, 30), jpeg_range=(30, 80), round_output=True)

PRESETS: Dict[str, dict] = {
    'realesrgan': REALESRGAN,
    'osediff': OSEDIFF,
    'seesr': SEESR,
    'codeformer_face': CODEFORMER_FACE,
    'codeformer_stage2': CODEFORMER_STAGE2,
}


def preset_config(name: str) -> dict:
    """A copy of the config dict of preset ``name``; ``KeyError`` listing the presets if unknown."""
    if name not in PRESETS:
        raise KeyError(f'unknown degradation preset {name!r}; available presets: {sorted(PRESETS)}')
    return copy.deepcopy(PRESETS[name])


def build_degradation(preset_or_cfg: Union[str, dict], **overrides) -> nn.Module:
    """Builds a degradation from a preset name or a registry config dict.

    Args:
        preset_or_cfg: a key of :data:`PRESETS` (e.g. ``'osediff'``), or a dict with ``type`` (a
            ``DEGRADATIONS`` name) and the constructor options, or ``{'preset': name, **overrides}``.
        overrides: options replacing the preset's or config's values (e.g. ``seed=rank``).

    Returns:
        the ``nn.Module`` (``RealESRGANDegradation`` or ``FaceDegradation``).
    """
    if isinstance(preset_or_cfg, str):
        cfg = preset_config(preset_or_cfg)
    else:
        cfg = copy.deepcopy(dict(preset_or_cfg))
        if 'preset' in cfg:
            cfg = dict(preset_config(cfg.pop('preset')), **cfg)
    cfg.update(overrides)
    return DEGRADATIONS.build(cfg)
