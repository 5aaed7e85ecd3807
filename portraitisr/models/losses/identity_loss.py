"""HeadsUp's reference-aware identity loss (HeadsUp, arXiv 2510.09924, Eq. 4-5)."""
from typing import Optional

import torch
from torch import Tensor, nn

from portraitisr.registry import IDENTITY_EXTRACTORS, LOSSES


def identity_loss_terms(phi_pred_gt: Tensor, phi_pred_ref: Tensor, phi_gt_ref: Tensor,
                        has_ref: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-face HeadsUp identity loss from cosine similarities in [-1, 1] (Eq. 5).

    ``-log((phi(x̂, x) + 1) / 2) - log((phi(x̂, r) + 1) / 2) * phi(x, r)``, where a missing
    reference has ``phi(., 0) = 0``: the reference term vanishes and only the GT term remains.
    ``phi(x, r)`` weights the reference term as printed, so a reference more similar to the GT
    pulls harder; a negative similarity would push away (HeadsUp pairs have phi > 0.65).
    ``eps`` keeps the log finite at phi = -1.
    """
    gt_term = -torch.log(((phi_pred_gt + 1) / 2).clamp_min(eps))
    weight = torch.where(has_ref, phi_gt_ref, torch.zeros_like(phi_gt_ref))
    ref_term = -torch.log(((phi_pred_ref + 1) / 2).clamp_min(eps)) * weight
    return gt_term + torch.where(has_ref, ref_term, torch.zeros_like(ref_term))


@LOSSES.register_module()
class IdentityLoss(nn.Module):
    """Identity loss of HeadsUp with any registered identity extractor (CVLFace in the paper).

    Args:
        extractor: ``IDENTITY_EXTRACTORS`` config (frozen; gradients reach its input).
        loss_weight: lambda^id (4 in the paper, section 4.1).

    ``forward(pred_faces, gt_faces, ref_faces=None, has_ref=None)``: ``N x 3 x h x w`` aligned
    crops in [0, 1]; ``ref_faces`` the reference of each face (any content where ``has_ref`` is
    False); ``has_ref`` ``(N,)`` bool. Returns the mean over faces (zero for no face).
    """

    def __init__(self, extractor: dict, loss_weight: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.extractor = IDENTITY_EXTRACTORS.build(extractor)
        self.loss_weight, self.eps = loss_weight, eps

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """phi(a, b) of Eq. 4: cosine similarity of the embeddings, ``(N,)`` in [-1, 1]."""
        return torch.nn.functional.cosine_similarity(self.extractor(a), self.extractor(b), dim=-1)

    def forward(self, pred_faces: Tensor, gt_faces: Tensor, ref_faces: Optional[Tensor] = None,
                has_ref: Optional[Tensor] = None) -> Tensor:
        if pred_faces.shape[0] == 0:
            return pred_faces.sum() * 0
        pred = self.extractor(pred_faces)
        with torch.no_grad():  # GT and reference are data
            gt = self.extractor(gt_faces)
        cos = torch.nn.functional.cosine_similarity
        phi_pred_gt = cos(pred, gt, dim=-1)
        if ref_faces is None:
            has_ref = torch.zeros(pred.shape[0], dtype=torch.bool, device=pred.device)
            phi_pred_ref = phi_gt_ref = torch.zeros_like(phi_pred_gt)
        else:
            if has_ref is None:
                has_ref = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
            with torch.no_grad():
                ref = self.extractor(ref_faces)
            phi_pred_ref, phi_gt_ref = cos(pred, ref, dim=-1), cos(gt, ref, dim=-1)
        terms = identity_loss_terms(phi_pred_gt, phi_pred_ref, phi_gt_ref, has_ref.bool(), self.eps)
        return self.loss_weight * terms.mean()
