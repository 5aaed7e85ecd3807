"""Associative Texture Prior (ATP) of PortraitSR (paper 002, section "Associative Texture Prior", Eq. 4-6).

A learnable high-quality dictionary ``D in R^{N x C}`` (N = 512, C = 384, initialised from N(0, 0.02^2),
"Implementation Details") is filled by the HR reconstruction branch (Eq. 4) and read by the SR branch: every
spatial feature retrieves the entry of highest cosine similarity (Eq. 5), which is added residually (Eq. 6).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AssociativeTexturePrior(nn.Module):
    """``F B x C x h x w`` -> ``F + D[argmax_j cos(F_i, D_j)]`` of the same shape.

    The argmax has no gradient; the dictionary learns through the entries it adds (from the reconstruction
    loss, Eq. 13, and the SR losses) and the decorrelation loss (Eq. 14).
    """

    def __init__(self, num_entries: int = 512, channels: int = 384, init_std: float = 0.02) -> None:
        super().__init__()
        self.dictionary = nn.Parameter(torch.randn(num_entries, channels) * init_std)

    def similarity(self, features: Tensor) -> Tensor:
        """Eq. 5: ``B x C x h x w`` -> ``M_attn B x (h*w) x N`` cosine similarities in [-1, 1]."""
        flat = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
        return flat @ F.normalize(self.dictionary, dim=-1).t()

    def retrieve(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """Best entries ``B x C x h x w`` and their indices ``B x h x w`` (int64)."""
        b, c, h, w = features.shape
        indices = self.similarity(features).argmax(dim=-1)
        entries = self.dictionary[indices]  # B x hw x C
        return entries.transpose(1, 2).reshape(b, c, h, w), indices.reshape(b, h, w)

    def forward(self, features: Tensor) -> Tensor:
        entries, _ = self.retrieve(features)
        return features + entries.to(features.dtype)
