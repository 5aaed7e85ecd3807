"""OSEDiff: one-step effective diffusion for real-world super-resolution (Wu et al., 2024).

Generator: the one-step SD backbone (LoRA on the VAE encoder and the UNet, trainable conv_in),
trained with ``lambda_l2 * MSE + lambda_lpips * LPIPS-VGG + lambda_vsd * VSD`` on [-1, 1] images
(1, 2, 1). Regulariser: a LoRA SD UNet trained by its diffusion loss on the generator's latents
(weight 1). One generator step, then one regulariser step, each with its own AdamW
(cswry/OSEDiff ``train_osediff.py``).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from portraitisr.registry import LOSSES, MODELS
from .one_step_restorer import OneStepRestorer
from .vsd_regularizer import vsd_loss

# OSEDiff's negative prompt for VSD's unconditional branch: cswry/OSEDiff @fcc4f09, the README training command and
# scripts/train/train_osediff.sh (`--neg_prompt`). HeadsUp's appendix B quotes the same string.
OSEDIFF_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, '
                           'cartoon, CG Style, 3D render, unreal engine, blurring, dirty, messy, '
                           'worst quality, low quality, frames, watermark, signature, jpeg artifacts, '
                           'deformed, lowres, over-smooth')


@MODELS.register_module()
class OSEDiff(OneStepRestorer):
    """OSEDiff training and inference.

    Args:
        backbone / text_encoder / prompter / color_fix / data_preprocessor: see
            :class:`OneStepRestorer`.
        regularizer: ``VSDRegularizer`` config (None trains without VSD, e.g. ablations).
        lpips_loss: ``LOSSES`` config of the perceptual term (OSEDiff: LPIPS-VGG, weight 2).
        l2_weight / vsd_weight / regularizer_weight: OSEDiff's 1, 1, 1.
        negative_prompt: VSD's unconditional prompt.
        facial_loss: optional AuthFace facial loss, see :class:`OneStepRestorer`.

    ``train_step`` expects an ``OptimWrapperDict`` with ``backbone`` (and ``regularizer``).
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 regularizer: Optional[dict] = None,
                 prompter: Optional[dict] = None,
                 lpips_loss: Optional[dict] = None,
                 l2_weight: float = 1.0,
                 vsd_weight: float = 1.0,
                 regularizer_weight: float = 1.0,
                 negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT,
                 color_fix: Optional[str] = 'adain',
                 eval_seed: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 facial_loss: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, text_encoder=text_encoder, prompter=prompter,
                         color_fix=color_fix, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg, facial_loss=facial_loss)
        self.regularizer = MODELS.build(regularizer) if regularizer is not None else None
        self.lpips_loss = LOSSES.build(lpips_loss) if lpips_loss is not None else None
        self.l2_weight = l2_weight
        self.vsd_weight = vsd_weight
        self.regularizer_weight = regularizer_weight
        self.negative_prompt = negative_prompt

    def reconstruction_losses(self, sr: Tensor, gt: Tensor, latents: Tensor,
                              embeds: Tensor) -> Dict[str, Tensor]:
        """The OSEDiff terms for a generator output ``sr`` (in [0, 1]) and its latents."""
        pred, target = sr * 2 - 1, gt * 2 - 1  # OSEDiff computes every loss on [-1, 1] images
        losses = dict(loss_l2=self.l2_weight * F.mse_loss(pred.float(), target.float()))
        if self.lpips_loss is not None:
            losses['loss_lpips'] = self.lpips_loss(pred, target)
        if self.regularizer is not None and self.vsd_weight > 0:
            negative = self.text_encoder([self.negative_prompt] * sr.shape[0]).to(sr.device)
            with torch.no_grad():  # the regulariser only supplies targets here
                x0_update, x0_fix = self.regularizer(latents, embeds, negative, mode='vsd')
            losses['loss_vsd'] = self.vsd_weight * vsd_loss(latents, x0_update, x0_fix)
        return losses

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        lq, gt, metainfo = data['inputs'], data['gt'], data['metainfo']
        prompt_images = gt if self.prompter.use_gt_in_training else lq
        embeds = self.prompt_embeddings(prompt_images, metainfo)

        generator_wrapper = optim_wrapper['backbone']
        with generator_wrapper.optim_context(self.backbone):
            sr, latents = self.backbone(lq, embeds, return_latents=True)
            losses = self.reconstruction_losses(sr, gt, latents, embeds)
            losses.update(self.facial_generator_terms(latents, data))  # AuthFace facial loss, if configured
            loss, log_vars = self.parse_losses(losses)
        generator_wrapper.update_params(loss)
        log_vars.update(self.facial_discriminator_step(optim_wrapper))
        log_vars.update(self.regularizer_step(latents, embeds, optim_wrapper))
        return log_vars

    def regularizer_step(self, latents: Tensor, embeds: Tensor,
                         optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        """One step of the VSD regulariser's diffusion loss on the generator's (detached)
        latents; nothing without a regulariser."""
        if self.regularizer is None:
            return {}
        regularizer_wrapper = optim_wrapper['regularizer']
        with regularizer_wrapper.optim_context(self.regularizer):
            reg_loss = self.regularizer_weight * self.regularizer(latents.detach(), embeds,
                                                                  mode='diffusion')
        regularizer_wrapper.update_params(reg_loss)
        return dict(loss_regularizer=reg_loss.detach())
