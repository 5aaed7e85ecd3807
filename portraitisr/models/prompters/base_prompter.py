"""Prompters: where the text condition of a one-step SD restorer comes from.

A prompter maps a batch (images and their metainfo) to one prompt string per image; the text
encoder turns strings into embeddings and caches constant ones. OSEDiff trains with RAM tags of
the GT and tests with DAPE tags of the LQ; PiSA-SR uses the empty prompt; S3Diff a fixed one
(shared/reference/osediff.md, section 7).
"""
from abc import ABCMeta, abstractmethod
from typing import List, Optional, Sequence

from torch import Tensor, nn


class BasePrompter(nn.Module, metaclass=ABCMeta):
    """``forward(images, metainfo) -> list[str]`` with ``len == images.shape[0]``.

    ``images``: ``B x 3 x H x W`` in [0, 1] (the GT in training when ``use_gt_in_training``, the LQ
    otherwise); ``metainfo``: one dict per image (file path, precomputed tags, ...).
    """

    #: OSEDiff tags the GT during training (RAM on ``x_tgt``) and the LQ at test time.
    use_gt_in_training: bool = True

    @abstractmethod
    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        """One prompt per image."""
