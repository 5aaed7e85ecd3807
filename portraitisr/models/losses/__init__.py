from .face_fidelity_loss import FaceFidelityLoss
from .gan_loss import GANLoss
from .identity_loss import IdentityLoss, identity_loss_terms
from .lpips_loss import LPIPSLoss, build_lpips_network
from .portraitsr_losses import (PORTRAITSR_LOSS_WEIGHTS, DictionaryDecorrelationLoss, VGGPerceptualLoss,
                                dictionary_decorrelation_loss)

__all__ = ['FaceFidelityLoss', 'GANLoss', 'IdentityLoss', 'identity_loss_terms', 'LPIPSLoss', 'build_lpips_network',
           'PORTRAITSR_LOSS_WEIGHTS', 'DictionaryDecorrelationLoss', 'VGGPerceptualLoss',
           'dictionary_decorrelation_loss']
