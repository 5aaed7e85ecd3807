from .face_fidelity_loss import FaceFidelityLoss
from .gan_loss import GANLoss
from .identity_loss import IdentityLoss, identity_loss_terms
from .lpips_loss import LPIPSLoss, build_lpips_network
from .portraitsr_losses import (PORTRAITSR_LOSS_WEIGHTS, DictionaryDecorrelationLoss, VGGPerceptualLoss,
                                dictionary_decorrelation_loss)
from .time_aware_facial_loss import (TimeAwareFacialLoss, ddim_predicted_x0, facial_component_boxes,
                                     logit_normal_weight, normalized_time)

__all__ = ['FaceFidelityLoss', 'GANLoss', 'IdentityLoss', 'identity_loss_terms', 'LPIPSLoss', 'build_lpips_network',
           'PORTRAITSR_LOSS_WEIGHTS', 'DictionaryDecorrelationLoss', 'VGGPerceptualLoss',
           'dictionary_decorrelation_loss', 'TimeAwareFacialLoss', 'ddim_predicted_x0', 'facial_component_boxes',
           'logit_normal_weight', 'normalized_time']
