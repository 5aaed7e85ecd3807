from .face_fidelity_loss import FaceFidelityLoss
from .gan_loss import GANLoss
from .identity_loss import IdentityLoss, identity_loss_terms
from .lpips_loss import LPIPSLoss, build_lpips_network

__all__ = ['FaceFidelityLoss', 'GANLoss', 'IdentityLoss', 'identity_loss_terms', 'LPIPSLoss', 'build_lpips_network']
