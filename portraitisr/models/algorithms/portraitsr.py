"""PortraitSR training model (PortraitSR, AAAI 2026): the face SR network with its five losses (Eq. 11-15).

One optimiser (Adam, beta (0.9, 0.99), lr 2e-4, "Implementation Details") trains everything: the SR branch
(encoder, SSP, ATP, HPF, shared decoder) and the HR reconstruction branch (``E_rec`` + shared decoder) that fills
the dictionary (Eq. 4). Both branches run inside the network's ``forward``, so a DDP wrapper sees every trained
parameter.
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from portraitisr.models.data_preprocessors.sr_data_preprocessor import SRDataPreprocessor, _stack
from portraitisr.models.face_sr import PortraitSRNet
from portraitisr.models.losses.portraitsr_losses import PORTRAITSR_LOSS_WEIGHTS, dictionary_decorrelation_loss
from portraitisr.registry import LOSSES, MODELS
from .one_step_restorer import pack_outputs


@MODELS.register_module()
class PortraitSRDataPreprocessor(SRDataPreprocessor):
    """:class:`SRDataPreprocessor` (``inputs`` = LR bicubic-upsampled to the GT size) that also stacks the
    ``parsing`` maps (``B x K x H x W``) of an :class:`~portraitisr.datasets.AlignedFaceDataset` batch
    (``parsing=None`` for batches without them)."""

    def forward(self, data: dict, training: bool = False) -> dict:
        out = super().forward(data, training)
        parsing = data.get('parsing')  # AlignedFaceDataset gives it for every item or for none
        out['parsing'] = _stack(self.cast_data(parsing)).float() if parsing is not None else None
        return out


@MODELS.register_module()
class PortraitSR(BaseModel):
    """PortraitSR: ``L_1 + l1 L_per + l2 L_pm + l3 L_rec + l4 L_dic`` (Eq. 15).

    Args:
        generator: keyword arguments of :class:`~portraitisr.models.face_sr.PortraitSRNet`.
        perceptual_loss: ``LOSSES`` config of ``L_per`` (default VGG16, weight lambda_1 = 0.1); None disables it.
        pixel_weight: weight of ``L_1`` (1 in Eq. 15).
        parsing_weight / reconstruction_weight / dictionary_weight: lambda_2..lambda_4 (0.005, 0.5, 0.001 as
            printed; see :mod:`portraitisr.models.losses.portraitsr_losses` for the ambiguity).
        dictionary_similarity: ``'abs'`` / ``'square'`` / ``'raw'`` of :func:`dictionary_decorrelation_loss`.
        data_preprocessor: default :class:`PortraitSRDataPreprocessor`.
    Batches without parsing maps train without ``L_pm`` (logged once); the parsing decoder still learns through
    the SR loss because SSP and HPF consume its output.

    A term whose part the generator's ablation switches removed is absent, not zero (PortraitSR, AAAI 2026, "Ablation
    Studies"): no ``L_pm`` without a structure prior (there is no ``P_hat``), no ``L_rec`` and no ``L_dic``
    without the jointly trained dictionary (no reconstruction branch; a fixed dictionary does not learn). Its
    weight is then unused.
    """

    def __init__(self, generator: Optional[dict] = None, perceptual_loss: Optional[dict] = None,
                 pixel_weight: float = 1.0, parsing_weight: float = PORTRAITSR_LOSS_WEIGHTS['parsing'],
                 reconstruction_weight: float = PORTRAITSR_LOSS_WEIGHTS['reconstruction'],
                 dictionary_weight: float = PORTRAITSR_LOSS_WEIGHTS['dictionary'],
                 dictionary_similarity: str = 'abs',
                 data_preprocessor: Union[dict, nn.Module, None] = None, init_cfg: Optional[dict] = None) -> None:
        if not isinstance(data_preprocessor, nn.Module):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='PortraitSRDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.generator = PortraitSRNet(**(generator or {}))
        self.perceptual_loss = LOSSES.build(perceptual_loss) if perceptual_loss is not None else None
        self.pixel_weight, self.parsing_weight = pixel_weight, parsing_weight
        self.reconstruction_weight, self.dictionary_weight = reconstruction_weight, dictionary_weight
        self.dictionary_similarity = dictionary_similarity
        self._warned_no_parsing = False

    @property
    def _generator(self) -> PortraitSRNet:
        return getattr(self.generator, 'module', self.generator)  # unwrapped from a DDP wrapper

    def loss(self, inputs: Tensor, gt: Tensor, parsing: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The weighted terms of Eq. 15 for bicubic-upsampled ``inputs`` and ``gt`` (``B x 3 x H x W`` in [0, 1])
        and, when given, ground-truth ``parsing`` maps ``B x K x H x W``."""
        out = self.generator(inputs, gt)
        sr = out['sr']
        losses = dict(loss_l1=self.pixel_weight * F.l1_loss(sr, gt))
        if self.perceptual_loss is not None:
            losses['loss_perceptual'] = self.perceptual_loss(sr, gt)
        if 'parsing' in out:  # a structure prior: L_pm (Eq. 12) when the batch has targets
            if parsing is not None:
                losses['loss_parsing'] = self.parsing_weight * F.l1_loss(out['parsing'], parsing)
            elif not self._warned_no_parsing:
                print_log('PortraitSR: batch without parsing maps, training without L_pm (logged once)',
                          logger='current', level=30)
                self._warned_no_parsing = True
        if 'rec' in out:  # the jointly trained dictionary: L_rec (Eq. 13) and L_dic (Eq. 14)
            losses['loss_rec'] = self.reconstruction_weight * F.l1_loss(out['rec'], gt)
            losses['loss_dict'] = self.dictionary_weight * dictionary_decorrelation_loss(
                self._generator.atp.dictionary, self.dictionary_similarity)
        return losses

    @torch.no_grad()
    def restore(self, inputs: Tensor) -> Tensor:
        """``B x 3 x H x W`` bicubic-upsampled LR in [0, 1] -> SR ``B x 3 x H x W`` clamped to [0, 1]."""
        return self._generator.restore(inputs).clamp(0, 1)

    def forward(self, inputs: Tensor, gt: Optional[Tensor] = None, metainfo: Optional[List[dict]] = None,
                parsing: Optional[Tensor] = None, mode: str = 'tensor'):
        """``mode='loss'``: dict of losses (needs ``gt``); ``'tensor'``/``'predict'``: restored images."""
        if mode == 'loss':
            if gt is None:
                raise ValueError('PortraitSR training needs `gt`')
            return self.loss(inputs, gt, parsing)
        if mode in ('tensor', 'predict'):
            return self.restore(inputs)
        raise ValueError(f'unknown mode {mode!r}; use "loss", "tensor" or "predict"')

    def _predict(self, data: dict) -> List[dict]:
        return pack_outputs(self.restore(data['inputs']), data)

    def val_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def test_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))
