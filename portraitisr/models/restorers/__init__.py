"""Image restorers (``RESTORERS``) that blending baselines combine: general SR and face restorers."""
from .base_restorer import BaseImageRestorer
from .codeformer import CodeFormer, CodeFormerRestorer
from .osediff_restorer import OSEDiffRestorer
from .pisasr_restorer import PiSASRRestorer
from .portraitsr_restorer import PortraitSRRestorer
from .rrdbnet import RRDBNet, RealESRGANRestorer, load_restorer_weights
from .simple_restorers import BicubicRestorer, IdentityFaceRestorer
from portraitisr.utils.tiling import tiled_forward

__all__ = ['BaseImageRestorer', 'BicubicRestorer', 'IdentityFaceRestorer', 'RRDBNet', 'RealESRGANRestorer',
           'CodeFormer', 'CodeFormerRestorer', 'load_restorer_weights', 'tiled_forward', 'OSEDiffRestorer',
           'PortraitSRRestorer', 'PiSASRRestorer']
