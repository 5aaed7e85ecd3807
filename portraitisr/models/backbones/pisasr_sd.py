"""PiSA-SR backbone: SD 2.1 with a pixel-level and a semantic-level LoRA on the UNet, one step at ``t = 1``.

Sun et al., "Pixel-level and Semantic-level Adjustable Super-resolution: A Dual-LoRA Approach" (CVPR 2025,
arXiv 2412.03017); reference code csslc/PiSA-SR ``pisasr.py``.
It is :class:`OneStepSD` with another adapter layout and another one-step update:

* six UNet adapters: OSEDiff's encoder / decoder / others split of the same modules, once for the pixel LoRA
  (``default_*_pix``) and once for the semantic LoRA (``default_*_sem``), rank 4 each, peft's default
  ``lora_alpha`` 8; no VAE LoRA and no trainable ``conv_in`` (the VAE is frozen, ``vae_fix``);
* ``z_L = E(x_L)`` (posterior *sample*), ``eps = eps_theta(z_L, t=1, c)`` and the plain residual
  ``z_H = z_L - eps`` (``PiSASR.forward`` / ``PiSASR_eval.forward``: no scheduler step, no alpha-bar scaling);
* adjustable guidance at test time (``PiSASR_eval._predict_no_tiling``)::

      eps_pix = eps_{W0 + dW_pix}(z_L, 1, c)             # pixel LoRA only
      eps_sem = eps_{W0 + dW_pix + dW_sem}(z_L, 1, c)    # both LoRAs
      eps     = lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix)

  With ``lambda_pix = lambda_sem = 1`` this is ``eps_sem``: one UNet pass (the reference's ``--default`` setting),
  which is what :meth:`PiSASD.predict_eps` runs at (1, 1); any other pair costs two passes.
"""
import contextlib
import copy
import math
import warnings
from typing import Dict, Iterator, List, Optional, Union

import torch
from torch import Tensor, nn

from portraitisr.registry import BACKBONES
from .lora_targets import PISASR_PIXEL_ADAPTERS, PISASR_SEMANTIC_ADAPTERS, pisasr_unet_lora_targets
from .one_step_sd import OneStepSD, _lora_config, parse_dtype, use_sdpa_attention
from .pisasr_checkpoint import load_pisasr_checkpoint

PISASR_ADAPTERS = PISASR_PIXEL_ADAPTERS + PISASR_SEMANTIC_ADAPTERS


