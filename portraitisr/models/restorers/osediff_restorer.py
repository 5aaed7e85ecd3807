"""OSEDiff (and OSEDiff_Face) as a ``RESTORERS`` image restorer, for the OSEDiff + OSEDiff_Face blending baseline.

OSEDiff's test script (cswry/OSEDiff ``test_osediff.py``) enlarges the LQ ``--upscale`` times with bicubic
resampling and runs the one-step model at the output size; OSEDiff_Face runs with ``--upscale 1`` on aligned
512 x 512 faces. :class:`OSEDiffRestorer` does the same on tensors: bicubic x ``scale`` (torch, on floats - the
script resizes the 8-bit PIL image), then :meth:`OneStepRestorer.restore` (VAE-size padding, prompt, colour fix).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.models.backbones.osediff_checkpoint import load_osediff_checkpoint
from portraitisr.registry import MODELS, RESTORERS
from portraitisr.weights import resolve_file
from .base_restorer import BaseImageRestorer
from portraitisr.utils.tiling import tiled_forward

__all__ = ['OSEDiffRestorer']

# Parts of an OSEDiff training config that inference does not need (they would load extra networks).
_TRAINING_ONLY_KEYS = {'regularizer': None, 'lpips_loss': None}


@RESTORERS.register_module()
class OSEDiffRestorer(BaseImageRestorer):
    """The one-step OSEDiff model as a general SR (``scale`` 4) or face (``face_size`` 512, ``scale`` 1) restorer.

    Args:
        model: ``MODELS`` config of the one-step model (e.g. ``model`` of ``configs/osediff/osediff_sd21.py``);
            its VSD regulariser and LPIPS loss are dropped (inference only).
        checkpoint: the official release file (``osediff.pkl`` / ``osediff_face.pkl``): a weight spec for
            :func:`portraitisr.weights.resolve_file` (a path, a cached file name, a URL or a dict
            with ``sha256``) or an already loaded dict, read by
            :func:`portraitisr.models.backbones.osediff_checkpoint.load_osediff_checkpoint`.
        pretrained: ``False`` keeps the model's initial LoRA weights (tests with random tiny SD); it must then come
            without ``checkpoint``.
        scale: output size / input size; the input is enlarged bicubically by it before the model (4 for OSEDiff,
            1 for OSEDiff_Face).
        face_size: the aligned face side for a face restorer (OSEDiff_Face: 512), ``None`` for general SR.
        tile: tile side in **input** pixels for large images (0: whole image). Tiles are restored independently
            and blended with :func:`tiled_forward`'s feathered weights (our choice; OSEDiff's script tiles in
            latent space).
        tile_overlap: overlap of neighbouring tiles, input pixels.
        seed: seed of the VAE posterior sample, fixed per call so results are reproducible.
        inference_dtype: run a merged-LoRA copy of the backbone in this dtype (``'bfloat16'``; see
            :meth:`OneStepRestorer.enable_fast_inference`), built on the device of the first image; None keeps the
            unmerged float32 backbone.
        latent_tiling: :class:`~portraitisr.models.backbones.latent_tiling.LatentTiling` fields (a dict; ``{}`` for
            the defaults) to tile the VAE and the UNet in latent space (blended, for 4K outputs); None: untiled.
            An alternative to ``tile``, which restores pixel tiles independently.
    """

    def __init__(self, model: dict, checkpoint: Optional[Any] = None, pretrained: bool = True, scale: int = 4,
                 face_size: Optional[int] = None, tile: int = 0, tile_overlap: int = 32, seed: int = 0,
                 inference_dtype: Optional[str] = None, latent_tiling: Optional[dict] = None) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f'scale must be >= 1, got {scale}')
        if face_size is not None and scale != 1:
            raise ValueError(f'a face restorer (face_size={face_size}) works at scale 1, got scale={scale}')
        if tile < 0 or (tile > 0 and not 0 <= tile_overlap < tile):
            raise ValueError(f'need tile >= 0 and 0 <= tile_overlap < tile, got tile={tile}, '
                             f'tile_overlap={tile_overlap}')
        cfg = copy.deepcopy(dict(model))
        cfg.update({k: v for k, v in _TRAINING_ONLY_KEYS.items() if k in cfg})
        self.model = MODELS.build(cfg)
        if not hasattr(self.model, 'restore') or not hasattr(self.model, 'backbone'):
            raise TypeError(f'{type(self.model).__name__} is not a one-step SD restorer (OSEDiff / HeadsUp)')
        self.scale = int(scale)
        self.face_size = None if face_size is None else int(face_size)
        self.tile, self.tile_overlap, self.seed = int(tile), int(tile_overlap), int(seed)
        self.checkpoint_path: Optional[str] = None
        if pretrained:
            if checkpoint is None:
                raise ValueError('OSEDiffRestorer needs the OSEDiff checkpoint (osediff.pkl / osediff_face.pkl); '
                                 'pass checkpoint=..., or pretrained=False for random LoRA weights')
            if not isinstance(checkpoint, dict) or set(checkpoint) <= {'path', 'url', 'sha256', 'filename'}:
                self.checkpoint_path = str(resolve_file(checkpoint))
                checkpoint = self.checkpoint_path
            load_osediff_checkpoint(self.model._backbone, checkpoint)
        self._finish_init(pretrained, checkpoint, 'checkpoint')
        if latent_tiling is not None:
            self.model.set_tiling(dict(latent_tiling))
        self.inference_dtype = inference_dtype

    def _restore_tile(self, image: Tensor) -> Tensor:
        """``B x 3 x h x w`` in [0, 1] -> ``B x 3 x (scale h) x (scale w)``: bicubic enlargement + one step."""
        if self.scale > 1:
            image = F.interpolate(image, scale_factor=self.scale, mode='bicubic', align_corners=False).clamp(0, 1)
        return self.model.restore(image)

    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x (scale H) x (scale W)`` RGB, about [0, 1]."""
        if self.inference_dtype is not None and self.model.__dict__.get('_fast_backbone') is None:
            self.model.enable_fast_inference(self.inference_dtype, device=image.device)
        devices = [torch.cuda.current_device()] if image.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if self.tile > 0:
                return tiled_forward(self._restore_tile, image, self.scale, self.tile, self.tile_overlap,
                                     progress=False)
            return self._restore_tile(image)

    def extra_repr(self) -> str:
        return (f'scale={self.scale}, face_size={self.face_size}, tile={self.tile}, '
                f'inference_dtype={self.inference_dtype}')
