"""A linear layer with loralib's LoRA parameter layout (``lora.Linear`` and ``lora.MergedLinear``).

DAPE (SeeSR's degradation-aware RAM) is RAM plus loralib 0.1.2 LoRA on two kinds of layers
(cswry/OSEDiff ``ram/models/swin_transformer_lora.py`` and ``bert_lora.py``):

* Swin ``attn.qkv = lora.MergedLinear(dim, 3 * dim, r=8, enable_lora=[True, False, True])``: one LoRA pair for the
  query rows and one for the value rows, none for the key rows. ``lora_A`` is ``(r * 2) x dim`` (the two groups'
  ``A`` stacked), ``lora_B`` is ``(2 * dim) x r`` (the two groups' ``B`` stacked);
* BERT ``query`` / ``key = lora.Linear(in, out, r=8)``: ``lora_A`` is ``r x in``, ``lora_B`` is ``out x r``; the same
  as a ``MergedLinear`` with ``enable_lora=[True]``.

The weight update of group ``g`` is ``lora_B[g] @ lora_A[g] * scaling`` added to that group's rows of ``weight``
(loralib's ``merge_AB`` computes the same product with a grouped ``conv1d``); ``scaling = lora_alpha / r`` with
loralib's default ``lora_alpha = 1``, so ``1 / 8`` for DAPE.

Unlike loralib this layer never adds the update into ``weight`` in place (loralib does so in ``.eval()`` and undoes
it in ``.train()``, which makes ``state_dict()`` depend on the mode): the effective weight is formed in
``forward``, so the parameters always hold what was loaded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['LoRALinear']


class LoRALinear(nn.Module):
    """``y = x (W + scaling * dW)^T + b`` with loralib's ``weight``, ``bias``, ``lora_A``, ``lora_B`` parameters.

    Args:
        in_features, out_features: as ``nn.Linear``.
        rank: LoRA rank ``r`` (> 0).
        alpha: loralib's ``lora_alpha``; ``scaling = alpha / rank``.
        enable_lora: which of the ``len(enable_lora)`` equal row groups of ``weight`` get a LoRA pair
            (``(True,)``: the whole matrix, loralib ``Linear``; ``(True, False, True)``: query and value rows of a
            fused qkv projection, loralib ``MergedLinear``).
        bias: whether the layer has a bias.

    ``lora_B`` starts at zero (loralib's initialisation), so a fresh layer computes the plain linear map.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 1.0,
                 enable_lora: Sequence[bool] = (True,), bias: bool = True) -> None:
        super().__init__()
        enable_lora = tuple(bool(e) for e in enable_lora)
        if rank <= 0 or not any(enable_lora):
            raise ValueError(f'LoRALinear needs rank > 0 and at least one enabled group, got rank={rank}, '
                             f'enable_lora={enable_lora}')
        if out_features % len(enable_lora):
            raise ValueError(f'out_features={out_features} is not divisible into {len(enable_lora)} groups')
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.scaling, self.enable_lora = rank, alpha / rank, enable_lora
        groups, group_rows = sum(enable_lora), out_features // len(enable_lora)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.lora_A = nn.Parameter(torch.empty(rank * groups, in_features))
        self.lora_B = nn.Parameter(torch.zeros(group_rows * groups, rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation for ``weight``/``bias``, loralib's for ``lora_A`` (kaiming) and ``lora_B`` (0)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """``out_features x in_features``: ``scaling * B_g @ A_g`` in the rows of each enabled group, 0 elsewhere."""
        groups = sum(self.enable_lora)
        group_rows = self.out_features // len(self.enable_lora)
        a = self.lora_A.view(groups, self.rank, self.in_features)
        b = self.lora_B.view(groups, group_rows, self.rank)
        update = torch.bmm(b, a) * self.scaling  # groups x group_rows x in
        if groups == len(self.enable_lora):
            return update.reshape(self.out_features, self.in_features)
        delta = update.new_zeros(len(self.enable_lora), group_rows, self.in_features)
        delta[list(self.enable_lora)] = update
        return delta.view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight + self.delta_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, '
                f'scaling={self.scaling:g}, enable_lora={self.enable_lora}, bias={self.bias is not None}')
