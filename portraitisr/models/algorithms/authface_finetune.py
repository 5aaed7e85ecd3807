"""AuthFace stage I: face-oriented fine-tuning of the whole text-to-image UNet (AuthFace, arXiv 2410.09864, section
3.1).

"AuthFace: Towards Authentic Blind Face Restoration with Face-Oriented Generative Diffusion Prior", sections 3.1
and 4.1: the entire SDXL UNet is fine-tuned "following their original optimization strategies" (the DDPM noise
loss) on 1.5K high-quality captioned portraits, at a fixed 1024 x 1024 resolution, AdamW with learning rate 5e-7,
batch 96, 50k iterations, four GPUs. The VAE and the text encoders stay frozen. Each image's caption comes from the
dataset (``metainfo['caption']``, e.g. a ``.txt`` file per image read by
:class:`~portraitisr.datasets.CaptionedImageDataset`) through a prompter; the photography-guided captioner
(LLaVA-1.6) itself is not part of this library: no usable model of it reaches us without a hub.

The model uses mmengine's default ``train_step`` (one optimiser: ``forward(mode='loss')``), so it runs under a
plain runner, DDP, our FSDP2 strategy (:class:`~portraitisr.engine.FSDP2Strategy`, which shards the UNet) and
mmengine's own FSDP strategy alike. ``val_step`` / ``test_step`` generate images from the batch's captions
(text-to-image, classifier-free guidance with the empty prompt as the unconditional branch).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.registry import MODELS
from .authface_base import TextConditionedDiffusion, _metainfo_list, _stack_images


@MODELS.register_module()
class AuthFaceFineTune(TextConditionedDiffusion):
    """Stage I: the DDPM noise loss on captioned HQ portraits, the whole UNet trainable.

    Args:
        backbone: ``LatentDiffusion`` config with ``train_unet=True``.
        text_encoder / prompter / noise_seed / inference_scheduler / num_inference_steps / eval_seed /
            data_preprocessor: see :class:`TextConditionedDiffusion` (the prompter reads the captions, e.g.
            ``TagPrompter(tags_key='caption', template='{tags}')``).
        guidance_scale: classifier-free guidance of :meth:`generate` (diffusers' SDXL pipeline default, 5.0).

    Batches: ``gt`` (``B x 3 x H x W`` in [0, 1], or a list of such images) and ``metainfo`` (one dict per image,
    with ``caption`` / ``index``).
    """

    def __init__(self, backbone: dict, text_encoder: dict, prompter: Optional[dict] = None,
                 noise_seed: Optional[int] = None, inference_scheduler: Optional[dict] = None,
                 num_inference_steps: int = 50, guidance_scale: float = 5.0, eval_seed: int = 0,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone, text_encoder, prompter=prompter, noise_seed=noise_seed,
                         inference_scheduler=inference_scheduler, num_inference_steps=num_inference_steps,
                         eval_seed=eval_seed, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not any(p.requires_grad for p in self._backbone.unet.parameters()):
            raise ValueError('AuthFaceFineTune trains the whole UNet: build the backbone with train_unet=True')
        self.guidance_scale = float(guidance_scale)

    def noise_loss(self, gt: Tensor, metainfo: List[dict]) -> Dict[str, Tensor]:
        """Eq. 1 (with the captions as the text condition): ``{'loss_noise': mse(eps_theta, eps)}``."""
        backbone = self._backbone
        factor = backbone.vae_downscale
        latent_shape = (gt.shape[0], backbone.vae.config.latent_channels, gt.shape[-2] // factor,
                        gt.shape[-1] // factor)
        posterior_noise, timesteps, noise = self.training_draws(latent_shape, metainfo, gt.device)
        latents = backbone.encode(gt, posterior_noise)
        noisy = backbone.add_noise(latents, noise, timesteps)
        prompts = self.prompter(gt, metainfo)
        states, added = self.prompt_conditions(prompts, gt.shape[-2], gt.shape[-1], gt.device)
        eps = self.backbone(noisy, timesteps, states, added)
        return dict(loss_noise=F.mse_loss(eps.float(), noise.float()))

    def forward(self, gt=None, metainfo=None, mode: str = 'loss', inputs=None, **kwargs):
        """``mode='loss'``: the noise loss of a batch; ``'predict'`` / ``'tensor'``: images generated from the
        batch's captions (``B x 3 x H x W`` in [0, 1])."""
        images = gt if gt is not None else inputs
        if images is None:
            raise KeyError('AuthFaceFineTune needs `gt` images')
        images = _stack_images(images)
        metainfo = _metainfo_list(metainfo, images.shape[0])
        if mode == 'loss':
            if images.shape[-1] % self._backbone.vae_downscale or images.shape[-2] % self._backbone.vae_downscale:
                raise ValueError(f'training images must be multiples of {self._backbone.vae_downscale} pixels, got '
                                 f'{tuple(images.shape[-2:])}')
            return self.noise_loss(images, metainfo)
        if mode in ('predict', 'tensor'):
            prompts = self.prompter(images, metainfo)
            return self.generate(prompts, images.shape[-2], images.shape[-1])
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], height: int, width: int, num_inference_steps: Optional[int] = None,
                 guidance_scale: Optional[float] = None, seed: Optional[int] = None) -> Tensor:
        """Text-to-image: ``len(prompts) x 3 x height x width`` in [0, 1] (sizes multiples of the VAE factor
        times the UNet's downscale)."""
        backbone = self._backbone
        align = backbone.vae_downscale * backbone.unet_downscale
        if height % align or width % align:
            raise ValueError(f'generated sizes must be multiples of {align}, got {height} x {width}')
        device = backbone.alphas_cumprod.device
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        states, added = self.prompt_conditions(list(prompts), height, width, device)
        if scale != 1:
            null_states, null_added = self.prompt_conditions([''] * len(prompts), height, width, device)
            states = torch.cat([null_states, states])
            added = None if added is None else {k: torch.cat([null_added[k], added[k]]) for k in added}

        def eps_fn(latents: Tensor, timesteps: Tensor) -> Tensor:
            if scale == 1:
                return backbone.predict_eps(latents, timesteps, states, added)
            uncond, cond = backbone.predict_eps(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                                                states, added).chunk(2)
            return uncond + scale * (cond - uncond)

        factor = backbone.vae_downscale
        shape = (len(prompts), backbone.unet.config.in_channels, height // factor, width // factor)
        latents = self.denoise(shape, eps_fn, device, num_inference_steps, seed)
        return backbone.decode(latents)

    @torch.no_grad()
    def _predict(self, data) -> List[dict]:
        data = self.data_preprocessor(data, False)
        images = _stack_images(data['gt'])
        metainfo = _metainfo_list(data.get('metainfo'), images.shape[0])
        generated = self.generate(self.prompter(images, metainfo), images.shape[-2], images.shape[-1])
        return [dict(pred=generated[i].float().cpu(), gt=images[i].float().cpu(), metainfo=metainfo[i])
                for i in range(images.shape[0])]

    def val_step(self, data) -> List[dict]:
        return self._predict(data)

    def test_step(self, data) -> List[dict]:
        return self._predict(data)
