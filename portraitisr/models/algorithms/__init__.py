from .authface import AuthFace
from .authface_facial_terms import FacialLossTerms
from .authface_finetune import AuthFaceFineTune
from .blending_restorer import BlendingDataPreprocessor, BlendingRestorer
from .color_fix import adain_color_fix
from .headsup import HeadsUp
from .one_step_restorer import OneStepRestorer
from .osediff import OSEDIFF_NEGATIVE_PROMPT, OSEDiff
from .pisasr import PISASR_NEGATIVE_PROMPT, PiSASR
from .portraitsr import PortraitSR, PortraitSRDataPreprocessor
from .vsd_regularizer import VSDRegularizer, vsd_loss

__all__ = ['OneStepRestorer', 'OSEDiff', 'HeadsUp', 'OSEDIFF_NEGATIVE_PROMPT', 'VSDRegularizer', 'vsd_loss',
           'adain_color_fix', 'BlendingDataPreprocessor', 'BlendingRestorer',
           'PortraitSR', 'PortraitSRDataPreprocessor', 'PiSASR', 'PISASR_NEGATIVE_PROMPT', 'AuthFace',
           'AuthFaceFineTune', 'FacialLossTerms']
