"""PortraitSR: artist-inspired prior learning for progressive face super-resolution (paper 002, Fig. 2).

``I_lr`` (bicubic-upsampled to the output size, as in the paper's CelebA/Helen protocol where the 16x16 or
32x32 LR is compared at 128x128) -> encoder ``E`` -> ``F_latent`` -> SSP -> ``F_SSP`` -> ATP -> ``F_ATP`` ->
HPF -> ``F_latent + sum_k F_attn^(k)`` -> shared decoder ``D_sr`` -> ``I_sr``. In training the HR
reconstruction branch ``D_sr(ATP(E_rec(I_hr)))`` (Eq. 4) runs beside it and fills the dictionary.
"""
from typing import Dict, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .associative_texture_prior import AssociativeTexturePrior
from .backbone import NUM_LEVELS, FaceSRDecoder, FaceSREncoder
from .holistic_prior_fusion import HolisticPriorFusion
from .sketching_structure_prior import SketchingStructurePrior

DOWNSCALE = 2**(NUM_LEVELS - 1)  # the latent is at H/8


class PortraitSRNet(nn.Module):
    """The PortraitSR network. ``forward(lq, hr=None)`` -> ``dict(sr, parsing[, rec])``.

    Paper-given settings (defaults): latent width ``8 * dim = 384`` at H/8 ("Overview"), dictionary
    ``N = 512`` x ``C = 384`` with N(0, 0.02^2) init ("Implementation Details").

    Choices where the paper is silent (all configurable):
        - backbone: Restormer's blocks and sizes (``dim`` 48, ``depths`` (4, 6, 6, 8), ``heads`` (1, 2, 4, 8),
          FFN expansion 2.66, 4 refinement blocks), whose widths 48/96/192/384 give exactly the paper's 384-wide
          latent at H/8; the decoder mirrors the encoder with U-Net skips from the encoder that made the latent;
        - ``E_rec`` is a second encoder of the same architecture (Eq. 4 names it apart from ``E``); the decoder
          is shared, as the paper states;
        - SSP: parsing decoder = 1x1 projection + ``parsing_depth`` blocks at the latent size, 3x3 head, bilinear
          x8 upsampling, softmax over ``num_parsing_classes`` (19, CelebAMask-HQ labels); ``gamma_offset`` 0
          (Eq. 3 as printed);
        - HPF: ``num_regions`` m = 4 masks, CBAM-style attention per region (see :class:`HolisticPriorFusion`);
        - ``global_residual``: add the bicubic input ``lq`` to the decoder's output in *both* branches
          (``I_sr = lq + D_sr(...)``, ``I_rec = lq + D_sr(ATP(E_rec(I_hr)))``), so the shared decoder always
          produces "the detail bicubic upsampling lacks" (adding ``I_hr`` itself would make reconstruction
          trivial). Off by default, as Eq. 4 and 10 decode the image directly; on, a small network beats bicubic
          after a few hundred steps (the debug config).

    Args:
        dim: width ``C`` of the first level.
        depths / heads: Transformer blocks / attention heads at H, H/2, H/4, H/8.
        ffn_expansion: hidden width ratio of the feed-forward networks.
        refine_depth: full-size blocks at the end of the decoder.
        dict_size / dict_channels / dict_init_std: the dictionary (``dict_channels`` must equal ``8 * dim``).
        num_parsing_classes / parsing_channels / parsing_depth: SSP's parsing decoder.
        num_regions / attention_reduction: HPF.
        gamma_offset: see :class:`SketchingStructurePrior`.
        global_residual: see above.
    """

    def __init__(self, dim: int = 48, depths: Sequence[int] = (4, 6, 6, 8), heads: Sequence[int] = (1, 2, 4, 8),
                 ffn_expansion: float = 2.66, refine_depth: int = 4, dict_size: int = 512,
                 dict_channels: int = 384, dict_init_std: float = 0.02, num_parsing_classes: int = 19,
                 parsing_channels: Optional[int] = None, parsing_depth: int = 1, num_regions: int = 4,
                 attention_reduction: int = 8, gamma_offset: float = 0.0, global_residual: bool = False) -> None:
        super().__init__()
        latent_channels = dim * DOWNSCALE
        if dict_channels != latent_channels:
            raise ValueError(f'dict_channels ({dict_channels}) must equal the latent width 8 * dim '
                             f'({latent_channels}): entries are added to latent features (Eq. 6)')
        self.encoder = FaceSREncoder(dim, depths, heads, ffn_expansion)
        self.rec_encoder = FaceSREncoder(dim, depths, heads, ffn_expansion)
        self.decoder = FaceSRDecoder(dim, depths, heads, ffn_expansion, refine_depth)
        self.ssp = SketchingStructurePrior(latent_channels, parsing_channels or latent_channels,
                                           num_parsing_classes, parsing_depth, heads[-1], ffn_expansion,
                                           upscale=DOWNSCALE, gamma_offset=gamma_offset)
        self.atp = AssociativeTexturePrior(dict_size, dict_channels, dict_init_std)
        self.hpf = HolisticPriorFusion(latent_channels, num_parsing_classes, num_regions, attention_reduction)
        self.global_residual = global_residual
        self.num_parsing_classes = num_parsing_classes

    def super_resolve(self, lq: Tensor) -> Dict[str, Tensor]:
        """SR branch: ``lq B x 3 x H x W`` (H, W multiples of 8, bicubic-upsampled LR in [0, 1]) ->
        ``dict(sr=B x 3 x H x W, parsing=B x K x H x W softmax probabilities)``."""
        latent, skips = self.encoder(lq)
        ssp, parsing = self.ssp(latent)
        atp = self.atp(ssp)
        sr = self.decoder(self.hpf(latent, ssp, atp, parsing), skips)
        if self.global_residual:
            sr = sr + lq
        return dict(sr=sr, parsing=parsing)

    def reconstruct(self, hr: Tensor, lq: Optional[Tensor] = None) -> Tensor:
        """Eq. 4: ``I_rec = D_sr(ATP(E_rec(I_hr)))`` for ``hr B x 3 x H x W`` in [0, 1]; with
        ``global_residual`` the bicubic ``lq`` of the same face (same shape) is added."""
        latent, skips = self.rec_encoder(hr)
        rec = self.decoder(self.atp(latent), skips)
        if self.global_residual:
            if lq is None:
                raise ValueError('global_residual=True: reconstruct() needs the bicubic lq of the face')
            rec = rec + lq
        return rec

    def forward(self, lq: Tensor, hr: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Both branches in one call (so a DDP wrapper sees every trained parameter): ``rec`` only with ``hr``."""
        out = self.super_resolve(lq)
        if hr is not None:
            out['rec'] = self.reconstruct(hr, lq)
        return out

    def restore(self, lq: Tensor) -> Tensor:
        """Inference on any size: reflect-pad to a multiple of 8, super-resolve, crop back. ``B x 3 x H x W``."""
        h, w = lq.shape[-2:]
        pad_h, pad_w = (-h) % DOWNSCALE, (-w) % DOWNSCALE
        padded = F.pad(lq, (0, pad_w, 0, pad_h), mode='reflect') if pad_h or pad_w else lq
        return self.super_resolve(padded)['sr'][..., :h, :w]
