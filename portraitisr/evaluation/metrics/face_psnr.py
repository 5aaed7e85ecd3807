"""PSNR on the aligned face: the face region HeadsUp's face losses target (paper 000, section 2.2)."""
from typing import List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from portraitisr.registry import FACE_ALIGNERS, METRICS
from .psnr import psnr


@METRICS.register_module()
class FacePSNR(BaseMetric):
    """Mean PSNR between the predicted and GT faces, both aligned from the GT landmarks.

    Faces are warped out of prediction and GT with the same aligner (``Omega``: the FFHQ template,
    as the face losses see them); samples without ``face_landmarks`` in their metainfo are skipped
    and counted in ``FacePSNR_faces``. Only the part of the crop inside the image counts (the
    border fill of a face near the image edge is identical in both and would inflate the score).

    Args:
        aligner: ``FACE_ALIGNERS`` config (default: FFHQ template at 128 px).
        test_y_channel / quantize: as :class:`PSNR`.
        prefix: metric-name prefix.
    """

    default_prefix = ''

    def __init__(self, aligner: Optional[dict] = None, test_y_channel: bool = True, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.aligner = FACE_ALIGNERS.build(aligner or dict(type='FaceAligner', template='ffhq512',
                                                           output_size=128))
        self.test_y_channel, self.quantize = test_y_channel, quantize

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            landmarks = sample.get('metainfo', {}).get('face_landmarks')
            if landmarks is None:
                continue
            if sample.get('gt') is None:
                raise KeyError('FacePSNR needs ground truth')
            pred = sample['pred'][None].float()
            if self.quantize:
                pred = torch.round(pred.clamp(0, 1) * 255) / 255
            gt = sample['gt'][None].float()
            matrices = self.aligner.estimate(torch.as_tensor(landmarks, dtype=torch.float64)[None])
            inside = self.aligner.validity_mask(gt, matrices) > 0.999
            pred_face, gt_face = self.aligner.align(pred, matrices), self.aligner.align(gt, matrices)
            weight = inside.expand_as(pred_face)
            # PSNR over the pixels inside the image: zero the rest in both, rescale the MSE
            value = psnr(pred_face * weight, gt_face * weight, self.test_y_channel)
            coverage = weight.float().mean().clamp_min(1e-6)
            self.results.append(float(value + 10 * torch.log10(coverage.double())))

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(FacePSNR=sum(results) / max(len(results), 1), FacePSNR_faces=len(results))
