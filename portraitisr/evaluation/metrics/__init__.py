"""Test metrics (``METRICS``): per-image :class:`ImageMetric` subclasses usable by the runner and by
``tools/eval_folders.py``, and the set metric :class:`FID`.

The learned no-reference metrics and DISTS/FID compute through pyiqa (an optional, non-commercial dependency,
imported only when such a metric is built)."""
from .base_metric import ImageMetric, quantize_8bit
from .face_region import FacePSNR, FaceRegionMetric, sample_landmarks
from .fid import FID, fid_against_stats, fid_between_folders
from .identity_metrics import IDA_DAEFR, IDA_VQFR, IDScore
from .lpips_metric import LPIPS
from .psnr import PSNR, psnr, rgb_to_y
from .pyiqa_metrics import CLIPIQA, DISTS, MANIQA, MUSIQ, NIQE
from .seam_score import SeamScore, seam_score
from .ssim import SSIM, ssim
from .vif import VIF, vif, vif_pixel

__all__ = ['ImageMetric', 'quantize_8bit', 'FacePSNR', 'FaceRegionMetric', 'sample_landmarks', 'FID',
           'fid_against_stats', 'fid_between_folders', 'IDA_DAEFR', 'IDA_VQFR', 'IDScore', 'LPIPS', 'PSNR', 'psnr',
           'rgb_to_y', 'CLIPIQA', 'DISTS', 'MANIQA', 'MUSIQ', 'NIQE', 'SeamScore', 'seam_score', 'SSIM', 'ssim', 'VIF',
           'vif', 'vif_pixel']
