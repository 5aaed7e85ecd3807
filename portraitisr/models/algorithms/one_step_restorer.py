"""What every one-step SD restorer shares: prompting, inference, colour fix, mmengine plumbing."""
from collections import OrderedDict
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor, nn

from portraitisr.models.backbones.latent_tiling import LatentTiling
from portraitisr.registry import BACKBONES, MODELS, PROMPTERS, TEXT_ENCODERS
from .authface_facial_terms import FacialLossTerms
from .color_fix import COLOR_FIXES

#: Distinct prompt batches whose device-side embeddings :meth:`OneStepRestorer.prompt_embeddings` keeps at inference.
PROMPT_CACHE_SIZE = 8


def pack_outputs(sr: Tensor, data: dict, extra_metainfo: Optional[List[dict]] = None) -> List[dict]:
    """The runner's per-image outputs of an evaluation batch: ``dict(pred, lq, gt, metainfo)`` with CPU float32
    ``3 x H x W`` tensors (``gt`` only when the batch has one); ``extra_metainfo[i]`` is merged into image i's."""
    outputs = []
    for i, info in enumerate(data['metainfo']):
        metainfo = dict(info, **extra_metainfo[i]) if extra_metainfo is not None else info
        output = dict(pred=sr[i].float().cpu(), lq=data['inputs'][i].float().cpu(), metainfo=metainfo)
        if data.get('gt') is not None:
            output['gt'] = data['gt'][i].float().cpu()
        outputs.append(output)
    return outputs


