"""Short metric names for command lines and tables (``psnr``, ``face_lpips``, ``ida_daefr`` ...).

Each name maps to a ``METRICS`` config; ``tools/eval_folders.py --metrics`` and the test tables use these names,
so a column means the same thing everywhere. ``OSEDIFF_TABLE`` is the column set of OSEDiff's (and HeadsUp's
Tables 1-2) whole-image comparisons.
"""
from typing import Dict, List

_FACE_DETECTOR = dict(type='DlibFaceDetector', model='hog', upsample_times=1)


def _face(metric: dict) -> dict:
    return dict(type='FaceRegionMetric', metric=metric, detector=_FACE_DETECTOR)


METRIC_PRESETS: Dict[str, dict] = {
    'psnr': dict(type='PSNR'),  # Y of YCbCr, as OSEDiff
    'psnr_rgb': dict(type='PSNR', test_y_channel=False),
    'ssim': dict(type='SSIM'),
    'ssim_rgb': dict(type='SSIM', test_y_channel=False),
    'vif': dict(type='VIF'),  # pixel-domain VIFp on Y, as PortraitSR's Table 5 (see docs/evaluation.md)
    'vif_gray': dict(type='VIF', channel='gray'),
    'vif_rgb': dict(type='VIF', channel='rgb'),
    'lpips': dict(type='LPIPS', net='alex'),
    'lpips_vgg': dict(type='LPIPS', net='vgg'),
    'dists': dict(type='DISTS'),
    'niqe': dict(type='NIQE'),
    'musiq': dict(type='MUSIQ'),
    'clipiqa': dict(type='CLIPIQA'),
    'maniqa': dict(type='MANIQA'),
    'fid': dict(type='FID'),
    'id_score': dict(type='IDScore', detector=_FACE_DETECTOR),
    'ida_daefr': dict(type='IDA_DAEFR', detector=_FACE_DETECTOR),
    'ida_vqfr': dict(type='IDA_VQFR', detector=_FACE_DETECTOR),
    'seam': dict(type='SeamScore', detector=_FACE_DETECTOR),
    'face_psnr': dict(type='FacePSNR', detector=_FACE_DETECTOR),
    'face_ssim': _face(dict(type='SSIM')),
    'face_lpips': _face(dict(type='LPIPS', net='alex')),
    'face_dists': _face(dict(type='DISTS')),
}

#: OSEDiff's table columns (its test_metrics.py), in its order
OSEDIFF_TABLE: List[str] = ['psnr', 'ssim', 'lpips', 'dists', 'clipiqa', 'niqe', 'musiq', 'maniqa']


def metric_config(name: str) -> dict:
    """The ``METRICS`` config of a preset name (case-insensitive); a clear error lists the names."""
    key = name.lower().replace('-', '_')
    if key not in METRIC_PRESETS:
        raise KeyError(f'unknown metric {name!r}; choose from {", ".join(sorted(METRIC_PRESETS))}, or give a '
                       'METRICS config in a config file')
    return dict(METRIC_PRESETS[key])
