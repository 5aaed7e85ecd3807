"""The identity-extractor contract: aligned face crops in, L2-normalised embeddings out.

Every extractor:

* takes ``faces``: ``B x 3 x H x W`` RGB float in [0, 1], aligned to the ArcFace 112 template (any size: each
  extractor resizes to its own ``input_size`` and does its own colour order and normalisation);
* returns ``B x embedding_dim`` float32, L2-normalised along dim 1;
* is frozen (``requires_grad_(False)``) and stays in eval mode even when ``.train()`` is called, so BatchNorm
  statistics and dropout never change inside a training loop; gradients still flow to the *input* (an identity
  loss back-propagates through it to the restored image);
* loads ``weights=`` through :func:`portraitisr.weights.resolve_file` (a path, a file name looked up
  in ``PORTRAITISR_HOME`` and the caches, a URL, or a dict); a missing file raises ``WeightsNotFoundError`` naming it;
* carries its own verification threshold (:attr:`~BaseIdentityExtractor.verification_threshold`, on the cosine
  similarity of its normalised embeddings, with :attr:`~BaseIdentityExtractor.verification_source` saying where the
  number comes from): similarities of different models live on different scales (two different people score 0.88
  under dlib's descriptor, far above CVLFace's 0.65), so a threshold belongs to the model that produced the
  embeddings, never to the code that compares them.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from portraitisr.weights import load_module_weights

__all__ = ['BaseIdentityExtractor', 'similarity']


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two ``B x D`` (or ``D``) embedding batches, row by row (``B``)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


class BaseIdentityExtractor(nn.Module, metaclass=ABCMeta):
    """Frozen, eval-locked face-recognition network: ``forward(faces) -> B x embedding_dim`` unit vectors.

    Subclasses set ``input_size`` and ``embedding_dim``, implement :meth:`preprocess` (resize + colour +
    normalisation, differentiable) and :meth:`embed` (the network), and call :meth:`_finish_init` at the end of
    ``__init__`` (loads ``weights``, freezes, switches to eval).

    Args:
        antialias: antialias when resizing down to ``input_size`` (``F.interpolate(..., antialias=True)``).
            Reference evaluation scripts often resize without it; set ``False`` to reproduce them.
    """

    #: side of the square network input, pixels
    input_size: int = 112
    #: length of the embedding
    embedding_dim: int = 512
    #: two faces are the same person when the cosine similarity of their embeddings is above this; None where no
    #: published value exists (then a caller must choose one explicitly). Subclasses cite the source in a comment.
    verification_threshold: Optional[float] = None
    #: where :attr:`verification_threshold` comes from, in words (written into the dataset builder's report)
    verification_source: str = 'no published verification threshold'

    def __init__(self, antialias: bool = True) -> None:
        super().__init__()
        self.antialias = bool(antialias)
        self.weights_path: Optional[str] = None

    # ----------------------------------------------------------------------------------------------------------
    def _finish_init(self, weights: Any = None, **load_kwargs: Any) -> None:
        if weights is not None:
            self.weights_path = load_module_weights(self, weights, **load_kwargs)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> 'BaseIdentityExtractor':
        """Stays in eval mode whatever ``mode`` is: the extractor is a fixed measuring instrument."""
        return super().train(False)

    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def check_faces(faces: torch.Tensor) -> None:
        if not isinstance(faces, torch.Tensor) or faces.dim() != 4 or faces.shape[1] != 3:
            shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
            raise ValueError(f'faces must be a B x 3 x H x W RGB tensor in [0, 1], got {shape}')

    def resize(self, x: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        """Bilinear resize (``align_corners=False``) to ``size`` (default ``input_size``); no-op at that size."""
        size = size or self.input_size
        if x.shape[-2:] == (size, size):
            return x
        down = x.shape[-2] > size or x.shape[-1] > size
        return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False,
                             antialias=self.antialias and down)

    @abstractmethod
    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """RGB faces in [0, 1] -> this network's input (size, colour order, normalisation)."""

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> raw ``B x D`` embedding (normalised by ``forward``)."""

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        self.check_faces(faces)
        param = next(self.parameters(), None)
        if param is not None:
            faces = faces.to(param.dtype)
        features = self.embed(self.preprocess(faces))
        return F.normalize(features.float(), dim=1)

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of two embedding batches, row by row."""
        return similarity(a, b)

    @classmethod
    def verify(cls, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Whether two ``B x D`` (or ``D``) embedding batches of this model show the same person, row by row:
        cosine similarity strictly above :attr:`verification_threshold`. Raises ``ValueError`` for a model without
        a published threshold."""
        if cls.verification_threshold is None:
            raise ValueError(f'{cls.__name__} has no published verification threshold ({cls.verification_source}); '
                             'compare similarity() with a threshold you chose')
        return similarity(a, b) > cls.verification_threshold

    def extra_repr(self) -> str:
        return f'input_size={self.input_size}, embedding_dim={self.embedding_dim}'
