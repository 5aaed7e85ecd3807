"""Associative Texture Prior (ATP) of PortraitSR (AAAI 2026, section "Associative Texture Prior", Eq. 4-6).

A learnable high-quality dictionary ``D in R^{N x C}`` (N = 512, C = 384, initialised from N(0, 0.02^2),
"Implementation Details") is filled by the HR reconstruction branch (Eq. 4) and read by the SR branch: every
spatial feature retrieves the entry of highest cosine similarity (Eq. 5), which is added residually (Eq. 6).

The paper's Table 4 ("Effectiveness of ATP") compares this jointly trained dictionary with dictionaries learned
elsewhere ("HD-RF: a pretrained HD learned from an external dataset", "HD-Retrain: a retrained HD using a different
model architecture on the target dataset"). For those, :class:`AssociativeTexturePrior` holds a given
dictionary fixed (``dictionary=``).
"""
import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.weights import load_state_dict, resolve_file


class AssociativeTexturePrior(nn.Module):
    """``F B x C x h x w`` -> ``F + D[argmax_j cos(F_i, D_j)]`` of the same shape.

    The argmax has no gradient; the dictionary learns through the entries it adds (from the reconstruction
    loss, Eq. 13, and the SR losses) and the decorrelation loss (Eq. 14).

    Args:
        num_entries / channels / init_std: ``N``, ``C`` and the N(0, init_std^2) initialisation of ``D``.
        dictionary: a given ``N' x C'`` dictionary to hold fixed instead (Table 4's HD-RF / HD-Retrain): it is kept
            as a saved buffer, never trained, and ``num_entries`` / ``init_std`` are unused. An external dictionary
            may be narrower or wider than the latent (RestoreFormer's has 256 channels, the paper's latent 384);
            then a learnable bias-free linear map ``C' -> channels`` (``projection``) brings its entries to the
            latent width. The paper does not say how it matched the widths: this map is our choice.
    """

    def __init__(self, num_entries: int = 512, channels: int = 384, init_std: float = 0.02,
                 dictionary: Optional[Tensor] = None) -> None:
        super().__init__()
        self.projection: Optional[nn.Linear] = None
        self.frozen = dictionary is not None
        if dictionary is None:
            self.dictionary = nn.Parameter(torch.randn(num_entries, channels) * init_std)
            return
        if dictionary.ndim != 2 or not dictionary.is_floating_point():
            raise ValueError(f'a dictionary is a float N x C matrix, got shape {tuple(dictionary.shape)} '
                             f'{dictionary.dtype}')
        self.register_buffer('dictionary', dictionary.detach().float().clone())
        if dictionary.shape[1] != channels:
            self.projection = nn.Linear(dictionary.shape[1], channels, bias=False)

    def entries(self) -> Tensor:
        """The ``N x C`` entries that are matched and added (projected to the latent width if needed)."""
        return self.projection(self.dictionary) if self.projection is not None else self.dictionary

    def similarity(self, features: Tensor) -> Tensor:
        """Eq. 5: ``B x C x h x w`` -> ``M_attn B x (h*w) x N`` cosine similarities in [-1, 1]."""
        flat = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
        return flat @ F.normalize(self.entries().to(flat.dtype), dim=-1).t()

    def retrieve(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """Best entries ``B x C x h x w`` and their indices ``B x h x w`` (int64)."""
        b, c, h, w = features.shape
        indices = self.similarity(features).argmax(dim=-1)
        entries = self.entries()[indices]  # B x hw x C
        return entries.transpose(1, 2).reshape(b, c, h, w), indices.reshape(b, h, w)

    def forward(self, features: Tensor) -> Tensor:
        entries, _ = self.retrieve(features)
        return features + entries.to(features.dtype)


def load_dictionary(weights: Union[Tensor, str, 'os.PathLike[str]', dict], key: Optional[str] = None) -> Tensor:
    """An ``N x C`` dictionary from a tensor, or from a checkpoint found by the weight resolver (a path, a cached
    file name, or a URL + sha256 spec), read without unpickling code (safetensors or ``weights_only``).

    Args:
        weights: the tensor itself, or the weight spec of a checkpoint.
        key: the checkpoint key of the dictionary, e.g. ``'generator.atp.dictionary'`` (a top-level
            ``state_dict`` / ``params_ema`` / ``params`` dict is looked into). Without it the checkpoint must hold
            exactly one 2-D float tensor.
    """
    if isinstance(weights, Tensor):
        return weights
    path = resolve_file(weights)
    state = load_state_dict(path)
    for wrapper in ('state_dict', 'params_ema', 'params'):  # a training checkpoint nests its tensors once
        if isinstance(state.get(wrapper), dict) and (key is None or key not in state):
            state = state[wrapper]
            break
    if key is not None:
        if key not in state:
            close = sorted(k for k in state if k.split('.')[-1] == key.split('.')[-1])[:5]
            raise KeyError(f'{path} has no dictionary under {key!r}' + (f'; similar keys: {close}' if close else ''))
        return state[key]
    matrices = [k for k, v in state.items() if isinstance(v, Tensor) and v.ndim == 2 and v.is_floating_point()]
    if len(matrices) != 1:
        raise KeyError(f'{path} holds {len(matrices)} 2-D tensors ({matrices[:5]}); name the dictionary with '
                       'dictionary_key=')
    return state[matrices[0]]
