"""RAM's tagging head: a Query2Label-style decoder whose queries are the tag embeddings.

RAM (Zhang et al., "Recognize Anything: A Strong Image Tagging Model", 2023, section 3.1) builds its
"image-tag recognition decoder" as a ``BertModel`` (``ram/configs/q2l_config.json``: hidden 768, 2 layers, 4 heads,
FFN 3072, LayerNorm eps 1e-12, GELU; ``encoder_width`` set to 512 in ``ram/models/ram_lora.py``), then deletes
its embeddings and every self-attention (``RAMLora.del_selfattention``) and calls it with ``mode='tagging'``: each
layer is cross-attention from the tag queries to the image tokens, then the feed-forward block
(``BertLayer.forward`` in ``ram/models/bert_lora.py``). The image attention mask is all ones, which
``invert_attention_mask`` turns into an additive 0, so no mask is applied here.

This module is that computation with the same parameter names under ``tagging_head.``:
``encoder.layer.{i}.crossattention.self.{query,key,value}``, ``encoder.layer.{i}.crossattention.output.{dense,
LayerNorm}``, ``encoder.layer.{i}.intermediate.dense``, ``encoder.layer.{i}.output.{dense,LayerNorm}``.
transformers' ``BertModel`` is not used: its ``BertLayer`` always runs self-attention before cross-attention and
always owns embeddings, so RAM's deleted parts would have to be removed after construction and its forward
replaced; transformers 5 also dropped ``get_head_mask``, which RAM's copied ``BertModel.forward`` calls. Dropout
(0.1 in the config) only acts in training; the tagger always runs as in ``eval()``.

DAPE puts loralib LoRA (rank 8) on ``query`` and ``key`` of these cross-attentions (``bert_lora.py``).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .lora_linear import LoRALinear

__all__ = ['TaggingHead']


def _linear(in_features: int, out_features: int, lora_rank: int) -> nn.Module:
    return LoRALinear(in_features, out_features, lora_rank) if lora_rank > 0 else nn.Linear(in_features, out_features)


class CrossAttentionProjections(nn.Module):
    """``query`` (hidden -> hidden), ``key`` / ``value`` (image width -> hidden) and the head split."""

    def __init__(self, hidden_size: int, encoder_width: int, num_heads: int, lora_rank: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f'hidden_size={hidden_size} is not divisible by num_heads={num_heads}')
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = _linear(hidden_size, hidden_size, lora_rank)
        self.key = _linear(encoder_width, hidden_size, lora_rank)
        self.value = nn.Linear(encoder_width, hidden_size)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        """``queries``: ``B x T x hidden``; ``image``: ``B x N x encoder_width`` -> ``B x T x hidden``."""
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(image)), self._heads(self.value(image))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = scores.softmax(dim=-1) @ v
        b, _, t, _ = context.shape
        return context.permute(0, 2, 1, 3).reshape(b, t, -1)


class DenseLayerNorm(nn.Module):
    """BERT's output sub-layer: ``LayerNorm(dense(x) + residual)``."""

    def __init__(self, in_features: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    """``self`` (the projections and attention) and ``output`` (dense + residual LayerNorm), BERT's naming."""

    def __init__(self, hidden_size: int, encoder_width: int, num_heads: int, eps: float, lora_rank: int) -> None:
        super().__init__()
        self.self = CrossAttentionProjections(hidden_size, encoder_width, num_heads, lora_rank)
        self.output = DenseLayerNorm(hidden_size, hidden_size, eps)

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        return self.output(self.self(queries, image), queries)


class Intermediate(nn.Module):
    """``GELU(dense(x))`` (transformers' ``ACT2FN['gelu']``: the exact, erf-based GELU)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class TaggingLayer(nn.Module):
    """Cross-attention of the tag queries to the image tokens, then the feed-forward block."""

    def __init__(self, hidden_size: int, encoder_width: int, num_heads: int, intermediate_size: int, eps: float,
                 lora_rank: int) -> None:
        super().__init__()
        self.crossattention = CrossAttention(hidden_size, encoder_width, num_heads, eps, lora_rank)
        self.intermediate = Intermediate(hidden_size, intermediate_size)
        self.output = DenseLayerNorm(intermediate_size, hidden_size, eps)

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        attended = self.crossattention(queries, image)
        return self.output(self.intermediate(attended), attended)


class TaggingEncoder(nn.Module):
    """The ``encoder.layer`` list (BERT's naming)."""

    def __init__(self, layers: list[TaggingLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class TaggingHead(nn.Module):
    """``queries`` ``B x T x hidden`` and image tokens ``B x N x encoder_width`` -> ``B x T x hidden``.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size, layer_norm_eps: RAM's ``q2l_config.json``
            (768, 2, 4, 3072, 1e-12).
        encoder_width: width of the image tokens (RAM: 512, the output of ``image_proj``).
        lora_rank: > 0 puts DAPE's LoRA on ``query`` and ``key`` (DAPE: 8).
    """

    def __init__(self, hidden_size: int = 768, num_layers: int = 2, num_heads: int = 4,
                 intermediate_size: int = 3072, encoder_width: int = 512, layer_norm_eps: float = 1e-12,
                 lora_rank: int = 0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.encoder = TaggingEncoder([
            TaggingLayer(hidden_size, encoder_width, num_heads, intermediate_size, layer_norm_eps, lora_rank)
            for _ in range(num_layers)])

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        for layer in self.encoder.layer:
            queries = layer(queries, image)
        return queries