class OneStepRestorer(FacialLossTerms, BaseModel):
    """Base of OSEDiff and HeadsUp: a :class:`OneStepSD` backbone, a prompter and a text encoder.

    Args:
        backbone: ``BACKBONES`` config of the one-step SD restorer (the generator).
        text_encoder: ``TEXT_ENCODERS`` config (frozen, caches constant prompts).
        prompter: ``PROMPTERS`` config (null, fixed or tag prompts).
        color_fix: ``'adain'`` (OSEDiff's default at test time) or None.
        eval_seed: seed of the VAE posterior sample at validation/test, so evaluation is
            deterministic and leaves the training random state untouched.
        data_preprocessor: mmengine data preprocessor config.
        facial_loss: optional ``LOSSES`` config of AuthFace's facial loss (``TimeAwareFacialLoss`` with
            ``time_weighting='constant'``), an extra generator loss with its own discriminators and optimiser
            (``optim_wrapper['facial_loss']``); see :mod:`.authface_facial_terms`.

    Children whose parameters train (``backbone`` and, in subclasses, the regulariser or the
    discriminator) are wrapped one by one by ``MMSeparateDistributedDataParallel``.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 prompter: Optional[dict] = None,
                 color_fix: Optional[str] = 'adain',
                 eval_seed: int = 0,
                 data_preprocessor: Union[dict, nn.Module, None] = None,
                 init_cfg: Optional[dict] = None,
                 facial_loss: Optional[dict] = None) -> None:
        # Built from our registry, so the model also builds outside a Runner (no default scope).
        if not isinstance(data_preprocessor, nn.Module):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='SRDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if color_fix is not None and color_fix not in COLOR_FIXES:
            raise KeyError(f'Unknown color_fix {color_fix!r}; choose from {sorted(COLOR_FIXES)} '
                           'or None')
        self.backbone = BACKBONES.build(backbone)
        self.text_encoder = TEXT_ENCODERS.build(text_encoder)
        self.prompter = PROMPTERS.build(prompter or dict(type='NullPrompter'))
        if self.text_encoder.embed_dim != self._backbone.cross_attention_dim:
            raise ValueError(f'text encoder width {self.text_encoder.embed_dim} != UNet '
                             f'cross_attention_dim {self._backbone.cross_attention_dim}')
        self.color_fix = color_fix
        self.eval_seed = eval_seed
        self.build_facial_loss(facial_loss)  # AuthFace's extra loss (authface_facial_terms.py)
        self.check_one_step_facial_loss()
        # Inference-only state, kept out of ``state_dict`` and ``parameters()`` (plain attributes, not children):
        # the merged bf16 copy of the backbone, the latent tiling and the device-side prompt-embedding cache.
        self.__dict__['_fast_backbone'] = None
        self.tiling: Optional[LatentTiling] = None
        self._prompt_cache: 'OrderedDict[Tuple, Tensor]' = OrderedDict()

    # ``MMSeparateDistributedDataParallel`` replaces trainable children by DDP wrappers.
    @property
    def _backbone(self):
        return getattr(self.backbone, 'module', self.backbone)

    # ------------------------------------------------------------------ fast inference
    def enable_fast_inference(self, dtype: Union[str, torch.dtype] = 'bfloat16', channels_last: Optional[bool] = None,
                              compile: bool = False, device: Union[str, torch.device, None] = None) -> None:
        """Restore with a merged-LoRA copy of the backbone in ``dtype`` (:meth:`OneStepSD.inference_copy`).

        The trained backbone is untouched (training and ``save_trainable`` see unmerged float32 LoRA); the copy is
        dropped when the model goes back to train mode, since its weights would be stale. Call after moving the
        model to its device, or pass ``device`` to build the copy there while the float32 model stays where it is
        (e.g. on the CPU, so the GPU holds only the bf16 copy; inputs then go to ``device``). Outputs match the
        unmerged float32 path within the tolerances of ``tests/test_models/test_backbones/test_fast_inference.py``
        (merged fp32: 1e-4; bf16: mean absolute difference below 1.5e-2 on [0, 1] images).
        """
        self.__dict__['_fast_backbone'] = None  # free the previous copy before building the next one
        self.__dict__['_fast_backbone'] = self._backbone.inference_copy(dtype, channels_last=channels_last,
                                                                        compile=compile, device=device)
        self._fast_settings = dict(dtype=dtype, channels_last=channels_last, compile=compile)

    def _follow_device(self, device: torch.device) -> None:
        """Rebuild the fast copy on ``device`` when inputs arrive elsewhere: it is not a registered child, so
        ``model.to(device)`` does not move it."""
        fast = self.__dict__.get('_fast_backbone')
        if fast is not None and fast.sqrt_alpha_bar.device != device:
            self.enable_fast_inference(device=device, **self._fast_settings)

    def disable_fast_inference(self) -> None:
        self.__dict__['_fast_backbone'] = None

    def set_tiling(self, tiling: Union[LatentTiling, dict, None] = None, **kwargs) -> None:
        """Tile the VAE and the UNet at inference (4K outputs in bounded memory); ``set_tiling(None)`` turns it
        off. Accepts a :class:`LatentTiling`, a dict of its fields, or its fields as keywords."""
        if isinstance(tiling, dict) or (tiling is None and kwargs):
            tiling = LatentTiling(**dict(tiling or {}, **kwargs))
        self.tiling = tiling

    @property
    def inference_backbone(self):
        """The backbone :meth:`restore` runs: the fast copy when enabled, else the (unmerged) backbone."""
        fast = self.__dict__.get('_fast_backbone')
        return fast if fast is not None else self._backbone

    def train(self, mode: bool = True):
        if mode and self.__dict__.get('_fast_backbone') is not None:
            self.disable_fast_inference()  # training changes the weights the copy was merged from
        return super().train(mode)

    def prompt_embeddings(self, images: Tensor, metainfo: List[dict]) -> Tensor:
        """Prompts of the prompter for ``images`` encoded by the (cached) text encoder.

        Without gradients (inference), the ``B x L x D`` batch is also kept on ``images``' device, keyed by the
        prompts, so a folder restored with one fixed prompt re-uses one device tensor instead of re-stacking and
        copying the text encoder's cached rows on every call.
        """
        prompts = self.prompter(images, metainfo)
        if torch.is_grad_enabled() or self.training:
            return self.text_encoder(prompts).to(images.device)
        key = (tuple(prompts), str(images.device))
        embeds = self._prompt_cache.get(key)
        if embeds is None:
            embeds = self.text_encoder(prompts).to(images.device)
            self._prompt_cache[key] = embeds
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        else:
            self._prompt_cache.move_to_end(key)
        return embeds

    def restore(self, lq: Tensor, metainfo: Optional[List[dict]] = None, **conditions) -> Tensor:
        """Restore ``lq`` (``B x 3 x H x W`` in [0, 1], at the output size) without gradients.

        Sizes that are not multiples of the VAE factor are reflect-padded and cropped back. The
        configured colour fix is applied against ``lq``. A batch is restored in one pass; the merged
        fast copy (:meth:`enable_fast_inference`) and latent tiling (:meth:`set_tiling`) apply when set.
        """
        metainfo = metainfo or [{} for _ in range(lq.shape[0])]
        factor = self._backbone.vae_downscale
        h, w = lq.shape[-2:]
        pad_h, pad_w = (-h) % factor, (-w) % factor
        padded = F.pad(lq, (0, pad_w, 0, pad_h), mode='reflect') if pad_h or pad_w else lq
        embeds = self.prompt_embeddings(lq, metainfo)
        conditions = self.prepare_conditions(padded, **conditions)
        self._follow_device(lq.device)
        backbone = self.inference_backbone
        with backbone.tiled(self.tiling):
            sr = backbone(padded, embeds, **conditions)[..., :h, :w]
        if self.color_fix is not None:
            sr = COLOR_FIXES[self.color_fix](sr, lq)
        return sr

    def prepare_conditions(self, padded_lq: Tensor, **conditions) -> dict:
        """Turn user-level conditions into backbone keyword arguments for ``padded_lq`` (the LQ
        reflect-padded to a multiple of the VAE factor); subclasses with conditions override it."""
        return conditions

    def restore_batch(self, data: dict) -> Tensor:
        """Restore a preprocessed evaluation batch (``inputs``, ``metainfo`` and whatever
        conditions the data preprocessor adds)."""
        return self.restore(data['inputs'], data['metainfo'])

    def _eval_rng(self):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        return torch.random.fork_rng(devices=devices)

    @torch.no_grad()
    def _predict(self, data: dict) -> List[dict]:
        with self._eval_rng():
            torch.manual_seed(self.eval_seed)
            sr = self.restore_batch(data)
        return pack_outputs(sr, data)

    def val_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def test_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def forward(self, inputs: Tensor, data_samples: Optional[list] = None, mode: str = 'tensor'):
        """``mode='tensor'``/``'predict'``: restored images ``B x 3 x H x W`` in [0, 1]."""
        if mode in ('tensor', 'predict'):
            return self.restore(inputs, data_samples)
        raise ValueError(f'{type(self).__name__}.forward supports mode="tensor"/"predict"; '
                         'training goes through train_step')
