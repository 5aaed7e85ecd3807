"""RAM / DAPE image tagger: the prompts OSEDiff and HeadsUp condition on.

RAM (Zhang et al., "Recognize Anything: A Strong Image Tagging Model", 2023) with the Swin-L encoder at 384 px,
and DAPE, SeeSR's degradation-aware fine-tune of it (Wu et al., "SeeSR: Towards Semantics-Aware Real-World Image
Super-Resolution", CVPR 2024, section 3.2): LoRA of rank 8 on every Swin ``qkv`` (query and value rows) and on the
tagging head's cross-attention ``query`` / ``key``. OSEDiff tags the GT with RAM in training and the LQ with DAPE
at test time (Wu et al., "One-Step Effective Diffusion Network for Real-World Image Super-Resolution", NeurIPS
2024; HeadsUp, arXiv 2510.09924, section 4.1, does the same).

The computation is ``RAMLora.generate_tag`` of cswry/OSEDiff ``ram/models/ram_lora.py``:

1. ``image_embeds = image_proj(visual_encoder(x))``: ``B x 145 x 512`` (the mean-pooled token, then 12 x 12);
2. tag queries ``relu(wordvec_proj(label_embed))``: ``4585 x 768``, the same for every image;
3. ``logits = fc(tagging_head(queries, image_embeds)).squeeze(-1)``: ``B x 4585``; ``fc`` is one ``Linear(768, 1)``
   shared by all tags (the issue text says "group-wise linear classifier": RAM's code defines ``GroupWiseLinear``
   in ``ram/models/utils.py`` but only Tag2Text uses it; RAM and RAMLora use the shared ``fc``, followed here);
4. a tag is output where ``sigmoid(logit) > class_threshold`` (strict), in the tag list's order.

``forward`` returns the tags of each image as a list of strings; OSEDiff joins them with ``', '``
(``RAMLora.generate_tag``; upstream RAM uses ``' | '``), which :meth:`RAMTagger.tag_strings` reproduces.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from portraitisr.registry import PROMPTERS
from portraitisr.weights import load_state_dict, resolve_file
from .ram_checkpoint import dape_state_dict, load_strict, ram_state_dict
from .ram_preprocess import ram_preprocess
from .swin_transformer import SwinTransformer
from .tag_vocabulary import class_thresholds, read_tag_list, read_thresholds
from .tagging_head import TaggingHead

__all__ = ['RAMTagger', 'DAPETagger', 'RAM_WEIGHTS', 'DAPE_WEIGHTS', 'RAM_TAG_LIST', 'RAM_TAG_THRESHOLDS',
           'SWIN_L_384', 'RAM_TAGGING_HEAD']

# The model-zoo entries (portraitisr/model_zoo/index.json; tests check they agree). Resolved offline first:
# $PORTRAITISR_HOME/<filename>, the Hugging Face cache for the hub URL, then a download only when allowed.
RAM_WEIGHTS = dict(
    filename='ram_swin_large_14m.pth',
    url='https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/ram_swin_large_14m.pth',
    sha256='15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed')
DAPE_WEIGHTS = dict(
    filename='DAPE.pth', url='https://drive.google.com/uc?export=download&id=1KIV6VewwO2eDC9g4Gcvgm-a0LDI7Lmwm',
    sha256='a7028be2edcbe9ab0bd1c4ab6f2a2a86f4b44d32261a4faa50ae10fdd9b2feba')
_RAM_DATA = ('https://raw.githubusercontent.com/xinyu1205/recognize-anything/'
             '7cb804a8609e9f4b1a50b7f31436d2df40bb9481/ram/data/')
RAM_TAG_LIST = dict(filename='ram_tag_list.txt', url=_RAM_DATA + 'ram_tag_list.txt',
                    sha256='5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b')
RAM_TAG_THRESHOLDS = dict(filename='ram_tag_list_threshold.txt', url=_RAM_DATA + 'ram_tag_list_threshold.txt',
                          sha256='b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447')

#: RAM's Swin-L (``ram/configs/swin/config_swinL_384.json``; patch 4 and MLP ratio 4 from ``ram_lora.py``).
SWIN_L_384 = dict(image_size=384, patch_size=4, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                  window_size=12, mlp_ratio=4.0)
#: RAM's tagging head (``ram/configs/q2l_config.json``).
RAM_TAGGING_HEAD = dict(hidden_size=768, num_layers=2, num_heads=4, intermediate_size=3072, layer_norm_eps=1e-12)
#: Width of ``image_proj``'s output and of ``label_embed`` (512, fixed in ``ram_lora.py``: CLIP's text width).
RAM_TEXT_WIDTH = 512
#: DAPE's LoRA rank (``r=8`` in ``swin_transformer_lora.py`` and ``bert_lora.py``).
DAPE_LORA_RANK = 8


def _is_spec(value: Any) -> bool:
    """A weight spec (path, file name, URL, dict) rather than the data itself (a list of tags or thresholds)."""
    return isinstance(value, (str, Mapping)) or hasattr(value, '__fspath__')


@PROMPTERS.register_module()
class RAMTagger(nn.Module):
    """RAM (``lora_rank=0``) or RAM + LoRA (DAPE, see :class:`DAPETagger`): images in, tags out.

    Args:
        weights: the RAM checkpoint, any :func:`~portraitisr.weights.resolve_file` spec (default: the
            model-zoo entry ``ram_swin_large_14m``); loaded strictly (see :mod:`.ram_checkpoint`).
        lora_weights: the LoRA checkpoint (DAPE.pth) when ``lora_rank > 0``; loaded strictly on top of ``weights``.
        tag_list: the tag names: a spec of ``ram_tag_list.txt`` (default: model-zoo entry ``ram_tag_list``) or a
            list of strings.
        thresholds: a spec of ``ram_tag_list_threshold.txt`` (default: entry ``ram_tag_list_threshold``), one float
            per tag, or one float for every tag.
        pretrained: False builds random weights without reading ``weights`` / ``lora_weights`` (tests,
            benchmarks); the tag list and thresholds are still needed.
        lora_rank: 0 for RAM; DAPE's LoRA rank (8) otherwise.
        max_threshold, add_threshold: RAMLora's ``max_threthold`` / ``add_threthold`` (0.9, 0), see
            :func:`~.tag_vocabulary.class_thresholds`.
        antialias: antialias the resize to 384 (default False, as OSEDiff and DAPE ran it; see
            :mod:`.ram_preprocess`).
        swin, head: the encoder and tagging-head configurations (default RAM's Swin-L and ``q2l_config``).
        text_width: RAM's 512.
        batch_size: images per forward pass in :meth:`tag`.
        cache_size: how many tag lists :meth:`tag` keeps by key (0: no cache).
        allow_download: ``None`` reads ``PORTRAITISR_ALLOW_DOWNLOAD``; offline, a missing file raises the
            resolver's ``WeightsNotFoundError`` naming it and where it was looked for.

    The tagger is frozen and stays in eval mode when ``.train()`` is called (RAM's stochastic depth and dropout
    are training-time only; OSEDiff runs RAM in ``eval()``). ``forward`` runs without gradients.
    """

    def __init__(self,
                 weights: Any = RAM_WEIGHTS,
                 lora_weights: Any = None,
                 tag_list: Union[Any, Sequence[str]] = RAM_TAG_LIST,
                 thresholds: Union[Any, float, Sequence[float]] = RAM_TAG_THRESHOLDS,
                 pretrained: bool = True,
                 lora_rank: int = 0,
                 max_threshold: float = 0.9,
                 add_threshold: float = 0.0,
                 antialias: bool = False,
                 swin: Optional[dict] = None,
                 head: Optional[dict] = None,
                 text_width: int = RAM_TEXT_WIDTH,
                 batch_size: int = 8,
                 cache_size: int = 0,
                 allow_download: Optional[bool] = None) -> None:
        super().__init__()
        if lora_rank < 0 or batch_size < 1 or cache_size < 0:
            raise ValueError(f'need lora_rank >= 0, batch_size >= 1, cache_size >= 0; got {lora_rank}, '
                             f'{batch_size}, {cache_size}')
        if pretrained and weights is None:
            raise ValueError('RAMTagger(pretrained=True) needs weights= (the RAM checkpoint, ram_swin_large_14m.pth)')
        if pretrained and lora_rank > 0 and lora_weights is None:
            raise ValueError(f'lora_rank={lora_rank} needs lora_weights= (the LoRA checkpoint, e.g. DAPE.pth), or '
                             'lora_rank=0 for plain RAM')
        if lora_rank == 0 and lora_weights is not None:
            raise ValueError('lora_weights= needs lora_rank > 0 (DAPE: 8)')
        swin = {**SWIN_L_384, **(swin or {})}
        head = {**RAM_TAGGING_HEAD, **(head or {})}
        self.tags = self._read_tags(tag_list, allow_download)
        values = thresholds if isinstance(thresholds, (int, float)) else self._read_thresholds(thresholds,
                                                                                               allow_download)
        # A plain float32 tensor as in RAMLora (not a buffer: casting the tagger to float16 must not round it).
        self.class_threshold = class_thresholds(values, len(self.tags), max_threshold, add_threshold)
        self.lora_rank, self.antialias, self.image_size = int(lora_rank), bool(antialias), int(swin['image_size'])
        self.batch_size, self.cache_size = int(batch_size), int(cache_size)
        self._cache: OrderedDict = OrderedDict()

        self.visual_encoder = SwinTransformer(lora_rank=self.lora_rank, **swin)
        self.image_proj = nn.Linear(self.visual_encoder.num_features, text_width)
        self.label_embed = nn.Parameter(torch.zeros(len(self.tags), text_width))
        hidden = head['hidden_size']
        self.wordvec_proj = nn.Linear(text_width, hidden) if hidden != text_width else nn.Identity()
        self.tagging_head = TaggingHead(encoder_width=text_width, lora_rank=self.lora_rank, **head)
        self.fc = nn.Linear(hidden, 1)

        self.weights_path: Optional[str] = None
        self.lora_weights_path: Optional[str] = None
        if pretrained:
            self.load_weights(weights, lora_weights, allow_download=allow_download)
        else:
            # Our choice for random weights: RAM starts label_embed at zero and fills it from the checkpoint;
            # identical queries would make every tag identical.
            with torch.no_grad():
                self.label_embed.normal_(std=0.02)
        self.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ vocabulary and weights
    @staticmethod
    def _read_tags(tag_list: Any, allow_download: Optional[bool]) -> list[str]:
        if not _is_spec(tag_list):
            tags = [str(t) for t in tag_list]
            if not tags:
                raise ValueError('tag_list is empty')
            return tags

        return read_tag_list(resolve_file(tag_list, allow_download=allow_download))

    @staticmethod
    def _read_thresholds(thresholds: Any, allow_download: Optional[bool]) -> list[float]:
        if not _is_spec(thresholds):
            return [float(t) for t in thresholds]

        return read_thresholds(resolve_file(thresholds, allow_download=allow_download))

    def load_weights(self, weights: Any, lora_weights: Any = None, allow_download: Optional[bool] = None) -> None:
        """Load the RAM checkpoint strictly, then (``lora_rank > 0``) the LoRA checkpoint strictly on top."""

        own = set(self.state_dict())
        path = resolve_file(weights, allow_download=allow_download)
        load_strict(self, ram_state_dict(load_state_dict(path)), {k for k in own if 'lora_' not in k},
                    f'RAM checkpoint {path}')
        self.weights_path = str(path)
        if self.lora_rank > 0:
            lora_path = resolve_file(lora_weights, allow_download=allow_download)
            lora = dape_state_dict(load_state_dict(lora_path), tied_layers=len(self.tagging_head.encoder.layer))
            load_strict(self, lora, {k for k in own if 'lora_' in k}, f'LoRA checkpoint {lora_path}')
            self.lora_weights_path = str(lora_path)
        self._cache.clear()

    def train(self, mode: bool = True) -> 'RAMTagger':
        """Stays in eval mode (a frozen tagger)."""
        return super().train(False)

    # ------------------------------------------------------------------ computation
    def preprocess(self, images: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x 384 x 384`` normalised, in the tagger's dtype."""
        return ram_preprocess(images, self.image_size, self.antialias).to(self.label_embed.dtype)

    def image_embeds(self, x: Tensor) -> Tensor:
        """Preprocessed ``B x 3 x 384 x 384`` -> ``B x 145 x 512`` (RAMLora ``generate_image_embeds``)."""
        return self.image_proj(self.visual_encoder(x))

    def logits(self, x: Tensor) -> Tensor:
        """Preprocessed ``B x 3 x 384 x 384`` -> ``B x num_tags`` tag logits (RAMLora ``condition_forward``)."""
        image = self.image_embeds(x)
        queries = torch.relu(self.wordvec_proj(self.label_embed))
        queries = queries.unsqueeze(0).expand(image.shape[0], -1, -1)
        return self.fc(self.tagging_head(queries, image)).squeeze(-1)

    def decide(self, logits: Tensor) -> list[list[str]]:
        """Tags whose ``sigmoid(logit)`` exceeds their class threshold, in the tag list's order, per image."""
        chosen = torch.sigmoid(logits) > self.class_threshold.to(logits.device)
        return [[self.tags[i] for i in row.nonzero().flatten().tolist()] for row in chosen.cpu()]

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[list[str]]:
        """``B x 3 x H x W`` RGB in [0, 1] (any size; squashed to 384 x 384) -> the tags of each image."""
        return self.decide(self.logits(self.preprocess(images)))

    # ------------------------------------------------------------------ batching and caching
    def tag(self, images: Tensor, keys: Optional[Sequence[Hashable]] = None) -> list[list[str]]:
        """Tags of ``images`` (``B x 3 x H x W`` in [0, 1]), ``batch_size`` images per forward pass.

        ``keys`` (one per image, e.g. the LQ file path when the LQ is fixed, as in validation and testing) reuse
        tags computed before for the same key: only unseen images run through the model. Keys are the caller's
        promise that the image of a key never changes; ``cache_size`` bounds how many are kept (least recently
        used dropped first; 0 keeps none).
        """
        if keys is not None and len(keys) != images.shape[0]:
            raise ValueError(f'{len(keys)} keys for {images.shape[0]} images')
        results: list[Optional[list[str]]] = [None] * images.shape[0]
        todo = []
        for i in range(images.shape[0]):
            key = None if keys is None else keys[i]
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                results[i] = list(self._cache[key])
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, tags in zip(chunk, self(images[chunk])):
                results[i] = tags
                if keys is not None and self.cache_size > 0:
                    self._cache[keys[i]] = tuple(tags)
                    self._cache.move_to_end(keys[i])
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return results

    def tag_strings(self, images: Tensor, keys: Optional[Sequence[Hashable]] = None) -> list[str]:
        """The tags of each image joined as OSEDiff's ``RAMLora.generate_tag`` does (``', '``)."""
        return [', '.join(tags) for tags in self.tag(images, keys)]

    def clear_cache(self) -> None:
        self._cache.clear()

    def extra_repr(self) -> str:
        return (f'num_tags={len(self.tags)}, lora_rank={self.lora_rank}, image_size={self.image_size}, '
                f'antialias={self.antialias}')


@PROMPTERS.register_module()
class DAPETagger(RAMTagger):
    """DAPE: RAM plus SeeSR's degradation-aware LoRA (``DAPE.pth``), what OSEDiff tags the LQ with at test time.

    The same arguments as :class:`RAMTagger`, with ``lora_weights`` defaulting to the model-zoo entry ``dape`` and
    ``lora_rank`` to 8.
    """

    def __init__(self, lora_weights: Any = DAPE_WEIGHTS, lora_rank: int = DAPE_LORA_RANK, **kwargs) -> None:
        super().__init__(lora_weights=lora_weights if kwargs.get('pretrained', True) else None,
                         lora_rank=lora_rank, **kwargs)
