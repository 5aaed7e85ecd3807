"""Models. Importing this package registers every component (the registries' lazy location)."""
from . import algorithms, backbones, data_preprocessors, losses, prompters, text_encoders
from .algorithms import OSEDiff, OneStepRestorer, VSDRegularizer
from .backbones import OneStepSD
from .data_preprocessors import SRDataPreprocessor
from .losses import LPIPSLoss
from .prompters import FixedPrompter, NullPrompter, TagPrompter
from .text_encoders import CLIPTextEncoder

__all__ = ['algorithms', 'backbones', 'data_preprocessors', 'losses', 'prompters', 'text_encoders',
           'OSEDiff', 'OneStepRestorer', 'VSDRegularizer', 'OneStepSD', 'SRDataPreprocessor',
           'LPIPSLoss', 'FixedPrompter', 'NullPrompter', 'TagPrompter', 'CLIPTextEncoder']
