"""PiSA-SR as a ``RESTORERS`` image restorer (general SR, x4), e.g. for a blending baseline built on it.

PiSA-SR's test script (csslc/PiSA-SR ``test_pisasr.py``) enlarges the LQ ``--upscale`` (4) times and runs the one-step
model at the output size; an input whose shorter side is below
``process_size // upscale`` (512 // 4 = 128) is first enlarged so that side is 128, and the result is resized back
to ``upscale`` times the original size. :class:`PiSASRRestorer` does the same on tensors (bicubic on floats, where
the script resizes the 8-bit PIL image with PIL's bicubic default), with the test-time guidance scales.
"""
from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor

from portraitisr.registry import RESTORERS
from .osediff_restorer import OSEDiffRestorer

__all__ = ['PiSASRRestorer']


@RESTORERS.register_module()
class PiSASRRestorer(OSEDiffRestorer):
    """The one-step PiSA-SR model as a general SR restorer.

    Args:
        model: ``MODELS`` config of :class:`~portraitisr.models.algorithms.PiSASR` (e.g. ``model`` of
            ``configs/pisasr/pisasr_sd21.py``); its LPIPS loss is dropped (inference only).
        checkpoint: the official ``pisa_sr.pkl``: a weight spec for the weight resolver (path, cached file name,
            URL, dict with ``sha256``) or an already loaded dict, read strictly by
            :func:`~portraitisr.models.backbones.pisasr_checkpoint.load_pisasr_checkpoint`; or a ``.safetensors``
            of :meth:`~portraitisr.models.backbones.OneStepSD.save_trainable` (your own training).
        pretrained: ``False`` keeps the model's initial LoRA (tests with random tiny SD); then no ``checkpoint``.
        lambda_pix / lambda_sem: the guidance scales (PiSA-SR's defaults 1.0 / 1.0: one UNet pass).
        min_input_size: inputs with a shorter side below it are enlarged to it first and the result resized back
            (``process_size // upscale`` = 128 in PiSA-SR's script); 0 turns it off.
        scale / tile / tile_overlap / seed / inference_dtype / latent_tiling: as :class:`OSEDiffRestorer`.
    """

    def __init__(self, model: dict, checkpoint: Optional[Any] = None, pretrained: bool = True, scale: int = 4,
                 tile: int = 0, tile_overlap: int = 32, seed: int = 0, inference_dtype: Optional[str] = None,
                 latent_tiling: Optional[dict] = None, lambda_pix: float = 1.0, lambda_sem: float = 1.0,
                 min_input_size: int = 128) -> None:
        if not pretrained and checkpoint is not None:
            raise ValueError('checkpoint given with pretrained=False; drop one of them')
        if pretrained and checkpoint is None:
            raise ValueError('PiSASRRestorer needs the PiSA-SR checkpoint (pisa_sr.pkl); pass checkpoint=..., or '
                             'pretrained=False for random LoRA weights')
        super().__init__(model, checkpoint=None, pretrained=False, scale=scale, face_size=None, tile=tile,
                         tile_overlap=tile_overlap, seed=seed, inference_dtype=inference_dtype,
                         latent_tiling=latent_tiling)
        if not hasattr(self.model, 'set_guidance'):
            raise TypeError(f'{type(self.model).__name__} is not a PiSA-SR model (model type PiSASR)')
        if pretrained:
            backbone = self.model._backbone
            # the restorer is frozen by now; a .safetensors is checked against the LoRA set, so mark it trainable
            # for the load, then freeze again
            for param in backbone.adapter_parameters('pix') + backbone.adapter_parameters('sem'):
                param.requires_grad_(True)
            try:
                if isinstance(checkpoint, dict) and not set(checkpoint) <= {'path', 'url', 'sha256', 'filename'}:
                    backbone.load_release_checkpoint(checkpoint)  # an already loaded pisa_sr.pkl
                else:
                    backbone.load_trained_weights(checkpoint)  # resolved, then read strictly (.pkl or .safetensors)
            finally:
                self.requires_grad_(False)
        self.model.set_guidance(lambda_pix, lambda_sem)
        if min_input_size < 0:
            raise ValueError(f'min_input_size must be >= 0, got {min_input_size}')
        self.min_input_size = int(min_input_size)

    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x (scale H) x (scale W)`` RGB, about [0, 1]."""
        height, width = image.shape[-2:]
        if self.min_input_size and min(height, width) < self.min_input_size:
            factor = self.min_input_size / min(height, width)
            size = (int(factor * height), int(factor * width))  # test_pisasr.py: int(scale * side)
            enlarged = F.interpolate(image, size=size, mode='bicubic', align_corners=False).clamp(0, 1)
            sr = super().restore(enlarged)
            return F.interpolate(sr, size=(self.scale * height, self.scale * width), mode='bicubic',
                                 align_corners=False)
        return super().restore(image)

    def extra_repr(self) -> str:
        backbone = self.model._backbone
        return (f'{super().extra_repr()}, lambda_pix={backbone.lambda_pix}, lambda_sem={backbone.lambda_sem}, '
                f'min_input_size={self.min_input_size}')
