"""PortraitSR: artist-inspired prior learning for progressive face super-resolution (PortraitSR, AAAI 2026, Fig. 2).

``I_lr`` (bicubic-upsampled to the output size, as in the paper's CelebA/Helen protocol where the 16x16 or
32x32 LR is compared at 128x128) -> encoder ``E`` -> ``F_latent`` -> SSP -> ``F_SSP`` -> ATP -> ``F_ATP`` ->
HPF -> ``F_latent + sum_k F_attn^(k)`` -> shared decoder ``D_sr`` -> ``I_sr``. In training the HR
reconstruction branch ``D_sr(ATP(E_rec(I_hr)))`` (Eq. 4) runs beside it and fills the dictionary.

Switches remove or replace each prior as the paper's ablations do (Tables 2-5, section "Ablation Studies"); their
defaults build the full model. See :class:`PortraitSRNet` and docs/portraitsr.md for the table rows.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .associative_texture_prior import AssociativeTexturePrior, load_dictionary
from .backbone import NUM_LEVELS, FaceSRDecoder, FaceSREncoder
from .holistic_prior_fusion import HolisticPriorFusion
from .sketching_structure_prior import FUSIONS, SketchingStructurePrior, StructureModulation

DOWNSCALE = 2**(NUM_LEVELS - 1)  # the latent is at H/8
#: ``texture_prior`` values: the dictionary trained jointly with the HR reconstruction branch (the paper's ATP), or
#: a given dictionary held fixed (Table 4's HD-RF / HD-Retrain rows).
TEXTURE_PRIORS = ('joint', 'fixed')


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

    Ablation switches (defaults: the full model). A removed part has no parameters and no output:
        structure_prior: ``'ssp'`` (Eq. 1-3), another way of injecting the parsing features with ``L_pm`` kept
            (``'supervision'``, ``'attention'``, ``'concat'``, ``'add'``: Table 3, see
            :class:`SketchingStructurePrior`), or ``None``: no SSP, no parsing decoder, no ``parsing`` output
            (Table 2 "without SSP").
        texture_prior: ``'joint'`` (the paper's ATP with the reconstruction branch ``E_rec``), ``'fixed'``: a
            given dictionary (``dictionary_weights``) held fixed, with no reconstruction branch (Table 4 HD-RF /
            HD-Retrain), or ``None``: no ATP, no ``E_rec``, no ``rec`` output (Table 2 "without ATP").
        dictionary_weights / dictionary_key: the fixed dictionary (a tensor, or a checkpoint and its key, see
            :func:`load_dictionary`); only with ``texture_prior='fixed'``.
        holistic_fusion: HPF (Eq. 7-10). Without it (Table 2 rows without HPF) the output of the last prior in the
            chain goes to the decoder: ``D_sr(F_ATP)``, ``D_sr(F_SSP)`` with only SSP, ``D_sr(F_latent)`` for the
            baseline. HPF needs both priors (it fuses ``F_SSP`` and ``F_ATP`` under masks from ``P_hat``).
        decoder_structure_layers: Table 5 ("number of decoder fusion layers"): the parsing features ``F_pm`` also
            modulate (Eq. 2-3, own 3x3 conv each) the output of the first ``n`` decoder stages (H/4, H/2, H;
            0 = "None", the paper's model). Needs a structure prior.
    """

    def __init__(self, dim: int = 48, depths: Sequence[int] = (4, 6, 6, 8), heads: Sequence[int] = (1, 2, 4, 8),
                 ffn_expansion: float = 2.66, refine_depth: int = 4, dict_size: int = 512,
                 dict_channels: int = 384, dict_init_std: float = 0.02, num_parsing_classes: int = 19,
                 parsing_channels: Optional[int] = None, parsing_depth: int = 1, num_regions: int = 4,
                 attention_reduction: int = 8, gamma_offset: float = 0.0, global_residual: bool = False,
                 structure_prior: Optional[str] = 'ssp', texture_prior: Optional[str] = 'joint',
                 dictionary_weights: Any = None, dictionary_key: Optional[str] = None,
                 holistic_fusion: bool = True, decoder_structure_layers: int = 0) -> None:
        super().__init__()
        latent_channels = dim * DOWNSCALE
        parsing_channels = parsing_channels or latent_channels
        self._check_switches(structure_prior, texture_prior, dictionary_weights, holistic_fusion,
                             decoder_structure_layers)
        if texture_prior == 'joint' and dict_channels != latent_channels:
            raise ValueError(f'dict_channels ({dict_channels}) must equal the latent width 8 * dim '
                             f'({latent_channels}): entries are added to latent features (Eq. 6)')
        self.encoder = FaceSREncoder(dim, depths, heads, ffn_expansion)
        if texture_prior == 'joint':
            self.rec_encoder = FaceSREncoder(dim, depths, heads, ffn_expansion)
        self.decoder = FaceSRDecoder(dim, depths, heads, ffn_expansion, refine_depth)
        if structure_prior is not None:
            self.ssp = SketchingStructurePrior(latent_channels, parsing_channels, num_parsing_classes, parsing_depth,
                                               heads[-1], ffn_expansion, upscale=DOWNSCALE,
                                               gamma_offset=gamma_offset, fusion=structure_prior)
        if texture_prior == 'joint':
            self.atp = AssociativeTexturePrior(dict_size, dict_channels, dict_init_std)
        elif texture_prior == 'fixed':
            self.atp = AssociativeTexturePrior(channels=latent_channels,
                                               dictionary=load_dictionary(dictionary_weights, dictionary_key))
        if holistic_fusion:
            self.hpf = HolisticPriorFusion(latent_channels, num_parsing_classes, num_regions, attention_reduction)
        if decoder_structure_layers:
            self.decoder_structure = nn.ModuleList(
                StructureModulation(parsing_channels, width, gamma_offset)
                for width in self.decoder.stage_widths[:decoder_structure_layers])
        self.global_residual = global_residual
        self.num_parsing_classes = num_parsing_classes
        self.structure_prior, self.texture_prior = structure_prior, texture_prior
        self.holistic_fusion, self.decoder_structure_layers = holistic_fusion, decoder_structure_layers

    @staticmethod
    def _check_switches(structure_prior: Optional[str], texture_prior: Optional[str], dictionary_weights: Any,
                        holistic_fusion: bool, decoder_structure_layers: int) -> None:
        if structure_prior is not None and structure_prior not in FUSIONS:
            raise ValueError(f'structure_prior must be None or one of {", ".join(FUSIONS)}; got {structure_prior!r}')
        if texture_prior is not None and texture_prior not in TEXTURE_PRIORS:
            raise ValueError(f'texture_prior must be None or one of {", ".join(TEXTURE_PRIORS)}; '
                             f'got {texture_prior!r}')
        if (texture_prior == 'fixed') != (dictionary_weights is not None):
            raise ValueError("texture_prior='fixed' and dictionary_weights go together: a fixed dictionary must be "
                             f'given (texture_prior={texture_prior!r}, dictionary_weights={dictionary_weights!r})')
        if holistic_fusion and (structure_prior is None or texture_prior is None):
            raise ValueError('holistic_fusion (HPF) fuses F_SSP and F_ATP under masks from the parsing map: it needs '
                             'a structure_prior and a texture_prior (set holistic_fusion=False to remove HPF)')
        if not 0 <= decoder_structure_layers <= NUM_LEVELS - 1:
            raise ValueError(f'decoder_structure_layers must be in 0..{NUM_LEVELS - 1} (decoder stages), got '
                             f'{decoder_structure_layers}')
        if decoder_structure_layers and structure_prior is None:
            raise ValueError('decoder_structure_layers injects the parsing features of SSP: it needs a '
                             'structure_prior')

    @property
    def reconstructs(self) -> bool:
        """Whether the HR reconstruction branch (Eq. 4) exists, i.e. the dictionary is trained jointly."""
        return self.texture_prior == 'joint'

    def super_resolve(self, lq: Tensor) -> Dict[str, Tensor]:
        """SR branch: ``lq B x 3 x H x W`` (H, W multiples of 8, bicubic-upsampled LR in [0, 1]) ->
        ``dict(sr=B x 3 x H x W, parsing=B x K x H x W softmax probabilities)`` (``parsing`` only with a
        structure prior)."""
        latent, skips = self.encoder(lq)
        out: Dict[str, Tensor] = {}
        features = latent
        hooks: List = []
        if self.structure_prior is not None:
            features, out['parsing'], parsing_features = self.ssp.with_features(latent)
            hooks = [partial(layer, parsing_features=parsing_features)
                     for layer in getattr(self, 'decoder_structure', [])]
        ssp = features
        if self.texture_prior is not None:
            features = self.atp(features)
        if self.holistic_fusion:
            features = self.hpf(latent, ssp, features, out['parsing'])
        sr = self.decoder(features, skips, hooks)
        if self.global_residual:
            sr = sr + lq
        return dict(sr=sr, **out)

    def reconstruct(self, hr: Tensor, lq: Optional[Tensor] = None) -> Tensor:
        """Eq. 4: ``I_rec = D_sr(ATP(E_rec(I_hr)))`` for ``hr B x 3 x H x W`` in [0, 1]; with
        ``global_residual`` the bicubic ``lq`` of the same face (same shape) is added."""
        if not self.reconstructs:
            raise RuntimeError(f'this PortraitSRNet has no reconstruction branch (texture_prior='
                               f'{self.texture_prior!r}); only the jointly trained dictionary has one')
        latent, skips = self.rec_encoder(hr)
        rec = self.decoder(self.atp(latent), skips)
        if self.global_residual:
            if lq is None:
                raise ValueError('global_residual=True: reconstruct() needs the bicubic lq of the face')
            rec = rec + lq
        return rec

    def forward(self, lq: Tensor, hr: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Both branches in one call (so a DDP wrapper sees every trained parameter): ``rec`` only with ``hr`` and
        a reconstruction branch."""
        out = self.super_resolve(lq)
        if hr is not None and self.reconstructs:
            out['rec'] = self.reconstruct(hr, lq)
        return out

    def restore(self, lq: Tensor) -> Tensor:
        """Inference on any size: reflect-pad to a multiple of 8, super-resolve, crop back. ``B x 3 x H x W``."""
        h, w = lq.shape[-2:]
        pad_h, pad_w = (-h) % DOWNSCALE, (-w) % DOWNSCALE
        padded = F.pad(lq, (0, pad_w, 0, pad_h), mode='reflect') if pad_h or pad_w else lq
        return self.super_resolve(padded)['sr'][..., :h, :w]
