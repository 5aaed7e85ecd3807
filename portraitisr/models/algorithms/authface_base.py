"""What AuthFace's two stages share: a text-conditioned latent diffusion backbone, prompts, noise and sampling.

Stage I (:class:`~portraitisr.models.algorithms.AuthFaceFineTune`) and stage II
(:class:`~portraitisr.models.algorithms.AuthFace`) of AuthFace (arXiv 2410.09864) both train a diffusers UNet (SD 2.1 or
SDXL) with the DDPM noise loss (Eq. 1) and sample with a diffusers scheduler. This base holds the backbone
(:class:`~portraitisr.models.backbones.LatentDiffusion` or :class:`~portraitisr.models.backbones.ControlNetDiffusion`),
the frozen text encoder (``CLIPTextEncoder`` for SD 2.1, ``SDXLTextEncoder`` for SDXL) and the prompter, and:

* :meth:`prompt_conditions`: cross-attention states and, for SDXL, ``added_cond_kwargs``;
* :meth:`training_draws`: the VAE posterior noise, timesteps ``t ~ U{0, ..., T-1}`` (DDPM) and noise of a batch,
  from torch's generator, or with ``noise_seed`` from one generator per sample seeded by ``(noise_seed, iteration,
  dataset index)``, so that a training run does not depend on how its batches are split across processes (the
  sharded-training test compares 2 processes with 1);
* :meth:`denoise`: a diffusers scheduler's sampling loop (any scheduler class, any step count).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch import Tensor, nn

from portraitisr.registry import BACKBONES, MODELS, PROMPTERS, TEXT_ENCODERS

#: seed mixing constants of the per-sample generators (two primes; any fixed odd numbers would do)
_SEED_MIX = (1_000_003, 998_244_353)


def build_scheduler(cfg: dict, base_config) -> object:
    """A diffusers scheduler from ``dict(type='DDIMScheduler', **overrides)`` on the training schedule's config
    (same betas and timestep count); a clear error names the type when it is not a diffusers scheduler."""
    import diffusers

    cfg = dict(cfg)
    name = cfg.pop('type', None)
    scheduler_class = getattr(diffusers, str(name), None)
    if scheduler_class is None or not hasattr(scheduler_class, 'from_config') or not name.endswith('Scheduler'):
        raise KeyError(f'inference_scheduler type {name!r} is not a diffusers scheduler class (e.g. DDIMScheduler, '
                       'DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler)')
    return scheduler_class.from_config(base_config, **cfg)


def _stack_images(images) -> Tensor:
    if isinstance(images, Tensor):
        return images.float()
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise ValueError(f'images of one batch must share a size, got {sorted(sizes)}: crop in the dataset')
    return torch.stack(list(images)).float()


def _metainfo_list(metainfo, batch: int) -> List[dict]:
    if metainfo is None:
        return [{} for _ in range(batch)]
    if isinstance(metainfo, dict):  # pseudo_collate's dict of lists
        return [{key: values[i] for key, values in metainfo.items()} for i in range(batch)]
    return list(metainfo)


class TextConditionedDiffusion(BaseModel):
    """Base of AuthFace's stage-I and stage-II models.

    Args:
        backbone: ``BACKBONES`` config of a ``LatentDiffusion`` / ``ControlNetDiffusion``.
        text_encoder: ``TEXT_ENCODERS`` config (frozen, cached).
        prompter: ``PROMPTERS`` config (default: the null prompt).
        noise_seed: see the module docstring (None: torch's generator, which mmengine seeds per rank).
        inference_scheduler: diffusers scheduler config ``dict(type=..., **overrides)`` for sampling.
        num_inference_steps: sampling steps.
        eval_seed: seed of the initial noise (and stochastic steps) at validation / test.
        data_preprocessor: mmengine data preprocessor config.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 prompter: Optional[dict] = None,
                 noise_seed: Optional[int] = None,
                 inference_scheduler: Optional[dict] = None,
                 num_inference_steps: int = 50,
                 eval_seed: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if not isinstance(data_preprocessor, nn.Module):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='BaseDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = BACKBONES.build(backbone)
        self.text_encoder = TEXT_ENCODERS.build(text_encoder)
        self.prompter = PROMPTERS.build(prompter or dict(type='NullPrompter'))
        if self.text_encoder.embed_dim != self._backbone.cross_attention_dim:
            raise ValueError(f'text encoder width {self.text_encoder.embed_dim} != UNet cross_attention_dim '
                             f'{self._backbone.cross_attention_dim}')
        if self._backbone.is_sdxl:
            pooled = getattr(self.text_encoder, 'pooled_dim', None)
            if pooled != self._backbone.pooled_dim:
                raise ValueError(f'an SDXL UNet expects pooled text embeddings of width {self._backbone.pooled_dim}, '
                                 f'the text encoder gives {pooled} (use SDXLTextEncoder)')
        if num_inference_steps < 1:
            raise ValueError(f'num_inference_steps must be positive, got {num_inference_steps}')
        self.noise_seed = noise_seed
        self.inference_scheduler_cfg = dict(inference_scheduler or dict(type='DDIMScheduler'))
        build_scheduler(self.inference_scheduler_cfg, self._backbone.scheduler.config)  # fail early on a bad type
        self.num_inference_steps = int(num_inference_steps)
        self.eval_seed = eval_seed

    @property
    def _backbone(self):
        return getattr(self.backbone, 'module', self.backbone)

    # ------------------------------------------------------------------ prompts
    def prompt_conditions(self, prompts: Sequence[str], height: int, width: int,
                          device: torch.device) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        """Cross-attention states ``B x 77 x D`` and, for SDXL, ``added_cond_kwargs`` for ``height x width``
        images."""
        if self._backbone.is_sdxl:
            states, pooled = self.text_encoder.forward_with_pooled(list(prompts))
            states, pooled = states.to(device), pooled.to(device)
        else:
            states, pooled = self.text_encoder(list(prompts)).to(device), None
        return states, self._backbone.added_conditions(pooled, height, width)

    # ------------------------------------------------------------------ training randomness
    def _sample_generators(self, metainfo: List[dict]) -> List[torch.Generator]:
        iteration = int(MessageHub.get_current_instance().get_info('iter', 0) or 0)
        generators = []
        for info in metainfo:
            if 'index' not in info:
                raise KeyError('noise_seed needs each sample\'s dataset index in its metainfo ("index")')
            seed = ((self.noise_seed * _SEED_MIX[0] + iteration) * _SEED_MIX[1] + int(info['index'])) % 2**63
            generators.append(torch.Generator().manual_seed(seed))
        return generators

    def training_draws(self, latent_shape: Sequence[int], metainfo: List[dict],
                       device: torch.device) -> Tuple[Optional[Tensor], Tensor, Tensor]:
        """``(posterior noise or None, timesteps (B,), noise B x C x h x w)`` for one training batch."""
        batch, num_steps = latent_shape[0], self._backbone.num_train_timesteps
        if self.noise_seed is None:
            timesteps = torch.randint(0, num_steps, (batch, ), device=device)
            return None, timesteps, torch.randn(tuple(latent_shape), device=device)
        shape = tuple(latent_shape[1:])
        posterior, timesteps, noise = [], [], []
        for generator in self._sample_generators(metainfo):
            posterior.append(torch.randn(shape, generator=generator))
            timesteps.append(torch.randint(0, num_steps, (1, ), generator=generator))
            noise.append(torch.randn(shape, generator=generator))
        return (torch.stack(posterior).to(device), torch.cat(timesteps).to(device), torch.stack(noise).to(device))

    # ------------------------------------------------------------------ sampling
    def denoise(self, shape: Sequence[int], eps_fn: Callable[[Tensor, Tensor], Tensor], device: torch.device,
                num_inference_steps: Optional[int] = None, seed: Optional[int] = None) -> Tensor:
        """The inference scheduler's loop from pure noise: ``eps_fn(model_input, timesteps (B,)) -> eps``.

        The initial noise and any stochastic step draw from a CPU generator seeded with ``seed`` (default
        ``eval_seed``), so results do not depend on the device or on torch's global random state."""
        scheduler = build_scheduler(self.inference_scheduler_cfg, self._backbone.scheduler.config)
        scheduler.set_timesteps(num_inference_steps or self.num_inference_steps, device=device)
        generator = torch.Generator().manual_seed(self.eval_seed if seed is None else seed)
        latents = torch.randn(tuple(shape), generator=generator).to(device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            eps = eps_fn(model_input, t.reshape(1).expand(shape[0]).to(device))
            latents = scheduler.step(eps, t, latents, generator=generator, return_dict=False)[0]
        return latents
