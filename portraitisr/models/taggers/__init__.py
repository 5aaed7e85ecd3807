"""Image taggers: RAM and DAPE, whose tags are the prompts of OSEDiff and HeadsUp.

Registered in ``PROMPTERS`` (``TagPrompter(tagger=dict(type='DAPETagger'))``): a tagger's
``forward(images) -> list[list[str]]`` takes ``B x 3 x H x W`` RGB in [0, 1].
"""
from .lora_linear import LoRALinear
from .ram_checkpoint import RAM_DERIVED_BUFFERS, RAM_UNUSED_PREFIXES, dape_state_dict, ram_state_dict
from .ram_preprocess import ram_preprocess
from .ram_tagger import (DAPE_WEIGHTS, RAM_TAG_LIST, RAM_TAG_THRESHOLDS, RAM_TAGGING_HEAD, RAM_WEIGHTS, SWIN_L_384,
                         DAPETagger, RAMTagger)
from .swin_transformer import SwinTransformer
from .tag_vocabulary import class_thresholds, read_tag_list, read_thresholds
from .tagging_head import TaggingHead

__all__ = ['LoRALinear', 'RAM_DERIVED_BUFFERS', 'RAM_UNUSED_PREFIXES', 'dape_state_dict', 'ram_state_dict',
           'ram_preprocess', 'DAPE_WEIGHTS', 'RAM_TAG_LIST', 'RAM_TAG_THRESHOLDS', 'RAM_TAGGING_HEAD', 'RAM_WEIGHTS',
           'SWIN_L_384', 'DAPETagger', 'RAMTagger', 'SwinTransformer', 'class_thresholds', 'read_tag_list',
           'read_thresholds', 'TaggingHead']
