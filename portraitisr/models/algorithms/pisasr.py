"""PiSA-SR: pixel-level and semantic-level adjustable super-resolution with a dual LoRA (Sun et al., CVPR 2025).

Sun, Wu, Ma, Liu, Yi, Zhang, "Pixel-level and Semantic-level Adjustable Super-resolution: A Dual-LoRA Approach"
(arXiv 2412.03017); reference code csslc/PiSA-SR (``pisasr.py``, ``train_pisasr.py``,
``scripts/train/train_pisasr.sh``).

Generator: :class:`~portraitisr.models.backbones.PiSASD` (SD 2.1, frozen VAE, pixel + semantic UNet LoRA, one step
at ``t = 1``, ``z_H = z_L - eps``). Training has two stages on one AdamW:

1. pixel stage, the first ``pix_steps`` iterations (4000): only the pixel LoRA learns, loss
   ``l2_weight * MSE`` on [-1, 1] images (``lambda_lpips = lambda_csd = 0``);
2. semantic stage: only the semantic LoRA learns, on top of the now fixed pixel LoRA, loss
   ``MSE + 2 * LPIPS-VGG + 1 * CSD`` (``--lambda_l2 1 --lambda_lpips 2 --lambda_csd 1``).

CSD (classifier score distillation, ``CSDLoss.cal_csd``): the frozen SD UNet ``unet_fix`` denoises
``z_t = add_noise(z_H, n, t)``, ``t ~ randint(20, 500)`` (``--min_dm_step_ratio 0.02 --max_dm_step_ratio 0.5``),
with classifier-free guidance 7.5 between the prompt and the negative prompt; ``x0_real`` comes from the guided
prediction, ``x0_fake`` from the negative-prompt one, and ``loss = mse(z_H, sg(z_H - (x0_fake - x0_real) / w))``
with ``w = mean|z_H - x0_real|`` (the form of OSEDiff's VSD loss, :func:`vsd_loss`). ``unet_fix`` is SD 2.1-base,
the model the generator's frozen weights are; here it is the generator's UNet with every adapter switched off
(one UNet in memory instead of two).

How PiSA-SR freezes one LoRA while the other learns: it runs stage 1 with only the pixel adapters active and
``requires_grad`` off on the semantic ones, and stage 2 with all six active and ``requires_grad`` off on the pixel
ones. Here all six adapters stay active and trainable (so a distributed wrapper sees one fixed set of parameters
with gradients), and the frozen set's gradients are dropped (set to None) before clipping and the AdamW step, which
then skips those tensors exactly as PiSA-SR's optimizer skips tensors without gradients (no update, no weight
decay; the clipping norm is over the learning set only). In stage 1 the semantic LoRA is still at its
initialisation (B = 0), so running it adds exactly zero: the forward equals PiSA-SR's pixel-only forward; the model
checks that B is zero and refuses otherwise.

Prompts: the prompter's training prompts (PiSA-SR: RAM tags of the GT, ``f'{tags}, {pos_prompt_csd}'``); with
probability ``null_text_ratio`` (0.5) the generator gets the empty prompt for the whole batch instead (the CSD
branch keeps the tags). Test: the empty prompt (``test_pisasr.py``), the guidance scales of the backbone, AdaIN
colour fix against the LQ.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from portraitisr.models.backbones.one_step_sd import frozen_dtype_autocast
from portraitisr.registry import LOSSES, MODELS
from .one_step_restorer import OneStepRestorer
from .vsd_regularizer import vsd_loss

# PiSA-SR's ``--neg_prompt_csd`` default (csslc/PiSA-SR src/my_utils/training_utils.py), verbatim: unlike OSEDiff's
# ``--neg_prompt`` it lists "oil painting" twice.
PISASR_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, '
                          'CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, '
                          'frames, watermark, signature, jpeg artifacts, deformed, lowres, over-smooth')


@MODELS.register_module()
class PiSASR(OneStepRestorer):
    """PiSA-SR training (two stages, L2 / LPIPS / CSD) and inference (adjustable guidance).

    Args:
        backbone: ``BACKBONES`` config of a :class:`~portraitisr.models.backbones.PiSASD`.
        text_encoder / prompter / color_fix / eval_seed / data_preprocessor: see :class:`OneStepRestorer`.
        lpips_loss: ``LOSSES`` config of the semantic stage's perceptual term (PiSA-SR: LPIPS-VGG, weight 2).
        l2_weight: weight of the MSE on [-1, 1] images (``--lambda_l2 1``), both stages.
        csd_weight: weight of CSD in the semantic stage (``--lambda_csd 1``); 0 trains without it.
        csd_cfg_scale: classifier-free guidance of CSD's frozen UNet (``--cfg_csd 7.5``).
        csd_timesteps: ``[low, high)`` of CSD's timesteps (1000 x 0.02 and 1000 x 0.5 in the training script).
        pix_steps: iterations of the pixel stage (``--pix_steps 4000``); 0 starts in the semantic stage
            (PiSA-SR's resume from a checkpoint: ``pix_steps = 1``).
        null_text_ratio: probability of the empty prompt for the generator (``--null_text_ratio 0.5``).
        negative_prompt: CSD's negative prompt (``--neg_prompt_csd``).

    ``train_step`` expects an ``OptimWrapperDict`` with ``backbone``.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 prompter: Optional[dict] = None,
                 lpips_loss: Optional[dict] = None,
                 l2_weight: float = 1.0,
                 csd_weight: float = 1.0,
                 csd_cfg_scale: float = 7.5,
                 csd_timesteps: Tuple[int, int] = (20, 500),
                 pix_steps: int = 4000,
                 null_text_ratio: float = 0.5,
                 negative_prompt: str = PISASR_NEGATIVE_PROMPT,
                 color_fix: Optional[str] = 'adain',
                 eval_seed: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, text_encoder=text_encoder, prompter=prompter, color_fix=color_fix,
                         eval_seed=eval_seed, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not hasattr(self._backbone, 'adapter_parameters'):
            raise TypeError(f'PiSASR needs a PiSASD backbone (pixel and semantic LoRA), got '
                            f'{type(self._backbone).__name__}')
        if not 0 <= null_text_ratio <= 1:
            raise ValueError(f'null_text_ratio must be in [0, 1], got {null_text_ratio}')
        low, high = (int(t) for t in csd_timesteps)
        if not 0 <= low < high <= self._backbone.scheduler.config.num_train_timesteps:
            raise ValueError(f'csd_timesteps must be 0 <= low < high <= num_train_timesteps, got {csd_timesteps}')
        if pix_steps < 0:
            raise ValueError(f'pix_steps must be >= 0, got {pix_steps}')
        self.lpips_loss = LOSSES.build(lpips_loss) if lpips_loss is not None else None
        self.l2_weight = l2_weight
        self.csd_weight = csd_weight
        self.csd_cfg_scale = csd_cfg_scale
        self.csd_timesteps = (low, high)
        self.pix_steps = int(pix_steps)
        self.null_text_ratio = null_text_ratio
        self.negative_prompt = negative_prompt
        self._semantic_lora_checked = False

    # ------------------------------------------------------------------ guidance
    def set_guidance(self, lambda_pix: float = 1.0, lambda_sem: float = 1.0) -> None:
        """Set the test-time scales (:meth:`PiSASD.set_guidance`); a fast inference copy is rebuilt to match."""
        self._backbone.set_guidance(lambda_pix, lambda_sem)
        if self.__dict__.get('_fast_backbone') is not None:
            fast = self.__dict__['_fast_backbone']
            self.enable_fast_inference(device=fast.sqrt_alpha_bar.device, **self._fast_settings)

    # ------------------------------------------------------------------ training
    def training_stage(self) -> str:
        """``'pixel'`` for the first ``pix_steps`` iterations, then ``'semantic'`` (the runner's iteration)."""
        iteration = MessageHub.get_current_instance().get_info('iter', 0)
        return 'pixel' if iteration < self.pix_steps else 'semantic'

    def _check_semantic_lora_untrained(self) -> None:
        """Stage 1 runs the semantic LoRA along; that equals PiSA-SR's pixel-only forward only while it is
        untrained (B = 0)."""
        if self._semantic_lora_checked:
            return
        trained = [n for n, p in self._backbone.unet.named_parameters()
                   if '.lora_B.' in n and '_sem.' in n and bool(p.detach().abs().max() > 0)]
        if trained:
            raise ValueError(f'The pixel stage needs an untrained semantic LoRA (B = 0), but {len(trained)} '
                             f'semantic lora_B tensors are non-zero (e.g. {trained[0]}): to fine-tune from a trained '
                             'checkpoint set pix_steps=0 (PiSA-SR resumes in the semantic stage)')
        self._semantic_lora_checked = True

    def csd_loss(self, latents: Tensor, prompt_embeds: Tensor, negative_embeds: Tensor) -> Tensor:
        """PiSA-SR ``CSDLoss.cal_csd`` on the generator's latents ``B x 4 x h x w`` (float32)."""
        backbone = self._backbone
        latents_sg = latents.detach().float()
        low, high = self.csd_timesteps
        timesteps = torch.randint(low, high, (latents.shape[0], ), device=latents.device)
        noise = torch.randn_like(latents_sg)
        abar = backbone.scheduler.alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
        noisy = abar.sqrt() * latents_sg + (1 - abar).sqrt() * noise  # DDPMScheduler.add_noise
        with torch.no_grad(), backbone.frozen_unet() as unet_fix, \
                frozen_dtype_autocast(backbone.frozen_dtype, latents.device):
            eps_uncond, eps_text = unet_fix(
                torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                encoder_hidden_states=torch.cat([negative_embeds, prompt_embeds])).sample.float().chunk(2)
        eps_real = eps_uncond + self.csd_cfg_scale * (eps_text - eps_uncond)
        x0_real = (noisy - (1 - abar).sqrt() * eps_real) / abar.sqrt()  # CSDLoss.eps_to_mu
        x0_fake = (noisy - (1 - abar).sqrt() * eps_uncond) / abar.sqrt()
        return vsd_loss(latents, x0_fake, x0_real)

    def reconstruction_losses(self, sr: Tensor, gt: Tensor, latents: Tensor, embeds: Tensor,
                              stage: str) -> Dict[str, Tensor]:
        """The terms of ``stage`` for a generator output ``sr`` in [0, 1] and its latents."""
        pred, target = sr * 2 - 1, gt * 2 - 1  # PiSA-SR computes every loss on [-1, 1] images
        losses = dict(loss_l2=self.l2_weight * F.mse_loss(pred.float(), target.float()))
        if stage == 'semantic':
            if self.lpips_loss is not None:
                losses['loss_lpips'] = self.lpips_loss(pred, target)
            if self.csd_weight > 0:
                negative = self.text_encoder([self.negative_prompt] * sr.shape[0]).to(sr.device)
                losses['loss_csd'] = self.csd_weight * self.csd_loss(latents, embeds, negative)
        return losses

    def generator_prompts(self, embeds: Tensor) -> Tensor:
        """The tag embeddings, or with probability ``null_text_ratio`` the empty prompt's for the whole batch."""
        if self.null_text_ratio > 0 and float(torch.rand(())) < self.null_text_ratio:
            return self.text_encoder([''] * embeds.shape[0]).to(embeds.device)
        return embeds

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        lq, gt, metainfo = data['inputs'], data['gt'], data['metainfo']
        stage = self.training_stage()
        if stage == 'pixel':
            self._check_semantic_lora_untrained()
        prompt_images = gt if self.prompter.use_gt_in_training else lq
        embeds = self.prompt_embeddings(prompt_images, metainfo)
        generator_embeds = self.generator_prompts(embeds)

        wrapper = optim_wrapper['backbone']
        with wrapper.optim_context(self.backbone):
            sr, latents = self.backbone(lq, generator_embeds, return_latents=True)
            losses = self.reconstruction_losses(sr, gt, latents, embeds, stage)
            loss, log_vars = self.parse_losses(losses)
        # OptimWrapper.update_params, with the frozen LoRA's gradients dropped before clipping and stepping
        wrapper.backward(wrapper.scale_loss(loss))
        if wrapper.should_update():
            for param in self._backbone.adapter_parameters('sem' if stage == 'pixel' else 'pix'):
                param.grad = None
            wrapper.step()
            wrapper.zero_grad()
        log_vars['semantic_stage'] = torch.tensor(float(stage == 'semantic'))
        return log_vars
