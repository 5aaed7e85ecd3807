"""AuthFace's time-aware facial loss as an extra loss of any diffusion restorer (AuthFace, arXiv 2410.09864, section
3.2).

:class:`FacialLossTerms` is a mixin for models that own a ``facial_loss`` child
(:class:`~portraitisr.models.losses.TimeAwareFacialLoss`) and train with an ``OptimWrapperDict``. A model's
``train_step`` needs two calls, wherever its losses are::

    with generator_wrapper.optim_context(self.backbone):
        ...
        losses.update(self.facial_generator_terms(pred_latents, data))       # Eq. 4, discriminators frozen
        loss, log_vars = self.parse_losses(losses)
    generator_wrapper.update_params(loss)
    log_vars.update(self.facial_discriminator_step(optim_wrapper))          # optim_wrapper['facial_loss']

``pred_latents`` is the model's predicted clean latent: Eq. 2's DDIM estimate for a multi-step model
(:class:`~portraitisr.models.algorithms.AuthFace` passes it with its timesteps and GT latents), or the one-step
restorers' output latent ``z_H`` (OSEDiff, HeadsUp: the same closed form at their fixed timestep; the GT latents
then come from the VAE encoder with its LoRA switched off, and the timestep is the backbone's). The batch must
carry ``face_landmarks`` (``B x 5 x 2``, GT pixels) and ``has_face``: :class:`PortraitDataPreprocessor` adds them.

The discriminators train in a step of their own with ``optim_wrapper['facial_loss']`` (GFP-GAN's component
optimisers: Adam, lr 2e-3, betas (0.9, 0.99), ``train_gfpgan_v1.yml``), on the crops the generator step cut out
(the predicted ones detached), called through the child's ``forward`` so that a distributed wrapper all-reduces
their gradients.
"""
from typing import Dict, Optional

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from portraitisr.registry import LOSSES

#: optimiser key (and child name) of the facial discriminators
FACIAL_LOSS_KEY = 'facial_loss'


class FacialLossTerms:
    """Mixin: ``self.facial_loss`` (or None) and the two steps above."""

    def build_facial_loss(self, cfg: Optional[dict]) -> None:
        """Build ``self.facial_loss`` from a ``LOSSES`` config (None: no facial loss)."""
        self.facial_loss = LOSSES.build(cfg) if cfg else None

    @property
    def _facial_loss(self):
        """The loss module itself (``MMSeparateDistributedDataParallel`` wraps the child in DDP)."""
        return getattr(self.facial_loss, 'module', self.facial_loss)

    # ------------------------------------------------------------------ defaults for one-step backbones
    def check_one_step_facial_loss(self) -> None:
        """A one-step restorer predicts at one fixed timestep (OSEDiff: 999 of 1000), where Eq. 3's logit-normal
        weight is about 2e-10: the loss would silently vanish. Refuse it; the constant weight is what applies."""
        loss = self._facial_loss
        if loss is None or loss.time_weighting == 'constant':
            return
        t = torch.tensor([self._backbone.timestep])
        weight = float(loss.time_weight(t, self.facial_num_train_timesteps())[0])
        if weight < 1e-3:
            raise ValueError(f'facial_loss: a one-step restorer predicts at the fixed timestep {int(t)}, where the '
                             f"logit-normal weight of Eq. 3 is {weight:.2g}; use time_weighting='constant'")

    def facial_target_latents(self, gt: Tensor) -> Tensor:
        """GT latents ``B x 4 x H/8 x W/8`` for a one-step backbone: the frozen VAE encoder (LoRA off) and the
        posterior mode, scaled as the backbone's latents."""
        backbone = self._backbone
        vae = backbone.vae
        adapters = bool(getattr(vae, '_hf_peft_config_loaded', False))
        with torch.no_grad():
            if adapters:
                vae.disable_adapters()
            try:
                posterior = vae.encode((gt * 2 - 1).to(next(vae.parameters()).dtype)).latent_dist
            finally:
                if adapters:
                    vae.enable_adapters()
        return posterior.mode().float() * backbone.scaling_factor

    def facial_timesteps(self, batch: int, device: torch.device) -> Tensor:
        """The one-step backbone's fixed timestep for every image."""
        return torch.full((batch, ), self._backbone.timestep, dtype=torch.long, device=device)

    def facial_num_train_timesteps(self) -> int:
        return int(self._backbone.scheduler.config.num_train_timesteps)

    # ------------------------------------------------------------------ the two steps
    def facial_generator_terms(self, pred_latents: Tensor, data: dict, gt_latents: Optional[Tensor] = None,
                               timesteps: Optional[Tensor] = None,
                               num_train_timesteps: Optional[int] = None) -> Dict[str, Tensor]:
        """Eq. 4 on ``pred_latents`` (``B x 4 x h x w``; gradients flow back through it) for the faces of the
        preprocessed batch ``data``; ``{}`` without a facial loss. Keeps the crops for
        :meth:`facial_discriminator_step`."""
        if self.facial_loss is None:
            return {}
        if data.get('face_landmarks') is None:
            raise KeyError('facial_loss needs the GT face landmarks of each image: use PortraitDataPreprocessor and '
                           'a dataset that gives face_landmarks (PortraitTripletDataset, or ImageFolderDataset with '
                           'aligned_face_template)')
        batch = pred_latents.shape[0]
        if gt_latents is None:
            gt_latents = self.facial_target_latents(data['gt'])
        if timesteps is None:
            timesteps = self.facial_timesteps(batch, pred_latents.device)
        if num_train_timesteps is None:
            num_train_timesteps = self.facial_num_train_timesteps()
        losses, crops = self._facial_loss.generator_loss(pred_latents, gt_latents, data['face_landmarks'],
                                                         timesteps, num_train_timesteps, data.get('has_face'))
        self.__dict__['_facial_crops'] = crops
        return losses

    def facial_discriminator_step(self, optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        """One step of the eye and mouth discriminators on the crops of the last generator step."""
        crops = self.__dict__.pop('_facial_crops', None)
        if self.facial_loss is None or crops is None:
            return {}
        wrapper = optim_wrapper[FACIAL_LOSS_KEY]
        with wrapper.optim_context(self.facial_loss):
            loss, log = self.facial_loss(crops['real'], crops['fake'], mode='discriminator')
        wrapper.update_params(loss)
        return dict(loss_facial_disc=loss.detach(), **log)
