"""AuthFace's time-aware latent facial feature loss (AuthFace, arXiv 2410.09864, section 3.2, Eq. 2-4).

"AuthFace: Towards Authentic Blind Face Restoration with Face-Oriented Generative Diffusion Prior", section 3.2:
the noise MSE constrains the whole latent evenly, so AuthFace adds a loss on the regions people look at first,
the eyes and the mouth, in the latent space:

1. **Predicted latent (Eq. 2)**, the DDIM closed form (Song et al. 2020)::

       z0_pred = (z_t - sqrt(beta_prod_t) * eps_theta) / sqrt(alpha_prod_t),   beta_prod_t = 1 - alpha_prod_t

   The paper writes ``beta_prod_t`` as a product of the betas; the DDIM formula it cites (and diffusers'
   ``DDIMScheduler.step``, where the name comes from) uses ``1 - alpha_prod_t``, the only choice that inverts the
   forward noising ``z_t = sqrt(alpha_prod_t) z0 + sqrt(1 - alpha_prod_t) eps``
   (``tests/test_models/test_losses/test_time_aware_facial_loss.py`` checks that it does, exactly, on random latents).
2. **Eye and mouth boxes** from the GT's landmarks, "downsampling with a factor of eight" to the latent grid, and
   fixed-size crops of ``z0_pred`` and of the GT latent ``z0`` (``torchvision.ops.roi_align``, differentiable
   w.r.t. the latents). The paper's landmark network gives more points than our 5; the boxes are ours (below).
3. **Per-region discriminators** ``D_eyes``, ``D_mouth`` (GFP-GAN's component discriminators,
   :class:`~portraitisr.models.discriminators.FacialComponentDiscriminator`) and their multi-scale features ``psi``.
4. **Loss (Eq. 4)**, for each region ``P``::

       Weight(t) * (lambda_d * E[log(1 - D_P(p_pred))] + lambda_s * |Gram(psi(p_pred)) - Gram(psi(p))|)

   with the **time weight (Eq. 3)**, the logit-normal density of SD3 (Esser et al. 2024)::

       Weight(t) = 1 / (s sqrt(2 pi)) * 1 / (t (1 - t)) * exp(-(logit(t) - m)^2 / (2 s^2)),  logit(t) = ln(t / (1 - t))

   (the paper prints ``logit(t) = log 1 / (t (1 - t))``, a typesetting slip: SD3, which it cites, defines
   ``logit(t) = log(t / (1 - t))``).

What the paper leaves open, and our choices (each a constructor argument):

* ``m``, ``s``: not stated; SD3's defaults ``m = 0``, ``s = 1`` (diffusers' ``--logit_mean 0.0 --logit_std 1.0``).
  With them the weight is a probability density on (0, 1): its mean over uniformly drawn timesteps is 1, the
  same as the constant weight of Table 2 (c), so the two ablation rows differ only in *where* the weight goes.
* ``t`` in (0, 1) for a DDPM timestep index ``k`` of ``T``: ``t = (k + 0.5) / T``, the centre of the slice of
  (0, 1) that SD3's sampler maps to ``k`` (``k = floor(u * T)``); never 0 or 1, where ``logit`` is infinite.
* ``lambda_d``, ``lambda_s``: not stated; GFP-GAN's ``train_gfpgan_v1.yml`` values, 1 (``gan_component_opt``) and
  200 (``comp_style_weight``), with GFP-GAN's per-feature weights 0.5 and 1.0 and its Gram normalisation
  ``F F^T / (c h w)``.
* The adversarial term is Eq. 4 as printed, the saturating ``log(1 - D(p_pred)) = -softplus(logit)``;
  ``adversarial='non_saturating'`` gives GFP-GAN's ``softplus(-logit)`` instead. The discriminators learn with
  binary cross-entropy on real (GT) and fake (predicted) crops, not time-weighted.
* Boxes: square, axis-aligned, centred on each eye and on the mid-point of the mouth corners, with sides
  ``0.635 d`` (eyes) and ``0.953 d`` (mouth) for an inter-ocular distance ``d``: on the FFHQ-512 template
  (``d = 125.9`` px) these are exactly GFP-GAN's 80 px eye and 120 px mouth crops. Crops are resampled to
  12 x 12 (eyes) and 16 x 16 (mouth) latent pixels: the 10 and 15 latent pixels of those crops at 512 px,
  rounded up to multiples of 4 (two stride-2 layers in the discriminator). Both eyes go to ``D_eyes``; each
  region's terms are averaged over its crops, then over the faces of the batch; images without a face add 0.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import LOSSES, MODELS

TIME_WEIGHTINGS = ('logit_normal', 'constant')
ADVERSARIAL_FORMS = ('saturating', 'non_saturating')
REGIONS = ('eyes', 'mouth')


# ---------------------------------------------------------------------------------------------- Eq. 2 and Eq. 3
def ddim_predicted_x0(noisy: Tensor, eps: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """Eq. 2: ``z0_pred = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` per sample, in float32 (float64 in, float64
    out).

    Args:
        noisy: ``B x C x h x w`` noisy latents ``z_t``.
        eps: ``B x C x h x w`` predicted noise.
        alphas_cumprod: ``(T,)`` the scheduler's ``alpha_prod`` table.
        timesteps: ``(B,)`` integer timesteps.
    """
    dtype = torch.float64 if noisy.dtype == torch.float64 else torch.float32
    abar = alphas_cumprod.to(device=noisy.device, dtype=dtype)[timesteps.to(noisy.device).long()]
    abar = abar.view(-1, *([1] * (noisy.ndim - 1)))
    return (noisy.to(dtype) - (1 - abar).sqrt() * eps.to(dtype)) / abar.sqrt()


def normalized_time(timesteps: Tensor, num_train_timesteps: int) -> Tensor:
    """DDPM timestep indices ``k`` in ``[0, T)`` -> ``t = (k + 0.5) / T`` in (0, 1), float64 (see the module
    docstring)."""
    return (timesteps.to(torch.float64) + 0.5) / float(num_train_timesteps)


def logit_normal_weight(t: Tensor, location: float = 0.0, scale: float = 1.0) -> Tensor:
    """Eq. 3, the logit-normal density ``1 / (s sqrt(2 pi)) / (t (1 - t)) exp(-(logit(t) - m)^2 / (2 s^2))`` at
    ``t`` in (0, 1), in ``t``'s dtype (use float64 for reference values)."""
    if scale <= 0:
        raise ValueError(f'the scale s of the logit-normal weight must be positive, got {scale}')
    logit = torch.log(t / (1 - t))
    return torch.exp(-(logit - location)**2 / (2 * scale**2)) / (scale * math.sqrt(2 * math.pi) * t * (1 - t))


def gram_matrix(features: Tensor) -> Tensor:
    """GFP-GAN's ``_gram_mat``: ``F F^T / (c h w)`` of ``N x c x h x w`` features -> ``N x c x c``."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat.bmm(flat.transpose(1, 2)) / (c * h * w)


# ---------------------------------------------------------------------------------------------- boxes and crops
def facial_component_boxes(landmarks: Tensor, eye_box_scale: float = 0.635,
                           mouth_box_scale: float = 0.953) -> Dict[str, Tensor]:
    """Square eye and mouth boxes from 5-point landmarks, in image pixel-edge coordinates.

    Args:
        landmarks: ``N x 5 x 2`` pixel-centre ``(x, y)``: left eye, right eye, nose, left mouth, right mouth.
        eye_box_scale / mouth_box_scale: box sides as fractions of the inter-ocular distance.

    Returns:
        ``{'eyes': N x 2 x 4, 'mouth': N x 4}`` boxes ``x1, y1, x2, y2`` where pixel ``i`` spans ``[i, i + 1)``
        (the landmark's centre ``x`` is at ``x + 0.5``), as ``roi_align(aligned=True)`` expects.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f'landmarks must be N x 5 x 2 (left eye, right eye, nose, left mouth, right mouth), got '
                         f'{tuple(landmarks.shape)}')
    points = landmarks.float() + 0.5
    distance = (points[:, 1] - points[:, 0]).norm(dim=-1).clamp_min(1.0)  # (N,) inter-ocular distance

    def square(centres: Tensor, side: Tensor) -> Tensor:
        half = (side / 2).unsqueeze(-1)
        return torch.cat([centres - half, centres + half], dim=-1)

    eyes = square(points[:, :2], (eye_box_scale * distance)[:, None].expand(-1, 2))
    mouth = square(points[:, 3:].mean(dim=1), mouth_box_scale * distance)
    return dict(eyes=eyes, mouth=mouth)


def crop_latent_boxes(latents: Tensor, boxes: Tensor, image_index: Tensor, size: int, vae_factor: int = 8) -> Tensor:
    """``roi_align`` crops ``K x C x size x size`` of ``latents`` (``B x C x h x w``) at image-pixel ``boxes``
    (``K x 4``) of images ``image_index`` (``(K,)``); the boxes are divided by ``vae_factor`` onto the latent grid.
    Bilinear and differentiable w.r.t. ``latents``."""
    from torchvision.ops import roi_align

    rois = torch.cat([image_index.to(latents.dtype)[:, None], boxes.to(latents.dtype)], dim=1)
    return roi_align(latents, rois, output_size=(size, size), spatial_scale=1.0 / vae_factor, sampling_ratio=2,
                     aligned=True)


def _mean(x: Tensor) -> Tensor:
    """Mean that is 0 (still attached to the graph) for an empty tensor."""
    return x.sum() / max(x.numel(), 1)


# ---------------------------------------------------------------------------------------------- the loss
@LOSSES.register_module()
class TimeAwareFacialLoss(nn.Module):
    """Eq. 4 with its own eye and mouth discriminators (trained by their own optimiser).

    Args:
        discriminator: ``MODELS`` config of each region's discriminator (``FacialComponentDiscriminator``,
            ``in_channels`` = latent channels, or any module with its ``forward(x, frozen) -> (logits, features)``);
            ``D_eyes`` is built with ``init_seed`` and ``D_mouth`` with ``init_seed + 1``.
        eye_box_scale / mouth_box_scale: box sides / inter-ocular distance (see the module docstring).
        eye_size / mouth_size: crop sides in latent pixels (multiples of 4).
        vae_factor: image pixels per latent pixel ("a factor of eight", section 3.2).
        adversarial_weight / style_weight: ``lambda_d`` / ``lambda_s`` (GFP-GAN's 1 and 200; not in the paper).
        feature_weights: weights of the style term per discriminator feature (GFP-GAN: 0.5, 1.0).
        time_weighting: ``'logit_normal'`` (Eq. 3, Table 2 (d)) or ``'constant'`` (weight 1, Table 2 (c)).
        location / scale: ``m`` and ``s`` of Eq. 3 (not in the paper; SD3's 0 and 1).
        adversarial: ``'saturating'`` (Eq. 4 as printed) or ``'non_saturating'`` (GFP-GAN).
        loss_weight: a factor on the whole loss (1: ``L_total = L_noise + L_facial``).
        init_seed: seed of the discriminators' initialisation.

    The model calls :meth:`generator_loss` (discriminators frozen) inside the generator's optimiser step, then
    ``self.facial_loss(real_crops, fake_crops, mode='discriminator')`` (through ``forward``, so a distributed
    wrapper sees every use of the discriminators' weights) inside their optimiser step.
    """

    #: crops each face gives a region: two eyes, one mouth
    CROPS_PER_FACE = dict(eyes=2, mouth=1)

    def __init__(self,
                 discriminator: Optional[dict] = None,
                 eye_box_scale: float = 0.635,
                 mouth_box_scale: float = 0.953,
                 eye_size: int = 12,
                 mouth_size: int = 16,
                 vae_factor: int = 8,
                 adversarial_weight: float = 1.0,
                 style_weight: float = 200.0,
                 feature_weights: Sequence[float] = (0.5, 1.0),
                 time_weighting: str = 'logit_normal',
                 location: float = 0.0,
                 scale: float = 1.0,
                 adversarial: str = 'saturating',
                 loss_weight: float = 1.0,
                 init_seed: int = 0) -> None:
        super().__init__()
        if time_weighting not in TIME_WEIGHTINGS:
            raise ValueError(f'time_weighting must be one of {TIME_WEIGHTINGS}, got {time_weighting!r}')
        if adversarial not in ADVERSARIAL_FORMS:
            raise ValueError(f'adversarial must be one of {ADVERSARIAL_FORMS}, got {adversarial!r}')
        if scale <= 0:
            raise ValueError(f'the scale s of the logit-normal weight must be positive, got {scale}')
        for name, size in (('eye_size', eye_size), ('mouth_size', mouth_size)):
            if size <= 0 or size % 4:
                raise ValueError(f'{name} must be a positive multiple of 4 (two stride-2 discriminator layers), '
                                 f'got {size}')
        discriminator = dict(discriminator or dict(type='FacialComponentDiscriminator', in_channels=4))
        self.discriminators = nn.ModuleDict({
            region: MODELS.build(dict(discriminator, init_seed=init_seed + i)) for i, region in enumerate(REGIONS)})
        self.eye_box_scale, self.mouth_box_scale = float(eye_box_scale), float(mouth_box_scale)
        self.sizes = dict(eyes=int(eye_size), mouth=int(mouth_size))
        self.vae_factor = int(vae_factor)
        self.adversarial_weight, self.style_weight = float(adversarial_weight), float(style_weight)
        self.feature_weights = tuple(float(w) for w in feature_weights)
        self.time_weighting, self.location, self.scale = time_weighting, float(location), float(scale)
        self.adversarial, self.loss_weight = adversarial, float(loss_weight)

    # ------------------------------------------------------------------ pieces
    def time_weight(self, timesteps: Tensor, num_train_timesteps: int) -> Tensor:
        """``(B,)`` float32 weights of Eq. 3 (or ones) for integer ``timesteps`` of a ``T``-step schedule."""
        if self.time_weighting == 'constant':
            return torch.ones(timesteps.shape[0], dtype=torch.float32, device=timesteps.device)
        t = normalized_time(timesteps, num_train_timesteps)
        return logit_normal_weight(t, self.location, self.scale).float()

    def crops(self, latents: Tensor, landmarks: Tensor, image_index: Tensor) -> Dict[str, Tensor]:
        """Eye and mouth crops of ``latents`` (``B x C x h x w``) for the faces ``landmarks`` (``N x 5 x 2``, image
        pixels) of images ``image_index`` (``(N,)``): ``{'eyes': 2N x C x e x e (left, right of each face in
        turn), 'mouth': N x C x m x m}``."""
        boxes = facial_component_boxes(landmarks, self.eye_box_scale, self.mouth_box_scale)
        eye_index = image_index.repeat_interleave(2)
        return dict(
            eyes=crop_latent_boxes(latents, boxes['eyes'].reshape(-1, 4), eye_index, self.sizes['eyes'],
                                   self.vae_factor),
            mouth=crop_latent_boxes(latents, boxes['mouth'], image_index, self.sizes['mouth'], self.vae_factor))

    def _adversarial_term(self, logits: Tensor) -> Tensor:
        """Per-crop mean of Eq. 4's ``log(1 - D)`` (saturating) or GFP-GAN's ``-log D`` (non-saturating)."""
        x = logits.float().flatten(1)
        term = -F.softplus(x) if self.adversarial == 'saturating' else F.softplus(-x)
        return term.mean(dim=1)

    def _style_term(self, fake_features, real_features) -> Tensor:
        """Per-crop ``sum_k w_k mean|Gram(psi_k(fake)) - Gram(psi_k(real))|``."""
        total = 0
        for weight, fake, real in zip(self.feature_weights, fake_features, real_features):
            difference = gram_matrix(fake.float()) - gram_matrix(real.float())
            total = total + weight * difference.abs().flatten(1).mean(dim=1)
        return total

    # ------------------------------------------------------------------ generator side
    def generator_loss(self, pred_latents: Tensor, gt_latents: Tensor, landmarks: Tensor, timesteps: Tensor,
                       num_train_timesteps: int,
                       has_face: Optional[Tensor] = None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Eq. 4 for a batch; no gradient reaches the discriminators (their weights are detached).

        Args:
            pred_latents: ``B x C x h x w`` predicted ``z0`` (Eq. 2); gradients flow back through it.
            gt_latents: ``B x C x h x w`` GT latents ``z0`` (no gradient needed).
            landmarks: ``B x 5 x 2`` GT landmarks in image pixels (``vae_factor`` x the latent grid).
            timesteps: ``(B,)`` integer timesteps of the ``num_train_timesteps``-step schedule.
            has_face: ``(B,)`` bool; images without a face add nothing (default: all have one).

        Returns:
            ``(losses, crops)``: ``losses = {'loss_facial_adv', 'loss_facial_style'}`` (weighted scalars: the sum
            over the faces divided by the batch size, zero when no image has a face) and ``crops = {'real': {...},
            'fake': {...}}`` per region (``fake`` detached) for the discriminator step. The discriminators run even
            on a batch without faces (zero crops): under FSDP2 every rank must take part in their all-gathers.
        """
        batch, device = pred_latents.shape[0], pred_latents.device
        if has_face is None:
            has_face = torch.ones(batch, dtype=torch.bool, device=device)
        index = has_face.to(device).bool().nonzero()[:, 0]
        faces = index.numel()
        weights = self.time_weight(timesteps.to(device)[index], num_train_timesteps)
        points = landmarks.to(device=device, dtype=torch.float32)[index]
        fake = self.crops(pred_latents, points, index)
        with torch.no_grad():
            real = self.crops(gt_latents.detach().to(pred_latents.dtype), points, index)
        adversarial = style = pred_latents.float().sum() * 0
        for region, discriminator in self.discriminators.items():
            with torch.no_grad():
                _, real_features = discriminator(real[region])
            logits, fake_features = discriminator(fake[region], frozen=True)  # no gradient into D
            per_face = self.CROPS_PER_FACE[region]
            per_face_adv = self._adversarial_term(logits).view(faces, per_face).mean(dim=1)
            per_face_style = self._style_term(fake_features, real_features).view(faces, per_face).mean(dim=1)
            # sum over the faces / batch size: images without a face add 0 (and an empty batch gives 0, not nan)
            adversarial = adversarial + (weights * per_face_adv).sum() / batch
            style = style + (weights * per_face_style).sum() / batch
        losses = dict(loss_facial_adv=self.loss_weight * self.adversarial_weight * adversarial,
                      loss_facial_style=self.loss_weight * self.style_weight * style)
        return losses, dict(real=real, fake={r: c.detach() for r, c in fake.items()})

    # ------------------------------------------------------------------ discriminator side
    def discriminator_loss(self, real: Dict[str, Tensor], fake: Dict[str, Tensor]) -> Tuple[Tensor, Dict]:
        """Binary cross-entropy of each region's discriminator on GT (real) and detached predicted (fake) crops,
        averaged over the crops and summed over the regions. A batch without faces (zero crops) still runs every
        discriminator and gives a zero that reaches every parameter, so every rank of a distributed run joins the
        same collectives."""
        loss = 0
        log = {}
        for region, discriminator in self.discriminators.items():
            logits, _ = discriminator(torch.cat([real[region], fake[region].detach()]).float())
            real_logits, fake_logits = logits.float().split([real[region].shape[0], fake[region].shape[0]])
            loss = loss + _mean(F.softplus(-real_logits)) + _mean(F.softplus(fake_logits))
            log[f'facial_d_{region}_real'] = _mean(real_logits.detach())
            log[f'facial_d_{region}_fake'] = _mean(fake_logits.detach())
        return loss, log

    def forward(self, *args, mode: str = 'discriminator', **kwargs):
        """``mode='discriminator'``: :meth:`discriminator_loss`; ``mode='generator'``: :meth:`generator_loss`."""
        if mode == 'discriminator':
            return self.discriminator_loss(*args, **kwargs)
        if mode == 'generator':
            return self.generator_loss(*args, **kwargs)
        raise ValueError(f"mode must be 'generator' or 'discriminator', got {mode!r}")

    def extra_repr(self) -> str:
        return (f'time_weighting={self.time_weighting!r}, m={self.location}, s={self.scale}, '
                f'lambda_d={self.adversarial_weight}, lambda_s={self.style_weight}, adversarial={self.adversarial!r}, '
                f'sizes={self.sizes}')
