"""OSEDiff's variational score distillation (VSD) regulariser in latent space.

OSEDiff (cswry/OSEDiff ``osediff.py``, ``OSEDiff_reg``)
keeps two UNets beside the generator: ``unet_fix``, the frozen pretrained SD UNet, and
``unet_update``, the same SD UNet with its own rank-4 LoRA that learns the distribution of the
generator's latents by an ordinary diffusion loss. Both start from SD, not from the generator.

Here ``unet_fix`` is ``unet_update`` with its adapters switched off: the base weights are the
same frozen SD weights, so the two behave exactly as OSEDiff's pair while one UNet copy is saved.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import MODELS
from ..backbones.one_step_sd import (add_osediff_unet_lora, build_sd_components, cast_for_training,
                                     frozen_dtype_autocast, parse_dtype)


def vsd_loss(latents: Tensor, x0_update: Tensor, x0_fix: Tensor) -> Tensor:
    """OSEDiff's ``distribution_matching_loss`` given the two x0 predictions.

    ``w = mean|z - x0_fix|`` per sample, ``grad = (x0_update - x0_fix) / w`` and
    ``loss = mse(z, (z - grad).detach())``, whose gradient w.r.t. ``z`` is ``2 grad / numel``: it
    pushes the generator's latents from the regulariser's estimate towards the pretrained one.
    """
    weight = (latents - x0_fix).abs().mean(dim=(1, 2, 3), keepdim=True)
    grad = (x0_update - x0_fix) / weight
    return F.mse_loss(latents.float(), (latents - grad).detach().float())


@MODELS.register_module()
class VSDRegularizer(nn.Module):
    """LoRA-adapted SD UNet used as OSEDiff's ``unet_update`` and, adapters off, ``unet_fix``.

    Args:
        pretrained / unet_cfg / scheduler_cfg: as :class:`~portraitisr.models.OneStepSD` (it must
            be the same SD model the generator starts from).
        lora_rank / lora_alpha: OSEDiff's three UNet adapters (4 and 8).
        cfg_scale: classifier-free guidance of ``unet_fix`` (7.5), with the negative prompt as the
            unconditional branch.
        vsd_timesteps: ``t ~ randint(20, 980)`` for the VSD estimate (OSEDiff).
        frozen_dtype / gradient_checkpointing / init_seed: as the backbone.

    ``forward(latents, prompt_embeds, negative_embeds=None, mode=...)``:
        - ``mode='diffusion'``: the regulariser's epsilon-MSE on detached latents (its training loss);
        - ``mode='vsd'``: ``(x0_update, x0_fix)`` without gradients, for :func:`vsd_loss`.
    Both go through ``forward`` so that a distributed wrapper sees every use of the LoRA weights.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 unet_cfg: Optional[dict] = None,
                 scheduler_cfg: Optional[dict] = None,
                 lora_rank: int = 4,
                 lora_alpha: float = 8.0,
                 cfg_scale: float = 7.5,
                 vsd_timesteps: Tuple[int, int] = (20, 980),
                 frozen_dtype: str = 'float32',
                 gradient_checkpointing: bool = False,
                 init_seed: int = 0) -> None:
        super().__init__()
        self.cfg_scale = cfg_scale
        self.vsd_timesteps = tuple(vsd_timesteps)
        self.frozen_dtype = parse_dtype(frozen_dtype)
        with torch.random.fork_rng(devices=[]):
            # Same seed as the generator: with inline configs both start from the same "SD".
            torch.manual_seed(init_seed)
            parts = build_sd_components(pretrained, unet_cfg, None, scheduler_cfg,
                                        parts=('unet', 'scheduler'))
            self.unet, scheduler = parts['unet'], parts['scheduler']
            self.unet.requires_grad_(False)
            add_osediff_unet_lora(self.unet, lora_rank, lora_alpha)
        cast_for_training(self.unet, self.frozen_dtype)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.register_buffer('alphas_cumprod', scheduler.alphas_cumprod.float().clone(),
                             persistent=False)

    def _abar(self, timesteps: Tensor) -> Tensor:
        return self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """DDPM forward process ``sqrt(abar) z + sqrt(1 - abar) n`` (= ``DDPMScheduler.add_noise``)."""
        abar = self._abar(timesteps)
        return abar.sqrt() * latents + (1 - abar).sqrt() * noise

    def eps_to_x0(self, eps: Tensor, noisy: Tensor, timesteps: Tensor) -> Tensor:
        abar = self._abar(timesteps)
        return (noisy - (1 - abar).sqrt() * eps.float()) / abar.sqrt()

    def diffusion_loss(self, latents: Tensor, prompt_embeds: Tensor) -> Tensor:
        """Epsilon-MSE of the LoRA UNet on the generator's (detached) latents, t ~ U[0, T)."""
        latents = latents.detach().float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.num_train_timesteps, (latents.shape[0], ),
                                  device=latents.device)
        noisy = self.add_noise(latents, noise, timesteps)
        with frozen_dtype_autocast(self.frozen_dtype, latents.device):
            eps = self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample
        return F.mse_loss(eps.float(), noise)

    @torch.no_grad()
    def vsd_predictions(self, latents: Tensor, prompt_embeds: Tensor,
                        negative_embeds: Tensor) -> Tuple[Tensor, Tensor]:
        """x0 estimates of ``unet_update`` (prompt only) and ``unet_fix`` (CFG with the negative
        prompt) from the same noisy latents, ``t ~ randint(20, 980)``."""
        latents = latents.detach().float()
        low, high = self.vsd_timesteps
        timesteps = torch.randint(low, high, (latents.shape[0], ), device=latents.device)
        noise = torch.randn_like(latents)
        noisy = self.add_noise(latents, noise, timesteps)
        with frozen_dtype_autocast(self.frozen_dtype, latents.device):
            eps_update = self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample
            self.unet.disable_adapters()
            try:
                eps_uncond, eps_text = self.unet(
                    torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                    encoder_hidden_states=torch.cat([negative_embeds, prompt_embeds])).sample.chunk(2)
            finally:
                self.unet.enable_adapters()
        eps_fix = eps_uncond.float() + self.cfg_scale * (eps_text.float() - eps_uncond.float())
        return (self.eps_to_x0(eps_update, noisy, timesteps),
                self.eps_to_x0(eps_fix, noisy, timesteps))

    def forward(self, latents: Tensor, prompt_embeds: Tensor,
                negative_embeds: Optional[Tensor] = None, mode: str = 'diffusion'):
        if mode == 'diffusion':
            return self.diffusion_loss(latents, prompt_embeds)
        if mode == 'vsd':
            if negative_embeds is None:
                raise ValueError("mode='vsd' needs the negative-prompt embeddings")
            return self.vsd_predictions(latents, prompt_embeds, negative_embeds)
        raise ValueError(f"mode must be 'diffusion' or 'vsd', got {mode!r}")
