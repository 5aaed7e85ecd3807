"""Prompters that give every image the same text: the null prompt and a fixed prompt."""
from typing import List, Optional, Sequence

from torch import Tensor

from portraitisr.registry import PROMPTERS
from .base_prompter import BasePrompter


@PROMPTERS.register_module()
class FixedPrompter(BasePrompter):
    """The same prompt for every image, e.g. S3Diff's "A high-resolution, 8K, ultra-realistic
    image with sharp focus, vibrant colors, and natural lighting."."""

    def __init__(self, prompt: str = '') -> None:
        super().__init__()
        if not isinstance(prompt, str):
            raise TypeError(f'prompt must be a string, got {type(prompt).__name__}')
        self.prompt = prompt

    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        return [self.prompt] * images.shape[0]

    def extra_repr(self) -> str:
        return f'prompt={self.prompt!r}'


@PROMPTERS.register_module()
class NullPrompter(FixedPrompter):
    """The empty prompt (PiSA-SR at inference, the unconditional branch of classifier-free
    guidance)."""

    def __init__(self) -> None:
        super().__init__('')
