from . import metrics
from .metrics import PSNR

__all__ = ['metrics', 'PSNR']
