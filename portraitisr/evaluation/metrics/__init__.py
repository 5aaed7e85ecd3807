from .psnr import PSNR, psnr, rgb_to_y

__all__ = ['PSNR', 'psnr', 'rgb_to_y']
