"""Prompters: where the text condition of a one-step SD restorer comes from.

A prompter maps a batch (images and their metainfo) to one prompt string per image; the text
encoder turns strings into embeddings and caches constant ones. OSEDiff trains with RAM tags of
the GT and tests with DAPE tags of the LQ; PiSA-SR uses the empty prompt; S3Diff a fixed one
(cswry/OSEDiff ``train_osediff.py`` / ``test_osediff.py``; csslc/PiSA-SR ``test_pisasr.py``).
"""
import logging
from abc import ABCMeta, abstractmethod
from typing import List, Optional, Sequence

from mmengine.logging import print_log
from torch import Tensor, nn


def is_empty_prompt(prompt: str) -> bool:
    """True for a prompt with no words: ``''``, or only the separators of a template (``', ,'``)."""
    return not prompt.strip(' ,')


def _warn_once_on_empty_prompts(prompter: 'BasePrompter', args, prompts: List[str]) -> None:
    """Forward hook of every prompter: an empty prompt for a model trained with prompts is a silent change of
    conditioning (OSEDiff and HeadsUp were trained on tags), so say so once, naming what to configure."""
    if not prompter.trained_with_prompts or prompter._warned_empty_prompt or not isinstance(prompts, (list, tuple)):
        return
    empty = sum(isinstance(p, str) and is_empty_prompt(p) for p in prompts)  # taggers return lists of tags
    if empty:
        prompter._warned_empty_prompt = True
        print_log(f'{type(prompter).__name__}: {empty} of {len(prompts)} prompts are empty, but the model was '
                  f'trained with prompts, so its results will differ from the paper\'s. '
                  f'{prompter.empty_prompt_advice()} (warned once; set `model.prompter.trained_with_prompts='
                  'False` if empty prompts are intended)', logger='current', level=logging.WARNING)


class BasePrompter(nn.Module, metaclass=ABCMeta):
    """``forward(images, metainfo) -> list[str]`` with ``len == images.shape[0]``.

    ``images``: ``B x 3 x H x W`` in [0, 1] (the GT in training when ``use_gt_in_training``, the LQ
    otherwise); ``metainfo``: one dict per image (file path, precomputed tags, ...).

    Args:
        trained_with_prompts: the model this prompter feeds was trained with real prompts (tags, captions). Then
            an empty prompt is a mismatch: the first batch with one logs a warning (once per prompter) that names
            the config key to set (:meth:`empty_prompt_advice`). ``None`` keeps the class default
            (``False`` here; ``True`` for :class:`TagPrompter`).
    """

    #: OSEDiff tags the GT during training (RAM on ``x_tgt``) and the LQ at test time.
    use_gt_in_training: bool = True
    #: Class default of ``trained_with_prompts``.
    trained_with_prompts: bool = False

    def __init__(self, trained_with_prompts: Optional[bool] = None) -> None:
        super().__init__()
        if trained_with_prompts is not None:
            self.trained_with_prompts = bool(trained_with_prompts)
        self._warned_empty_prompt = False
        self.register_forward_hook(_warn_once_on_empty_prompts)

    def empty_prompt_advice(self) -> str:
        """What to configure so that prompts are not empty (shown in the warning)."""
        return 'Configure `model.prompter` to produce the prompts the model was trained with.'

    @abstractmethod
    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        """One prompt per image."""
