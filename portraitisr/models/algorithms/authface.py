"""AuthFace stage II: a ControlNet on the frozen, face-fine-tuned UNet restores degraded faces (AuthFace, arXiv
2410.09864, §3.2).

"AuthFace: Towards Authentic Blind Face Restoration with Face-Oriented Generative Diffusion Prior", section 3.2
and Fig. 4: the HQ image is encoded by the frozen VAE (``z_0``) and noised to ``z_t`` at a random ``t``; the
ControlNet (initialised from the stage-I UNet's encoder, :class:`~portraitisr.models.backbones.ControlNetDiffusion`)
reads the degraded image ``c``, the frozen UNet gets the null prompt ``[""]`` and the ControlNet's residuals, and

    L_total = L_noise + L_facial,   L_noise = || eps - eps_theta(z_t, t, [""], c) ||^2   (Eq. 1)

with ``L_facial`` the time-aware latent facial feature loss (Eq. 2-4,
:class:`~portraitisr.models.losses.TimeAwareFacialLoss`) on the DDIM estimate ``z0_pred`` of Eq. 2; only the
ControlNet (``optim_wrapper['backbone']``) and the eye / mouth discriminators (``optim_wrapper['facial_loss']``)
train. Section 4.1: AdamW, lr 2e-5, batch 48, 512 x 512, four GPUs; FFHQ resized to 512 with GFP-GAN's
degradations.

Inference: pure noise denoised by a configurable diffusers scheduler in a configurable number of steps (the paper
states neither; the configs say what they use), conditioned on the LQ image at the output size. Large images run
tile by tile: at every step the ControlNet and the UNet see overlapping latent tiles (with the matching crops of the
condition image) blended with the feathered ramps of :mod:`portraitisr.utils.tiling`, and the VAE decodes
with :func:`~portraitisr.models.backbones.latent_tiling.tiled_vae_decode`; sizes come from
:class:`~portraitisr.models.backbones.LatentTiling` (``unet_tile`` / ``unet_overlap`` / ``decode_*``).
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from portraitisr.models.backbones.latent_diffusion import pad_to_multiple
from portraitisr.models.backbones.latent_tiling import LatentTiling
from portraitisr.models.losses.time_aware_facial_loss import ddim_predicted_x0
from portraitisr.utils.tiling import blend_tiles, tile_starts
from portraitisr.registry import MODELS
from .authface_base import TextConditionedDiffusion
from .authface_facial_terms import FacialLossTerms
from .one_step_restorer import pack_outputs


@MODELS.register_module()
class AuthFace(FacialLossTerms, TextConditionedDiffusion):
    """AuthFace's ControlNet restorer: training (noise + facial loss) and multi-step inference.

    Args:
        backbone: ``ControlNetDiffusion`` config (the frozen stage-I UNet via ``unet_weights``, or the base
            model for Table 2 (a)).
        text_encoder / prompter: the frozen text encoder and the prompter (default: the null prompt, as the paper).
        facial_loss: ``TimeAwareFacialLoss`` config, or None (Table 2 (a) / (b)).
        inference_scheduler / num_inference_steps / eval_seed / noise_seed: see :class:`TextConditionedDiffusion`.
        tiling: :class:`LatentTiling` fields for large images at inference (None: untiled).
        data_preprocessor: default ``PortraitDataPreprocessor`` (LQ made on the device, GT landmarks).

    ``train_step`` expects an ``OptimWrapperDict`` with ``backbone`` (the ControlNet's parameters are the
    backbone's only trainable ones) and, with a facial loss, ``facial_loss``.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 prompter: Optional[dict] = None,
                 facial_loss: Optional[dict] = None,
                 inference_scheduler: Optional[dict] = None,
                 num_inference_steps: int = 50,
                 eval_seed: int = 0,
                 noise_seed: Optional[int] = None,
                 tiling: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone, text_encoder, prompter=prompter, noise_seed=noise_seed,
                         inference_scheduler=inference_scheduler, num_inference_steps=num_inference_steps,
                         eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor or dict(type='PortraitDataPreprocessor'),
                         init_cfg=init_cfg)
        if not hasattr(self._backbone, 'controlnet'):
            raise ValueError('AuthFace needs a ControlNetDiffusion backbone')
        self.build_facial_loss(facial_loss)
        self.tiling: Optional[LatentTiling] = None
        self.set_tiling(tiling)

    def set_tiling(self, tiling: Union[LatentTiling, dict, None] = None, **kwargs) -> None:
        """Tile the ControlNet + UNet steps and the VAE decoder at inference (None: off)."""
        if isinstance(tiling, dict) or (tiling is None and kwargs):
            tiling = LatentTiling(**dict(tiling or {}, **kwargs))
        self.tiling = tiling

    # ------------------------------------------------------------------ training
    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        lq, gt, metainfo = data['inputs'], data['gt'], data['metainfo']
        backbone = self._backbone
        factor = backbone.vae_downscale
        if gt.shape[-1] % factor or gt.shape[-2] % factor:
            raise ValueError(f'training crops must be multiples of {factor} pixels, got {tuple(gt.shape[-2:])}')
        latent_shape = (gt.shape[0], backbone.vae.config.latent_channels, gt.shape[-2] // factor,
                        gt.shape[-1] // factor)
        posterior_noise, timesteps, noise = self.training_draws(latent_shape, metainfo, gt.device)
        latents = backbone.encode(gt, posterior_noise)
        noisy = backbone.add_noise(latents, noise, timesteps)
        prompts = self.prompter(gt if self.prompter.use_gt_in_training else lq, metainfo)
        states, added = self.prompt_conditions(prompts, gt.shape[-2], gt.shape[-1], gt.device)

        wrapper = optim_wrapper['backbone']
        with wrapper.optim_context(self.backbone):
            eps = self.backbone(noisy, timesteps, states, added, control=lq)
            losses = dict(loss_noise=F.mse_loss(eps.float(), noise.float()))
            if self.facial_loss is not None:
                pred_latents = ddim_predicted_x0(noisy, eps, backbone.alphas_cumprod, timesteps)  # Eq. 2
                losses.update(self.facial_generator_terms(pred_latents, data, gt_latents=latents,
                                                          timesteps=timesteps,
                                                          num_train_timesteps=backbone.num_train_timesteps))
            loss, log_vars = self.parse_losses(losses)
        wrapper.update_params(loss)
        log_vars.update(self.facial_discriminator_step(optim_wrapper))
        return log_vars

    # ------------------------------------------------------------------ inference
    def _eps_fn(self, control: Tensor, states: Tensor, pooled_added: Optional[Dict[str, Tensor]]):
        """``eps_fn(latents, timesteps)`` of the sampling loop, tiled with ``self.tiling``."""
        backbone = self._backbone
        tiling = self.tiling
        scale = backbone.condition_downscale

        def added_for(height: int, width: int) -> Optional[Dict[str, Tensor]]:
            if pooled_added is None:
                return None
            return backbone.added_conditions(pooled_added['text_embeds'], height, width)

        def eps_fn(latents: Tensor, timesteps: Tensor) -> Tensor:
            h, w = latents.shape[-2:]
            if tiling is None or (h <= tiling.unet_tile and w <= tiling.unet_tile):
                return backbone.predict_eps(latents, timesteps, states, added_for(h * scale, w * scale),
                                            control=control)
            align = backbone.unet_downscale
            tile = tiling.unet_tile // align * align
            tile_h, tile_w = min(tile, h), min(tile, w)
            ys, xs = tile_starts(h, tile_h, tiling.unet_overlap, align), tile_starts(w, tile_w, tiling.unet_overlap,
                                                                                     align)
            added = added_for(tile_h * scale, tile_w * scale)
            results = (backbone.predict_eps(latents[..., y:y + tile_h, x:x + tile_w], timesteps, states, added,
                                            control=control[..., scale * y:scale * (y + tile_h),
                                                            scale * x:scale * (x + tile_w)])
                       for y in ys for x in xs)
            return blend_tiles(results, ys, xs, (tile_h, tile_w), (h, w), tiling.unet_overlap,
                               tiling.margin(tiling.unet_overlap))
        return eps_fn

    @torch.no_grad()
    def restore(self, lq: Tensor, metainfo: Optional[List[dict]] = None, num_inference_steps: Optional[int] = None,
                seed: Optional[int] = None) -> Tensor:
        """Restore ``lq`` (``B x 3 x H x W`` in [0, 1], at the output size): ``B x 3 x H x W`` in [0, 1].

        Sizes that are not multiples of the VAE factor times the UNet's downscale are reflect-padded and cropped
        back. The initial noise is seeded with ``seed`` (default ``eval_seed``)."""
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f'lq must be B x 3 x H x W, got {tuple(lq.shape)}')
        backbone = self._backbone
        metainfo = metainfo or [{} for _ in range(lq.shape[0])]
        h, w = lq.shape[-2:]
        align = backbone.vae_downscale * backbone.unet_downscale
        control = pad_to_multiple(lq.float(), align)
        height, width = control.shape[-2:]
        prompts = self.prompter(lq, metainfo)
        states, added = self.prompt_conditions(prompts, height, width, lq.device)
        factor = backbone.vae_downscale
        shape = (lq.shape[0], backbone.unet.config.in_channels, height // factor, width // factor)
        latents = self.denoise(shape, self._eps_fn(control, states, added), lq.device, num_inference_steps, seed)
        return backbone.decode(latents, self.tiling)[..., :h, :w]

    def _predict(self, data: dict) -> List[dict]:
        data = self.data_preprocessor(data, False)
        return pack_outputs(self.restore(data['inputs'], data['metainfo']), data)

    def val_step(self, data) -> List[dict]:
        return self._predict(data)

    def test_step(self, data) -> List[dict]:
        return self._predict(data)

    def forward(self, inputs: Tensor, data_samples: Optional[list] = None, mode: str = 'tensor'):
        """``mode='tensor'`` / ``'predict'``: restored images ``B x 3 x H x W`` in [0, 1]."""
        if mode in ('tensor', 'predict'):
            return self.restore(inputs, data_samples)
        raise ValueError('AuthFace.forward supports mode="tensor"/"predict"; training goes through train_step')
