"""Multi-step latent diffusion backbones (SD 2.1 or SDXL): a UNet, its VAE and the DDPM noise schedule.

AuthFace (arXiv 2410.09864) trains a text-to-image UNet twice: stage I fine-tunes the whole UNet on captioned portraits
(section 3.1, :class:`LatentDiffusion`), stage II freezes it and trains a ControlNet that reads the degraded image
(section 3.2, :class:`ControlNetDiffusion`). Both use the standard DDPM epsilon objective (Ho et al. 2020)::

    z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps,   L_noise = || eps - eps_theta(z_t, t, c) ||^2   (paper Eq. 1)

SD 2.1 and SDXL differ only in the UNet's conditioning: an SDXL UNet (``addition_embed_type='text_time'``) also
takes ``added_cond_kwargs = {'text_embeds': pooled prompt (B x 1280), 'time_ids': B x 6}``; :meth:`added_conditions`
builds them (``None`` for SD 2.1), so the same code trains and samples both (:mod:`.sdxl_architecture`).
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import BACKBONES
from portraitisr.weights import load_state_dict, resolve_file
from .latent_tiling import LatentTiling, tiled_vae_decode
from .one_step_sd import build_sd_components, cast_for_training, frozen_dtype_autocast, parse_dtype
from .sdxl_architecture import sdxl_time_ids

#: Key prefixes under which a UNet's weights may sit in a checkpoint: our stage-I training checkpoints
#: (``backbone.unet.``), a model without a backbone (``unet.``), or a bare diffusers UNet state dict.
UNET_KEY_PREFIXES = ('backbone.unet.', 'unet.', '')


def load_unet_weights(unet: nn.Module, spec: str) -> None:
    """Load a fine-tuned UNet into ``unet``: a training checkpoint of :class:`AuthFaceFineTune` (its
    ``state_dict`` holds ``backbone.unet.*``), or a ``.safetensors`` / ``.pth`` UNet state dict. Loaded with the
    safe loader (``weights_only``); every UNet key must be present (a clear error names what is missing)."""

    state = load_state_dict(resolve_file(spec))
    if isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    expected = unet.state_dict()
    for prefix in UNET_KEY_PREFIXES:
        found = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if found and all(key in found for key in expected):
            break
    else:
        missing = [key for key in expected if key not in state and f'backbone.unet.{key}' not in state]
        raise KeyError(f'{spec}: no complete UNet state dict (tried key prefixes {list(UNET_KEY_PREFIXES)}); '
                       f'{len(missing)} UNet keys missing, e.g. {missing[:3]}')
    for key, value in expected.items():
        if found[key].shape != value.shape:
            raise ValueError(f'{spec}: {key} has shape {tuple(found[key].shape)}, the UNet expects '
                             f'{tuple(value.shape)} (a checkpoint of another architecture?)')
    unet.load_state_dict({key: found[key] for key in expected}, strict=True)


@BACKBONES.register_module()
class LatentDiffusion(nn.Module):
    """UNet + frozen VAE + DDPM schedule; the UNet is trained whole (AuthFace stage I) or frozen.

    Args:
        pretrained: an SD 2.1 / SDXL diffusers folder or hub id (resolved offline), or None for inline configs.
        unet_cfg / vae_cfg / scheduler_cfg: inline diffusers configs (tests, debug configs; ``scheduler_cfg``
            also overrides keys of a pretrained scheduler).
        unet_weights: a fine-tuned UNet to load after building (see :func:`load_unet_weights`), e.g. the stage-I
            checkpoint that stage II starts from.
        train_unet: whether the UNet's parameters train (stage I) or stay frozen (stage II).
        frozen_dtype: dtype of the frozen networks (``'float32'``, ``'bfloat16'``; fp16 overflows in the SDXL VAE);
            trainable weights stay float32 and the forward runs under autocast.
        gradient_checkpointing: diffusers' activation checkpointing in the UNet (and the ControlNet); SDXL at
            1024 px needs it.
        sample_posterior: encode images with ``latent_dist.sample()`` (as diffusers' training scripts) rather than
            ``mode()``.
        init_seed: seed of the random weights of inline configs.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 unet_cfg: Optional[dict] = None,
                 vae_cfg: Optional[dict] = None,
                 scheduler_cfg: Optional[dict] = None,
                 unet_weights: Optional[str] = None,
                 train_unet: bool = True,
                 frozen_dtype: str = 'float32',
                 gradient_checkpointing: bool = False,
                 sample_posterior: bool = True,
                 init_seed: int = 0) -> None:
        super().__init__()
        if pretrained is None and (unet_cfg is None or vae_cfg is None):
            raise ValueError(f'{type(self).__name__} needs `pretrained` (an SD / SDXL folder or hub id) or both '
                             '`unet_cfg` and `vae_cfg` (inline diffusers configs).')
        self.frozen_dtype = parse_dtype(frozen_dtype)
        self.sample_posterior = sample_posterior
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            parts = build_sd_components(pretrained, unet_cfg, vae_cfg, scheduler_cfg)
        self.unet, self.vae, self.scheduler = parts['unet'], parts['vae'], parts['scheduler']
        if unet_weights is not None:
            load_unet_weights(self.unet, unet_weights)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(train_unet)
        self.build_extra_networks(init_seed)
        self.register_buffer('alphas_cumprod', self.scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        cast_for_training(self.vae, self.frozen_dtype)
        cast_for_training(self.unet, self.frozen_dtype)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if hasattr(self, 'controlnet'):
                self.controlnet.enable_gradient_checkpointing()

    def build_extra_networks(self, init_seed: int) -> None:
        """Networks a subclass adds once the UNet holds its final weights (the ControlNet)."""

    # ------------------------------------------------------------------ properties
    @property
    def is_sdxl(self) -> bool:
        """Whether the UNet takes SDXL's added text/time embeddings."""
        return self.unet.config.get('addition_embed_type') == 'text_time'

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    @property
    def vae_downscale(self) -> int:
        return 2**(len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_downscale(self) -> int:
        return 2**(len(self.unet.config.block_out_channels) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def pooled_dim(self) -> Optional[int]:
        """Width of SDXL's ``text_embeds`` the UNet expects (None for SD 2.1)."""
        if not self.is_sdxl:
            return None
        config = self.unet.config
        return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim

    def autocast(self, device: torch.device):
        return frozen_dtype_autocast(self.frozen_dtype, device)

    # ------------------------------------------------------------------ conditioning
    def added_conditions(self, pooled: Optional[Tensor], height: int, width: int) -> Optional[Dict[str, Tensor]]:
        """SDXL's ``added_cond_kwargs`` for images of ``height x width`` pixels: the pooled prompt and
        ``time_ids = (H, W, 0, 0, H, W)`` (a fixed-resolution crop, paper section 3.1: "we fix the resolution of
        training images instead of multi-aspect training"); None for SD 2.1."""
        if not self.is_sdxl:
            return None
        if pooled is None:
            raise ValueError('an SDXL UNet needs the pooled prompt embedding (use SDXLTextEncoder)')
        time_ids = sdxl_time_ids(pooled.shape[0], (height, width), (0, 0), (height, width), device=pooled.device)
        return dict(text_embeds=pooled, time_ids=time_ids)

    # ------------------------------------------------------------------ maths
    def encode(self, images: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """Images ``B x 3 x H x W`` in [0, 1] -> scaled latents ``B x 4 x H/8 x W/8`` (no gradient).

        ``noise`` (``B x 4 x H/8 x W/8``) draws the posterior sample ``mean + std * noise`` when given (a seeded
        draw); otherwise ``sample()`` from torch's generator, or ``mode()`` without ``sample_posterior``."""
        with torch.no_grad(), self.autocast(images.device):
            posterior = self.vae.encode(images * 2 - 1).latent_dist
        if not self.sample_posterior:
            latents = posterior.mode()
        elif noise is not None:
            latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        else:
            latents = posterior.sample()
        return latents.float() * self.scaling_factor

    def decode(self, latents: Tensor, tiling: Optional[LatentTiling] = None) -> Tensor:
        """Scaled latents -> images in [0, 1] (clamped in [-1, 1] first); tiled with ``tiling``."""
        z = latents / self.scaling_factor
        with torch.no_grad(), self.autocast(latents.device):
            if tiling is not None:
                images = tiled_vae_decode(self.vae, z.to(self.vae.dtype), tiling.decode_tile, tiling.decode_overlap,
                                          tiling.margin(tiling.decode_overlap), tiling.decode_group_norm)
            else:
                images = self.vae.decode(z.to(self.vae.dtype)).sample
        return (images.float().clamp(-1, 1) + 1) / 2

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """DDPM forward process ``sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (= ``DDPMScheduler.add_noise``)."""
        abar = self.alphas_cumprod[timesteps.to(self.alphas_cumprod.device)].view(-1, 1, 1, 1).to(latents.device)
        return abar.sqrt() * latents.float() + (1 - abar).sqrt() * noise.float()

    def unet_eps(self, noisy: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                 added_cond_kwargs: Optional[Dict[str, Tensor]] = None, **residuals) -> Tensor:
        """The UNet's noise prediction (float32), with optional ControlNet residuals."""
        with self.autocast(noisy.device):
            return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds,
                             added_cond_kwargs=added_cond_kwargs, **residuals).sample.float()

    def predict_eps(self, noisy: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                    added_cond_kwargs: Optional[Dict[str, Tensor]] = None, **kwargs) -> Tensor:
        """``eps_theta(z_t, t, c)``: ``B x 4 x h x w`` float32."""
        return self.unet_eps(noisy, timesteps, prompt_embeds, added_cond_kwargs)

    def forward(self, noisy: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                added_cond_kwargs: Optional[Dict[str, Tensor]] = None, **kwargs) -> Tensor:
        """:meth:`predict_eps` (through ``forward``, so distributed wrappers see the trainable path)."""
        return self.predict_eps(noisy, timesteps, prompt_embeds, added_cond_kwargs, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> Dict[str, Tensor]:
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}


@BACKBONES.register_module()
class ControlNetDiffusion(LatentDiffusion):
    """A frozen UNet steered by a trainable ControlNet that reads a condition image (AuthFace stage II).

    The ControlNet is diffusers' ``ControlNetModel.from_unet``: a copy of the UNet's encoder (``conv_in``, time and
    added embeddings, down blocks, mid block) with the UNet's weights, a conditioning embedding for the image, and
    zero-initialised 1x1 convolutions on every residual it adds to the UNet's skip connections (ControlNet,
    Zhang et al. 2023). At initialisation every residual is exactly zero, so the controlled UNet predicts what the
    frozen UNet alone does. Paper section 3.2: "we freeze the parameters of our fine-tuned SDXL model ... We
    initialize ControlNet with the encoder from our fine-tuned SDXL model while solely training ControlNet."

    Args:
        conditioning_channels: channels of the condition image (3: the degraded RGB image).
        conditioning_embedding_out_channels: widths of the conditioning embedding (diffusers' default
            ``(16, 32, 96, 256)``: three stride-2 steps, so the condition image is 8x the latent, i.e. the image
            size when the VAE downscales by 8).
        conditioning_scale: factor on the residuals at inference (1: as trained).
        Other arguments: as :class:`LatentDiffusion` (``train_unet`` defaults to False).
    """

    def __init__(self,
                 *args,
                 conditioning_channels: int = 3,
                 conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
                 conditioning_scale: float = 1.0,
                 train_unet: bool = False,
                 **kwargs) -> None:
        self._controlnet_args = dict(conditioning_channels=int(conditioning_channels),
                                     conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels))
        self.conditioning_scale = float(conditioning_scale)
        super().__init__(*args, train_unet=train_unet, **kwargs)

    def build_extra_networks(self, init_seed: int) -> None:
        from diffusers import ControlNetModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed + 1)  # the conditioning embedding's random (non-zero) layers
            self.controlnet = ControlNetModel.from_unet(self.unet, load_weights_from_unet=True,
                                                        **self._controlnet_args)
        self.controlnet.requires_grad_(True)
        factor = 2**(len(self._controlnet_args['conditioning_embedding_out_channels']) - 1)
        if factor != self.vae_downscale:
            raise ValueError(f'the conditioning embedding downscales by {factor} but the VAE by {self.vae_downscale}: '
                             'give conditioning_embedding_out_channels one entry per VAE downscale step plus one '
                             '(the condition image must match the image the latent comes from)')

    @property
    def condition_downscale(self) -> int:
        return 2**(len(self._controlnet_args['conditioning_embedding_out_channels']) - 1)

    def controlnet_residuals(self, noisy: Tensor, timesteps: Tensor, prompt_embeds: Tensor, control: Tensor,
                             added_cond_kwargs: Optional[Dict[str, Tensor]] = None,
                             conditioning_scale: Optional[float] = None) -> Dict[str, object]:
        """The ControlNet's residuals for the UNet's skip connections and mid block (keyword arguments of the
        UNet's forward). ``control``: ``B x 3 x H x W`` in [0, 1] at ``condition_downscale`` x the latent size."""
        expected = (noisy.shape[-2] * self.condition_downscale, noisy.shape[-1] * self.condition_downscale)
        if tuple(control.shape[-2:]) != expected:
            raise ValueError(f'control image {tuple(control.shape[-2:])} must be {expected} for latents '
                             f'{tuple(noisy.shape[-2:])}')
        scale = self.conditioning_scale if conditioning_scale is None else conditioning_scale
        with self.autocast(noisy.device):
            down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=prompt_embeds, controlnet_cond=control,
                                        conditioning_scale=scale, added_cond_kwargs=added_cond_kwargs,
                                        return_dict=False)
        return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def predict_eps(self, noisy: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                    added_cond_kwargs: Optional[Dict[str, Tensor]] = None, control: Optional[Tensor] = None,
                    conditioning_scale: Optional[float] = None) -> Tensor:
        """``eps_theta(z_t, t, c, control)``: the frozen UNet with the ControlNet's residuals (float32)."""
        if control is None:
            raise ValueError('ControlNetDiffusion needs the control image (`control=`)')
        residuals = self.controlnet_residuals(noisy, timesteps, prompt_embeds, control, added_cond_kwargs,
                                              conditioning_scale)
        return self.unet_eps(noisy, timesteps, prompt_embeds, added_cond_kwargs, **residuals)


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Reflect-pad ``B x C x H x W`` at the bottom and right to multiples of ``multiple``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return images
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
