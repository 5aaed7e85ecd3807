from .face_psnr import FacePSNR
from .psnr import PSNR, psnr, rgb_to_y

__all__ = ['FacePSNR', 'PSNR', 'psnr', 'rgb_to_y']
