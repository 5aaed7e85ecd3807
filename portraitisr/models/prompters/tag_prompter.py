"""Tag-based prompts (OSEDiff's RAM / DAPE captions) from tagger models or from files.

OSEDiff (Wu et al., "One-Step Effective Diffusion Network for Real-World Image Super-Resolution", NeurIPS 2024, section
3.3) and HeadsUp (HeadsUp, arXiv 2510.09924, section 4.1) prompt with image tags: in training, plain RAM tags of the GT
(``train_osediff.py`` runs ``ram`` on ``x_tgt``); at test time, DAPE tags of the LQ (``test_osediff.py``). The two
taggers are separate configs here (``train_tagger`` and ``tagger``) because they are separate models with separate
weights.
"""
import hashlib
import logging
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from portraitisr.registry import PROMPTERS
from .base_prompter import BasePrompter

_TAGGER_MISSING = ('error', 'warn')


def image_digest(image: Tensor) -> str:
    """A content key of one image (``C x H x W``, any dtype and device): equal keys mean equal pixels."""
    data = image.detach().to('cpu').contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16)
    digest.update(f'{tuple(data.shape)}{data.dtype}'.encode())
    return digest.hexdigest()


@PROMPTERS.register_module()
class TagPrompter(BasePrompter):
    """Prompts built from image tags: ``template.format(tags=', '.join(tags), prompt=prompt)``.

    Where the tags of an image come from, in this order:

    1. a tagger model: ``train_tagger`` for training batches (OSEDiff: RAM on the GT), ``tagger`` for evaluation and
       restoration (OSEDiff: DAPE on the LQ), and for training too when ``train_tagger`` is not set. Any module
       registered in ``PROMPTERS`` whose ``forward(images) -> list[list[str]]`` works; one with a ``tag(images,
       keys)`` method (:class:`~portraitisr.models.taggers.RAMTagger`) gets a content key per evaluation image,
       so an LQ tagged once is not tagged again (its ``cache_size`` decides how many are kept);
    2. otherwise the image's metainfo under ``tags_key`` (tags computed offline);
    3. otherwise ``missing``: ``'error'``, or ``'empty'`` (no tags: the prompt is the user ``prompt`` alone).

    Taggers are frozen tools, not part of the restorer: they are built on first use (a test run never loads the
    training tagger, nor a training run without validation the test one), moved to the images' device, and kept
    out of ``state_dict()`` and ``parameters()`` (checkpoints do not carry 2 x 1.6 GB of tagger weights; DDP and
    optimisers never see them). ``tagger_dtype='auto'`` runs them in float16 on CUDA, as OSEDiff does
    (``--mixed_precision fp16``), and in float32 elsewhere.

    ``if_tagger_missing``: what happens when a tagger's weights are not found. ``'error'`` raises the resolver's
    message; ``'warn'`` logs once which tagger is missing and how to fetch it, then prompts without its tags (the
    metainfo's, else ``missing='empty'``). ``portraitisr restore`` uses this: tags when the weights are present,
    and a clear word when they are not.

    ``use_gt_in_training``: which images training prompts describe. True (OSEDiff): the GT; False: the LQ, as at
    test time (HeadsUp, arXiv 2510.09924, section 3: ``x_H = G(x_L, x_r, M, T(x_L))`` with DAPE as ``T``).

    Defaults follow OSEDiff: the test-time prompt is ``f"{tags}, {prompt},"`` with an empty user prompt; in
    training the caption is the tags alone (``train_template='{tags}'``).

    ``trained_with_prompts`` defaults to True here (tag prompts exist for models trained on tags): the first
    batch that ends up with an empty prompt logs one warning naming ``model.prompter.tagger`` and the dataset's
    ``tags`` (see :class:`BasePrompter`).
    """

    def __init__(self,
                 tagger: Optional[dict] = None,
                 train_tagger: Optional[dict] = None,
                 tags_key: str = 'tags',
                 template: str = '{tags}, {prompt},',
                 train_template: str = '{tags}',
                 prompt: str = '',
                 missing: str = 'error',
                 if_tagger_missing: str = 'error',
                 tagger_dtype: str = 'auto',
                 use_gt_in_training: bool = True,
                 trained_with_prompts: bool = True) -> None:
        super().__init__(trained_with_prompts)
        self.use_gt_in_training = bool(use_gt_in_training)
        if missing not in ('error', 'empty'):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        if if_tagger_missing not in _TAGGER_MISSING:
            raise ValueError(f'if_tagger_missing must be one of {_TAGGER_MISSING}, got {if_tagger_missing!r}')
        if tagger_dtype not in ('auto', 'float32', 'float16', 'bfloat16'):
            raise ValueError(f"tagger_dtype must be 'auto', 'float32', 'float16' or 'bfloat16', got {tagger_dtype!r}")
        for name, cfg in (('tagger', tagger), ('train_tagger', train_tagger)):
            if cfg is not None and (not isinstance(cfg, dict) or 'type' not in cfg):
                raise TypeError(f'{name} must be a PROMPTERS config dict with a type, got {cfg!r}')
        # Configs, not modules: see the class docstring for why taggers are built on first use.
        self.tagger_cfgs = {'test': tagger, 'train': train_tagger if train_tagger is not None else tagger}
        self._taggers: Dict[str, Optional[nn.Module]] = {}  # a plain dict: not registered as submodules
        self.tags_key = tags_key
        self.template, self.train_template = template, train_template
        self.prompt, self.missing, self.if_tagger_missing = prompt, missing, if_tagger_missing
        self.tagger_dtype = tagger_dtype

    # ------------------------------------------------------------------ taggers
    @property
    def tagger(self) -> Optional[nn.Module]:
        """The tagger of the current mode (built now if needed); None without one, or when its weights are
        missing and ``if_tagger_missing='warn'``."""
        return self._tagger('train' if self.training else 'test')

    def _tagger(self, mode: str) -> Optional[nn.Module]:
        if mode in self._taggers:
            return self._taggers[mode]
        cfg = self.tagger_cfgs[mode]
        built = None
        if cfg is not None:
            other = 'test' if mode == 'train' else 'train'
            if self.tagger_cfgs[other] is cfg and other in self._taggers:
                built = self._taggers[other]  # one config for both modes: one model
            else:
                built = self._build_tagger(cfg, mode)
        self._taggers[mode] = built
        return built

    def _build_tagger(self, cfg: dict, mode: str) -> Optional[nn.Module]:
        try:
            # Built on first use, often inside a seeded evaluation step: initialising its layers must not draw from
            # the caller's random stream (the first restore would differ from every later one).
            with torch.random.fork_rng(devices=[]):
                tagger = PROMPTERS.build(cfg)
        except FileNotFoundError as error:  # the weight resolver's WeightsNotFoundError names the file and places
            if self.if_tagger_missing == 'error':
                raise
            use = 'training images' if mode == 'train' else 'inputs'
            print_log(f'TagPrompter: the {cfg["type"]} that tags the {use} cannot be built, so prompts carry no '
                      f'tags from it and results differ from the paper\'s. {str(error).splitlines()[0]} '
                      f'(`portraitisr download` fetches model-zoo weights; set `model.prompter.if_tagger_missing='
                      "'error'` to stop instead.)", logger='current', level=logging.WARNING)
            return None
        tagger.requires_grad_(False)
        return tagger.eval()

    def _ready(self, tagger: nn.Module, images: Tensor) -> nn.Module:
        dtype = self.tagger_dtype
        if dtype == 'auto':
            dtype = 'float16' if images.device.type == 'cuda' else 'float32'
        return tagger.to(device=images.device, dtype=getattr(torch, dtype))

    def _apply(self, fn, recurse: bool = True):
        # ``.to()`` / ``.cuda()`` / ``.half()`` reach built taggers too (they live outside the module tree);
        # _ready() still moves them to the images' device and the configured dtype before each use.
        for tagger in self._taggers.values():
            if tagger is not None:
                tagger._apply(fn, recurse)
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ prompts
    def empty_prompt_advice(self) -> str:
        return ('Set `model.prompter.tagger` (OSEDiff and HeadsUp: RAM on the GT in training, DAPE on the LQ at '
                f'test time) or give the dataset per-image tags (`tags` / `tags_file`, metainfo key '
                f'{self.tags_key!r}).')

    def image_tags(self, images: Tensor, metainfo: Optional[Sequence[dict]]) -> List[List[str]]:
        """The tags of each image of ``images`` (``B x 3 x H x W`` in [0, 1])."""
        tagger = self.tagger
        if tagger is not None:
            tagger = self._ready(tagger, images)
            if hasattr(tagger, 'tag'):
                # Evaluation inputs repeat (every validation round, a folder restored twice); training crops don't.
                keys = None if self.training else [image_digest(image) for image in images]
                return [list(tags) for tags in tagger.tag(images, keys)]
            return [list(tags) for tags in tagger(images)]
        metainfo = metainfo or [{}] * images.shape[0]
        lenient = self.missing == 'empty' or self.tagger_cfgs['train' if self.training else 'test'] is not None
        tags = []
        for info in metainfo:
            value = info.get(self.tags_key)
            if value is None:
                if not lenient:
                    raise KeyError(f'No tags for {info.get("path", "an image")}: configure a tagger '
                                   f'or provide `{self.tags_key}` in the dataset metainfo')
                value = []
            tags.append([value] if isinstance(value, str) else list(value))
        return tags

    def forward(self, images: Tensor, metainfo: Optional[Sequence[dict]] = None) -> List[str]:
        template = self.train_template if self.training else self.template
        return [template.format(tags=', '.join(tags), prompt=self.prompt) if tags else self.prompt
                for tags in self.image_tags(images, metainfo)]

    def extra_repr(self) -> str:
        names = {mode: (cfg or {}).get('type') for mode, cfg in self.tagger_cfgs.items()}
        return f'tagger={names["test"]}, train_tagger={names["train"]}, missing={self.missing!r}'
