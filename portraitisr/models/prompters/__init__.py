from .base_prompter import BasePrompter
from .constant_prompters import FixedPrompter, NullPrompter
from .tag_prompter import TagPrompter

__all__ = ['BasePrompter', 'FixedPrompter', 'NullPrompter', 'TagPrompter']
