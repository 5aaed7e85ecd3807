"""HeadsUp's face fidelity loss (HeadsUp, arXiv 2510.09924, Eq. 3) on aligned face crops."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import LOSSES


@LOSSES.register_module()
class FaceFidelityLoss(nn.Module):
    """``L2(x_f, x̂_f) + lambda_LPIPS * LPIPS(x_f, x̂_f)`` on aligned faces (HeadsUp Eq. 3).

    The paper writes the pixel term as ``||x_f - x̂_f||_2``; like the OSEDiff terms it is taken
    as the mean squared error on [-1, 1] images. ``lambda_LPIPS = 0.8`` (paper, section 4.1).

    Args:
        lpips_weight: lambda_LPIPS.
        lpips: ``LOSSES`` config of the perceptual term (LPIPS-VGG, as OSEDiff's loss).
        loss_weight: lambda^fid (1 in the paper).

    ``forward(pred_faces, gt_faces)``: ``N x 3 x h x w`` aligned crops in [0, 1] -> scalar.
    An empty batch (no face in any image) gives a zero that keeps the graph.
    """

    def __init__(self, lpips_weight: float = 0.8, lpips: Optional[dict] = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.lpips_weight, self.loss_weight = lpips_weight, loss_weight
        self.lpips = LOSSES.build(lpips or dict(type='LPIPSLoss', net='vgg')) if lpips_weight else None

    def forward(self, pred_faces: Tensor, gt_faces: Tensor) -> Tensor:
        if pred_faces.shape != gt_faces.shape:
            raise ValueError(f'face crops differ in shape: {tuple(pred_faces.shape)} vs '
                             f'{tuple(gt_faces.shape)}')
        if pred_faces.shape[0] == 0:
            return pred_faces.sum() * 0
        pred, target = pred_faces * 2 - 1, gt_faces * 2 - 1
        loss = F.mse_loss(pred.float(), target.float())
        if self.lpips is not None:
            loss = loss + self.lpips_weight * self.lpips(pred, target)
        return self.loss_weight * loss
