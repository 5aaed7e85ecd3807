"""Frozen CLIP text encoder turning prompts into UNet cross-attention states, with a cache.

Stable Diffusion 2.1 conditions its UNet on the last hidden state of an OpenCLIP ViT-H text
encoder (diffusers ``CLIPTextModel``, 23 layers). OSEDiff and HeadsUp encode constant strings
(the null prompt, a fixed prompt, VSD's negative prompt) at every step; we encode each distinct
string once and keep it.

SDXL uses two such encoders, each through its *penultimate* hidden state, and the projected pooled output of the
second (``CLIPTextModelWithProjection``); :class:`~portraitisr.models.text_encoders.SDXLTextEncoder` combines two
of these encoders built with ``hidden_state='penultimate'`` (and ``with_projection=True`` for the second).
"""
import gzip
import json
import os
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from portraitisr.models.backbones.one_step_sd import parse_dtype
from portraitisr.registry import TEXT_ENCODERS
from portraitisr.weights import portraitisr_home, resolve_pretrained_dir

# CLIP's BPE: 256 byte tokens, the same with an end-of-word marker, 48894 merges, 2 specials.
_CLIP_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (part of the BPE definition)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) +
                 list(range(ord('®'), ord('ÿ') + 1)))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def bundled_clip_tokenizer_dir(cache_dir: Optional[str] = None) -> str:
    """Write CLIP's tokenizer files (``vocab.json``, ``merges.txt``) from the BPE table that the
    ``open_clip_torch`` package ships, so a real CLIP tokenizer works offline.

    The vocabulary is the one of OpenAI CLIP and of Stable Diffusion 2.1's tokenizer (49408
    tokens). Returns the folder, reused on later calls.
    """
    import importlib.util

    spec = importlib.util.find_spec('open_clip')
    if spec is None or spec.origin is None:
        raise ImportError('The bundled CLIP tokenizer needs the `open_clip_torch` package '
                          '(pip install open_clip_torch), or pass `tokenizer=` a tokenizer folder.')
    bpe_path = os.path.join(os.path.dirname(spec.origin), 'bpe_simple_vocab_16e6.txt.gz')
    if cache_dir is None:
        cache_dir = str(portraitisr_home() / 'clip_tokenizer')
    vocab_file = os.path.join(cache_dir, 'vocab.json')
    merges_file = os.path.join(cache_dir, 'merges.txt')
    if os.path.isfile(vocab_file) and os.path.isfile(merges_file):
        return cache_dir
    with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
        merges = f.read().split('\n')[1:_CLIP_NUM_MERGES + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + '</w>' for t in byte_tokens]
    tokens += [m.replace(' ', '') for m in merges] + ['<|startoftext|>', '<|endoftext|>']
    os.makedirs(cache_dir, exist_ok=True)
    tmp_suffix = f'.{os.getpid()}.tmp'
    with open(vocab_file + tmp_suffix, 'w', encoding='utf-8') as f:
        json.dump({token: index for index, token in enumerate(tokens)}, f)
    with open(merges_file + tmp_suffix, 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    os.replace(merges_file + tmp_suffix, merges_file)
    os.replace(vocab_file + tmp_suffix, vocab_file)
    return cache_dir


@TEXT_ENCODERS.register_module()
class CLIPTextEncoder(nn.Module):
    """Frozen CLIP text encoder: ``forward(prompts) -> B x 77 x D`` embeddings.

    Args:
        pretrained: SD folder or hub id (``tokenizer/`` and ``text_encoder/`` subfolders).
        text_encoder_cfg: inline ``CLIPTextConfig`` kwargs (random weights; tests, debug).
        tokenizer: tokenizer folder for inline configs; default: the bundled CLIP BPE.
        dtype: weight dtype of the (frozen) text model.
        cache_size: how many distinct prompts to keep encoded.
        init_seed: seed of the random weights of an inline config.
        hidden_state: ``'last'`` (SD 2.1: the final, layer-normed hidden state) or ``'penultimate'`` (SDXL:
            ``hidden_states[-2]``, diffusers ``StableDiffusionXLPipeline.encode_prompt``).
        with_projection: build ``CLIPTextModelWithProjection``, whose pooled output is the projected
            ``text_embeds`` (SDXL's second encoder); otherwise ``CLIPTextModel`` with its ``pooler_output``.
        subfolder_suffix: ``'_2'`` loads ``tokenizer_2/`` and ``text_encoder_2/`` of a pretrained folder.
        pad_token: padding token of the bundled tokenizer for inline configs: ``'!'`` (SD 2.x and SDXL's second
            tokenizer, as OpenCLIP) or ``'<|endoftext|>'`` (SDXL's first, OpenAI CLIP's).
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 text_encoder_cfg: Optional[dict] = None,
                 tokenizer: Optional[str] = None,
                 dtype: str = 'float32',
                 cache_size: int = 1024,
                 init_seed: int = 0,
                 hidden_state: str = 'last',
                 with_projection: bool = False,
                 subfolder_suffix: str = '',
                 pad_token: str = '!') -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
        if hidden_state not in ('last', 'penultimate'):
            raise ValueError(f"hidden_state must be 'last' or 'penultimate', got {hidden_state!r}")
        self.hidden_state, self.with_projection = hidden_state, with_projection
        model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        if pretrained is not None:
            tokenizer_dir, encoder_dir = f'tokenizer{subfolder_suffix}', f'text_encoder{subfolder_suffix}'
            folder = str(resolve_pretrained_dir(
                pretrained,
                required=(f'{tokenizer_dir}/tokenizer_config.json', f'{encoder_dir}/config.json')))
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer_dir)
            self.text_model = model_class.from_pretrained(folder, subfolder=encoder_dir)
        elif text_encoder_cfg is not None:
            # SD 2.x's tokenizer pads with "!" (id 0) to 77 tokens, as OpenCLIP does.
            self.tokenizer = CLIPTokenizer.from_pretrained(
                tokenizer or bundled_clip_tokenizer_dir(), model_max_length=77, pad_token=pad_token)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                self.text_model = model_class(CLIPTextConfig(**text_encoder_cfg))
        else:
            raise ValueError('CLIPTextEncoder needs `pretrained` or `text_encoder_cfg`')
        self.text_model.requires_grad_(False)
        self.text_model.to(parse_dtype(dtype))
        self.text_model.eval()
        self.cache_size = cache_size
        self._cache: 'OrderedDict[str, Tensor]' = OrderedDict()
        self._pooled_cache: 'OrderedDict[str, Tuple[Tensor, Tensor]]' = OrderedDict()

    @property
    def embed_dim(self) -> int:
        return self.text_model.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled output: ``projection_dim`` with projection, else ``hidden_size``."""
        config = self.text_model.config
        return config.projection_dim if self.with_projection else config.hidden_size

    def train(self, mode: bool = True) -> 'CLIPTextEncoder':
        """Stays in eval mode: the encoder is frozen."""
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached embeddings live on the old device / dtype
        self._pooled_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def encode_with_pooled(self, prompts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Encode without the cache: ``(states len(prompts) x max_length x D, pooled len(prompts) x P)`` float32."""
        device = next(self.text_model.parameters()).device
        ids = self.tokenizer(list(prompts), max_length=self.tokenizer.model_max_length,
                             padding='max_length', truncation=True, return_tensors='pt').input_ids
        output = self.text_model(ids.to(device), output_hidden_states=self.hidden_state == 'penultimate')
        states = output.last_hidden_state if self.hidden_state == 'last' else output.hidden_states[-2]
        pooled = output.text_embeds if self.with_projection else output.pooler_output
        return states.float(), pooled.float()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Encode without the cache. Returns ``len(prompts) x max_length x D`` float32."""
        return self.encode_with_pooled(prompts)[0]

    def _cached(self, prompts: Sequence[str], cache: 'OrderedDict[str, object]', encode) -> list:
        """Per-prompt results of ``encode`` (batched over the prompts ``cache`` lacks), least recently used out."""
        if isinstance(prompts, str):
            raise TypeError('CLIPTextEncoder takes a list of prompts, got a single string')
        missing: List[str] = list(dict.fromkeys(p for p in prompts if p not in cache))
        if missing:
            encoded = encode(missing)
            rows = zip(*encoded) if isinstance(encoded, tuple) else encoded
            for prompt, row in zip(missing, rows):
                cache[prompt] = row
        for prompt in prompts:
            cache.move_to_end(prompt)
        result = [cache[p] for p in prompts]
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        return result

    @torch.no_grad()
    def forward_with_pooled(self, prompts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """``(states B x L x D, pooled B x P)`` of ``prompts`` (float32), from a cache where possible."""
        rows = self._cached(prompts, self._pooled_cache, self.encode_with_pooled)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> Tensor:
        """Embeddings of ``prompts`` (``B x L x D`` float32), from the cache where possible."""
        return torch.stack(self._cached(prompts, self._cache, self.encode))