@BACKBONES.register_module()
class PiSASD(OneStepSD):
    """SD UNet + VAE with PiSA-SR's dual LoRA: one step, adjustable pixel / semantic guidance.

    Args:
        pretrained / unet_cfg / vae_cfg / scheduler_cfg / frozen_dtype / gradient_checkpointing / init_seed:
            as :class:`OneStepSD`.
        timestep: the fixed timestep (PiSA-SR ``timesteps1 = 1``).
        lora_rank_pix / lora_rank_sem: ranks of the pixel and semantic adapters (PiSA-SR: 4 and 4,
            ``--lora_rank_unet_pix`` / ``--lora_rank_unet_sem``).
        lora_alpha: LoRA alpha of every adapter; PiSA-SR never sets it, so peft's default 8 applies
            (scaling ``8 / 4 = 2``).
        lambda_pix / lambda_sem: the test-time guidance scales (PiSA-SR ``--lambda_pix 1.0 --lambda_sem 1.0``);
            change them with :meth:`set_guidance`. Training ignores them (it always runs both LoRAs once).
        sample_posterior: ``latent_dist.sample()`` as PiSA-SR (train and test), rather than ``mode()``.
        trained_weights: an official ``pisa_sr.pkl`` (:func:`load_pisasr_checkpoint`) or a ``.safetensors``
            written by :meth:`save_trainable`, resolved by the weight resolver.

    ``forward(lq, prompt_embeds)`` is :meth:`OneStepSD.forward`: ``B x 3 x H x W`` in [0, 1] at the output size
    (H, W multiples of 8) -> ``sr`` float32 in [0, 1] (and ``z_H`` with ``return_latents``).
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 unet_cfg: Optional[dict] = None,
                 vae_cfg: Optional[dict] = None,
                 scheduler_cfg: Optional[dict] = None,
                 timestep: int = 1,
                 lora_rank_pix: int = 4,
                 lora_rank_sem: int = 4,
                 lora_alpha: float = 8.0,
                 lambda_pix: float = 1.0,
                 lambda_sem: float = 1.0,
                 frozen_dtype: str = 'float32',
                 gradient_checkpointing: bool = False,
                 sample_posterior: bool = True,
                 init_seed: int = 0,
                 trained_weights: Optional[str] = None) -> None:
        # Read by ``add_unet_lora``, which ``OneStepSD.__init__`` calls.
        self.lora_rank_sem = int(lora_rank_sem)
        self.set_guidance(lambda_pix, lambda_sem)
        super().__init__(pretrained=pretrained, unet_cfg=unet_cfg, vae_cfg=vae_cfg, scheduler_cfg=scheduler_cfg,
                         in_channels=4, timestep=timestep, lora_rank=lora_rank_pix, lora_alpha=lora_alpha,
                         train_vae_encoder_lora=False, train_conv_in=False, frozen_dtype=frozen_dtype,
                         gradient_checkpointing=gradient_checkpointing, sample_posterior=sample_posterior,
                         init_seed=init_seed, trained_weights=trained_weights)

    @property
    def lora_rank_pix(self) -> int:
        return self.lora_rank

    # ------------------------------------------------------------------ adapters
    def add_unet_lora(self, rank: int, alpha: float) -> Dict[str, List[str]]:
        """PiSA-SR ``initialize_unet``: pixel adapters then semantic adapters, all active (and trainable)."""
        targets = pisasr_unet_lora_targets(self.unet)
        ranks = dict.fromkeys(PISASR_PIXEL_ADAPTERS, rank)
        ranks.update(dict.fromkeys(PISASR_SEMANTIC_ADAPTERS, self.lora_rank_sem))
        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first: six adapters are PiSA-SR's design.
            warnings.filterwarnings('ignore', message='Already found a `peft_config`')
            for name in PISASR_ADAPTERS:
                self.unet.add_adapter(_lora_config(ranks[name], alpha, targets[name]), adapter_name=name)
        self.unet.set_adapter(list(PISASR_ADAPTERS))  # ``add_adapter`` activates only the newest one
        return targets

    def adapter_parameters(self, kind: str) -> List[nn.Parameter]:
        """The LoRA parameters of the pixel (``'pix'``) or semantic (``'sem'``) adapters."""
        names = {'pix': PISASR_PIXEL_ADAPTERS, 'sem': PISASR_SEMANTIC_ADAPTERS}.get(kind)
        if names is None:
            raise ValueError(f"kind must be 'pix' or 'sem', got {kind!r}")
        return [p for n, p in self.unet.named_parameters() if any(f'.{a}.' in n for a in names)]

    @contextlib.contextmanager
    def _adapters(self, active: Optional[List[str]]) -> Iterator[nn.Module]:
        """Run ``self.unet`` with only ``active`` adapters (None: none, i.e. the frozen SD UNet), then restore all
        six. peft's switches also set ``requires_grad``; the flags are put back as they were."""
        self._check_trainable()
        if self._lora_merged:
            raise RuntimeError('LoRA is merged into the base weights (merge_lora): the pixel-only and frozen UNets '
                               'are not available; call unmerge_lora() or use inference_copy()')
        flags = [(p, p.requires_grad) for p in self.unet.parameters()]
        try:
            if active is None:
                self.unet.disable_adapters()
            else:
                self.unet.set_adapter(list(active))
            yield self.unet
        finally:
            if active is None:
                self.unet.enable_adapters()
            self.unet.set_adapter(list(PISASR_ADAPTERS))
            for param, flag in flags:
                param.requires_grad_(flag)

    @contextlib.contextmanager
    def pixel_unet(self) -> Iterator[nn.Module]:
        """The UNet with the pixel LoRA only (``W0 + dW_pix``): the peft UNet with the semantic adapters switched
        off, or the separately merged copy of an :meth:`inference_copy`."""
        if self.inference_only:
            if getattr(self, 'unet_pix', None) is None:
                raise RuntimeError('This inference copy was made at the default guidance (1, 1) and has no '
                                   'pixel-only UNet: call set_guidance(...) on the original backbone (or on the '
                                   'model), then make the copy')
            yield self.unet_pix
            return
        with self._adapters(list(PISASR_PIXEL_ADAPTERS)) as unet:
            yield unet

    @contextlib.contextmanager
    def frozen_unet(self) -> Iterator[nn.Module]:
        """The pretrained SD UNet (every adapter off): the frozen ``unet_fix`` of PiSA-SR's CSD loss, whose
        weights are this UNet's frozen base weights."""
        with self._adapters(None) as unet:
            yield unet

    # ------------------------------------------------------------------ guidance
    def set_guidance(self, lambda_pix: float = 1.0, lambda_sem: float = 1.0) -> None:
        """Set the test-time scales of the pixel and semantic LoRA (PiSA-SR ``--lambda_pix`` / ``--lambda_sem``)."""
        values = []
        for name, value in (('lambda_pix', lambda_pix), ('lambda_sem', lambda_sem)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'{name} must be a finite number, got {value!r}')
            values.append(float(value))
        self.lambda_pix, self.lambda_sem = values

    @property
    def default_guidance(self) -> bool:
        """Whether the scales are (1, 1), where the guided prediction is the single pass with both LoRAs."""
        return self.lambda_pix == 1.0 and self.lambda_sem == 1.0

    def predict_eps(self, unet_in: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                    unet: Optional[nn.Module] = None) -> Tensor:
        """``eps`` of PiSA-SR: one pass with both LoRAs at the default guidance (1, 1), else
        :meth:`guided_eps` (two passes). An explicit ``unet`` runs that UNet once."""
        if unet is not None or self.default_guidance:
            return super().predict_eps(unet_in, timesteps, prompt_embeds, unet)
        return self.guided_eps(unet_in, timesteps, prompt_embeds, self.lambda_pix, self.lambda_sem)

    def guided_eps(self, unet_in: Tensor, timesteps: Tensor, prompt_embeds: Tensor, lambda_pix: float,
                   lambda_sem: float) -> Tensor:
        """``lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix)`` (two UNet passes, any scales).

        Tiling is linear in ``eps`` (a weighted average of tiles), so guiding the blended predictions equals
        PiSA-SR's guiding of each tile.
        """
        eps_sem = super().predict_eps(unet_in, timesteps, prompt_embeds)
        with self.pixel_unet() as unet_pix:
            eps_pix = super().predict_eps(unet_in, timesteps, prompt_embeds, unet_pix)
        # the reference's order of operations: model_pred_sem -= model_pred_pix; l_pix * pix + l_sem * sem
        return lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix)

    def one_step(self, lq_latents: Tensor, eps: Tensor) -> Tensor:
        """``z_H = z_L - eps`` (PiSA-SR ``x_denoised = encoded_control - model_pred``), float32."""
        return lq_latents.float() - eps.float()

    # ------------------------------------------------------------------ inference copy
    @torch.no_grad()
    def inference_copy(self,
                       dtype: Union[str, torch.dtype] = 'bfloat16',
                       channels_last: Optional[bool] = None,
                       compile: bool = False,
                       device: Optional[Union[str, torch.device]] = None) -> 'PiSASD':
        """:meth:`OneStepSD.inference_copy` (both LoRAs merged: the default path) plus, when the guidance is not
        (1, 1), ``unet_pix``: a second merged UNet with the pixel LoRA only, for the second pass. Merging both
        once replaces PiSA-SR's swapping of weight tensors before and after every pixel pass; it costs a second
        UNet in memory (about 1.7 GB in bf16 for SD 2.1) only while the guidance is adjusted."""
        dtype = parse_dtype(dtype)
        device = torch.device(device) if device is not None else self.sqrt_alpha_bar.device
        fast = super().inference_copy(dtype, channels_last=channels_last, compile=compile, device=device)
        fast.unet_pix = None
        if not self.default_guidance:
            net = copy.deepcopy(self.unet).float()  # merge in float32, as the main copy
            net.fuse_lora(adapter_names=list(PISASR_PIXEL_ADAPTERS))
            net.unload_lora()
            net.requires_grad_(False).eval()
            use_sdpa_attention(net)
            net = nn.Module.to(net, device=device, dtype=dtype)
            if fast.channels_last:
                net.to(memory_format=torch.channels_last)
            fast.unet_pix = torch.compile(net) if compile else net
        return fast

    # ------------------------------------------------------------------ checkpoints
    def load_release_checkpoint(self, checkpoint: Union[str, Dict]) -> None:
        """Load PiSA-SR's ``pisa_sr.pkl`` (path or loaded dict), strictly."""
        self._check_trainable()
        load_pisasr_checkpoint(self, checkpoint)
