"""Models. Importing this package registers every component (the registries' lazy location)."""
from . import (algorithms, backbones, data_preprocessors, discriminators, losses, prompters, restorers, taggers,
               text_encoders)
from .algorithms import HeadsUp, OSEDiff, OneStepRestorer, VSDRegularizer
from .backbones import OneStepSD
from .data_preprocessors import PortraitDataPreprocessor, SRDataPreprocessor
from .discriminators import FacePatchDiscriminator
from .losses import LPIPSLoss
from .prompters import FixedPrompter, NullPrompter, TagPrompter
from .taggers import DAPETagger, RAMTagger
from .text_encoders import CLIPTextEncoder

__all__ = ['algorithms', 'backbones', 'data_preprocessors', 'discriminators', 'losses', 'prompters', 'restorers',
           'taggers', 'text_encoders',
           'HeadsUp', 'OSEDiff', 'OneStepRestorer', 'VSDRegularizer', 'OneStepSD',
           'PortraitDataPreprocessor', 'SRDataPreprocessor', 'FacePatchDiscriminator',
           'LPIPSLoss', 'FixedPrompter', 'NullPrompter', 'TagPrompter', 'DAPETagger', 'RAMTagger', 'CLIPTextEncoder']
