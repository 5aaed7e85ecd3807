"""PortraitSR face super-resolution network (PortraitSR, AAAI 2026): backbone, SSP, ATP, HPF and the whole network."""
from .associative_texture_prior import AssociativeTexturePrior
from .backbone import FaceSRDecoder, FaceSREncoder
from .holistic_prior_fusion import ChannelSpatialAttention, HolisticPriorFusion
from .portraitsr_net import PortraitSRNet
from .sketching_structure_prior import ParsingDecoder, SketchingStructurePrior
from .transformer_blocks import TransformerBlock

__all__ = ['AssociativeTexturePrior', 'FaceSRDecoder', 'FaceSREncoder', 'ChannelSpatialAttention',
           'HolisticPriorFusion', 'PortraitSRNet', 'ParsingDecoder', 'SketchingStructurePrior', 'TransformerBlock']
