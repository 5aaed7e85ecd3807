"""The interface that blending baselines combine: an image goes in, a restored image comes out."""
from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class BaseImageRestorer(nn.Module, metaclass=ABCMeta):
    """An image-to-image restorer: a general SR model (``scale`` 2 or 4) or a face restorer (``scale`` 1 on
    aligned face crops).

    Subclasses implement :meth:`restore`; ``forward`` checks the input and clamps the output. Restorers are
    inference-only: they are built in eval mode and ``train()`` keeps them there.

    Attributes:
        scale: output size / input size.
        face_size: the side of the aligned crop a face restorer expects (``None`` for general SR).
    """

    scale: int = 1
    face_size = None

    def train(self, mode: bool = True) -> 'BaseImageRestorer':
        return super().train(False)

    def _finish_init(self, pretrained: bool, weights: Any, what: str = 'weights') -> None:
        """End of a subclass ``__init__``: refuse ``weights`` given with ``pretrained=False`` (one of the two is a
        mistake), then freeze the restorer in eval mode."""
        if not pretrained and weights is not None:
            raise ValueError(f'{what} given with pretrained=False; drop one of them')
        self.requires_grad_(False)
        super().train(False)

    @abstractmethod
    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x (scale*H) x (scale*W)`` RGB, about [0, 1]."""

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x (scale*H) x (scale*W)`` RGB in [0, 1]."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f'{type(self).__name__} expects B x 3 x H x W RGB, got {tuple(image.shape)}')
        if self.face_size is not None and image.shape[-2:] != (self.face_size, self.face_size):
            raise ValueError(f'{type(self).__name__} restores aligned {self.face_size}x{self.face_size} faces, '
                             f'got {tuple(image.shape[-2:])}')
        return self.restore(image).clamp(0, 1)
