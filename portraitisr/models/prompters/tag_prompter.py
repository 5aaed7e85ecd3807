"""Tag-based prompts (OSEDiff's RAM / DAPE captions) from a tagger model or from files."""
from typing import List, Optional, Sequence

from torch import Tensor

from portraitisr.registry import PROMPTERS
from .base_prompter import BasePrompter


@PROMPTERS.register_module()
class TagPrompter(BasePrompter):
    """Prompts built from image tags: ``template.format(tags=', '.join(tags), prompt=prompt)``.

    The tags of an image come from ``tagger`` when one is configured (any module registered in
    ``PROMPTERS`` whose ``forward(images) -> list[list[str]]``, e.g. a RAM or DAPE tagger whose
    weights are present), otherwise from the image's metainfo under ``tags_key`` (tags computed
    offline, the usual way to train without running a 1.5B tagger at every step). An image with
    neither gets ``missing``: ``'error'``, or ``'empty'`` (no tags: the prompt is the user
    ``prompt`` alone).

    Defaults follow OSEDiff: the test-time prompt is ``f"{tags}, {prompt},"`` with an empty user
    prompt; in training the caption is the tags alone (``train_template='{tags}'``).

    ``trained_with_prompts`` defaults to True here (tag prompts exist for models trained on tags): the first
    batch that ends up with an empty prompt (``missing='empty'`` and no tags) logs one warning naming
    ``model.prompter.tagger`` and the dataset's ``tags`` (see :class:`BasePrompter`).
    """

    def __init__(self,
                 tagger: Optional[dict] = None,
                 tags_key: str = 'tags',
                 template: str = '{tags}, {prompt},',
                 train_template: str = '{tags}',
                 prompt: str = '',
                 missing: str = 'error',
                 trained_with_prompts: bool = True) -> None:
        super().__init__(trained_with_prompts)
        if missing not in ('error', 'empty'):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        self.tagger = PROMPTERS.build(tagger) if tagger is not None else None
        self.tags_key = tags_key
        self.template, self.train_template = template, train_template
        self.prompt, self.missing = prompt, missing

    def empty_prompt_advice(self) -> str:
        return ('Set `model.prompter.tagger` (OSEDiff and HeadsUp: RAM on the GT in training, DAPE on the LQ at '
                f'test time) or give the dataset per-image tags (`tags` / `tags_file`, metainfo key '
                f'{self.tags_key!r}).')

    def image_tags(self, images: Tensor, metainfo: Optional[Sequence[dict]]) -> List[List[str]]:
        if self.tagger is not None:
            return [list(tags) for tags in self.tagger(images)]
        metainfo = metainfo or [{}] * images.shape[0]
        tags = []
        for info in metainfo:
            value = info.get(self.tags_key)
            if value is None:
                if self.missing == 'error':
                    raise KeyError(f'No tags for {info.get("path", "an image")}: configure a tagger '
                                   f'or provide `{self.tags_key}` in the dataset metainfo')
                value = []
            tags.append([value] if isinstance(value, str) else list(value))
        return tags

    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        template = self.train_template if self.training else self.template
        return [template.format(tags=', '.join(tags), prompt=self.prompt) if tags else self.prompt
                for tags in self.image_tags(images, metainfo)]
