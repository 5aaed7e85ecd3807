"""Prompters that give every image the same text: the null prompt and a fixed prompt."""
from typing import List, Optional, Sequence

from torch import Tensor

from portraitisr.registry import PROMPTERS
from .base_prompter import BasePrompter


@PROMPTERS.register_module()
class FixedPrompter(BasePrompter):
    """The same prompt for every image, e.g. S3Diff's "A high-resolution, 8K, ultra-realistic
    image with sharp focus, vibrant colors, and natural lighting.".

    ``trained_with_prompts`` (default False): set it when the model was trained with prompts, so that an empty
    ``prompt`` warns (see :class:`BasePrompter`).
    """

    def __init__(self, prompt: str = '', trained_with_prompts: bool = False) -> None:
        super().__init__(trained_with_prompts)
        if not isinstance(prompt, str):
            raise TypeError(f'prompt must be a string, got {type(prompt).__name__}')
        self.prompt = prompt

    def empty_prompt_advice(self) -> str:
        return 'Set `model.prompter.prompt`.'

    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        return [self.prompt] * images.shape[0]

    def extra_repr(self) -> str:
        return f'prompt={self.prompt!r}'


@PROMPTERS.register_module()
class NullPrompter(FixedPrompter):
    """The empty prompt (PiSA-SR at inference, the unconditional branch of classifier-free
    guidance): empty by intent, so it never warns."""

    def __init__(self) -> None:
        super().__init__('')
