"""SDXL's two frozen text encoders: cross-attention states and the pooled ``text_embeds``.

Stable Diffusion XL (Podell et al. 2023; diffusers ``StableDiffusionXLPipeline.encode_prompt``) encodes a prompt
with OpenAI CLIP ViT-L (``text_encoder``, ``CLIPTextModel``) and OpenCLIP ViT-bigG (``text_encoder_2``,
``CLIPTextModelWithProjection``), takes the penultimate hidden state of each, concatenates them along the feature
axis (``768 + 1280 = 2048``, the UNet's ``cross_attention_dim``), and passes the second encoder's projected pooled
output (1280) to the UNet's added embedding as ``text_embeds``. Each encoder is a
:class:`~portraitisr.models.text_encoders.CLIPTextEncoder` (its own tokenizer, cache and frozen weights).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from portraitisr.registry import TEXT_ENCODERS
from .clip_text_encoder import CLIPTextEncoder


@TEXT_ENCODERS.register_module()
class SDXLTextEncoder(nn.Module):
    """``forward(prompts) -> B x 77 x (D1 + D2)``; ``forward_with_pooled(prompts) -> (states, B x P2 pooled)``.

    Args:
        pretrained: an SDXL folder or hub id (``tokenizer/``, ``text_encoder/``, ``tokenizer_2/``,
            ``text_encoder_2/``), resolved offline as every pretrained folder.
        text_encoder_cfg / text_encoder_2_cfg: inline ``CLIPTextConfig`` kwargs of the two encoders (random
            weights; tests and debug configs); ``text_encoder_2_cfg``'s ``projection_dim`` is the pooled width.
        tokenizer: tokenizer folder for inline configs (default: the bundled CLIP BPE, padded with
            ``<|endoftext|>`` for the first encoder and ``!`` for the second, as SDXL's two tokenizers).
        dtype / cache_size: as :class:`CLIPTextEncoder`.
        init_seed: seed of the first inline encoder (the second uses ``init_seed + 1``).
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 text_encoder_cfg: Optional[dict] = None,
                 text_encoder_2_cfg: Optional[dict] = None,
                 tokenizer: Optional[str] = None,
                 dtype: str = 'float32',
                 cache_size: int = 1024,
                 init_seed: int = 0) -> None:
        super().__init__()
        if pretrained is None and (text_encoder_cfg is None or text_encoder_2_cfg is None):
            raise ValueError('SDXLTextEncoder needs `pretrained` or both `text_encoder_cfg` and `text_encoder_2_cfg`')
        common = dict(pretrained=pretrained, tokenizer=tokenizer, dtype=dtype, cache_size=cache_size,
                      hidden_state='penultimate')
        self.encoder = CLIPTextEncoder(text_encoder_cfg=text_encoder_cfg, init_seed=init_seed,
                                       pad_token='<|endoftext|>', **common)
        self.encoder_2 = CLIPTextEncoder(text_encoder_cfg=text_encoder_2_cfg, init_seed=init_seed + 1,
                                         with_projection=True, subfolder_suffix='_2', pad_token='!', **common)

    @property
    def embed_dim(self) -> int:
        """Width of the cross-attention states (the UNet's ``cross_attention_dim``)."""
        return self.encoder.embed_dim + self.encoder_2.embed_dim

    @property
    def pooled_dim(self) -> int:
        """Width of ``text_embeds`` (the second encoder's projection)."""
        return self.encoder_2.pooled_dim

    def train(self, mode: bool = True) -> 'SDXLTextEncoder':
        """Stays in eval mode: both encoders are frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward_with_pooled(self, prompts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """``(B x 77 x (D1 + D2) states, B x P2 pooled text_embeds)``, float32, cached per prompt."""
        states, _ = self.encoder.forward_with_pooled(prompts)
        states_2, pooled = self.encoder_2.forward_with_pooled(prompts)
        return torch.cat([states, states_2], dim=-1), pooled

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> Tensor:
        """Cross-attention states ``B x 77 x (D1 + D2)`` (float32)."""
        return self.forward_with_pooled(prompts)[0]
