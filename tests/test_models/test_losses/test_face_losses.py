"""HeadsUp's face losses: hand-computed values, reference weighting, gradients through the warp."""
import math

import pytest
import torch

from portraitisr.models.losses import identity_loss_terms
from portraitisr.registry import BACKBONES, FACE_ALIGNERS, LOSSES
from tests.helpers.data_files import require_pypi_weights

ID_EXTRACTOR = dict(type='ArcFaceIResNet', depth=18)  # random weights: the maths, not the model


def test_identity_terms_against_hand_computation():
    phi_pg, phi_pr, phi_gr = torch.tensor([0.5, 0.2]), torch.tensor([0.8, -0.4]), torch.tensor([0.9, 0.7])
    has_ref = torch.tensor([True, False])
    loss = identity_loss_terms(phi_pg, phi_pr, phi_gr, has_ref)
    expected_0 = -math.log(0.75) - math.log(0.9) * 0.9
    expected_1 = -math.log(0.6)  # no reference: the GT term only, phi(., 0) = 0
    torch.testing.assert_close(loss, torch.tensor([expected_0, expected_1]))


def test_reference_weighting_sign_and_range():
    phi_pg = torch.full((5, ), 0.3)
    phi_pr = torch.full((5, ), 0.1)
    weights = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    loss = identity_loss_terms(phi_pg, phi_pr, weights, torch.ones(5, dtype=torch.bool))
    gt_only = -math.log(0.65)
    ref = -math.log(0.55)  # > 0: a positive weight adds loss, a negative one subtracts it
    torch.testing.assert_close(loss, gt_only + ref * weights)
    # Matching the reference better lowers the loss only when the GT resembles the reference.
    better = identity_loss_terms(phi_pg, phi_pr + 0.5, weights, torch.ones(5, dtype=torch.bool))
    assert (better[weights > 0] < loss[weights > 0]).all()
    assert torch.equal(better[weights == 0], loss[weights == 0])
    # Finite at the extremes of phi.
    extreme = identity_loss_terms(torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, 1.0]),
                                  torch.tensor([1.0, 1.0]), torch.tensor([True, True]))
    assert torch.isfinite(extreme).all() and extreme[1] == 0


def test_identity_loss_equals_gt_term_without_reference():
    torch.manual_seed(0)
    loss_fn = LOSSES.build(dict(type='IdentityLoss', extractor=ID_EXTRACTOR, loss_weight=4.0))
    pred, gt, ref = torch.rand(3, 3, 112, 112), torch.rand(3, 3, 112, 112), torch.rand(3, 3, 112, 112)
    phi = loss_fn.similarity(pred, gt)
    assert ((phi >= -1) & (phi <= 1)).all()
    without = loss_fn(pred, gt)
    torch.testing.assert_close(without, 4.0 * (-torch.log((phi + 1) / 2)).mean())
    flagged_off = loss_fn(pred, gt, ref, has_ref=torch.zeros(3, dtype=torch.bool))
    assert torch.equal(flagged_off, without)
    with_ref = loss_fn(pred, gt, ref)
    phi_pr, phi_gr = loss_fn.similarity(pred, ref), loss_fn.similarity(gt, ref)
    expected = (-torch.log((phi + 1) / 2) - torch.log((phi_pr + 1) / 2) * phi_gr).mean() * 4.0
    torch.testing.assert_close(with_ref, expected)
    assert loss_fn(pred[:0], gt[:0]) == 0


def test_face_fidelity_is_mse_plus_weighted_lpips():
    require_pypi_weights('vgg16.ckpt')
    loss_fn = LOSSES.build(dict(type='FaceFidelityLoss'))
    lpips = LOSSES.build(dict(type='LPIPSLoss', net='vgg'))
    pred, gt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    expected = ((pred * 2 - 1 - (gt * 2 - 1))**2).mean() + 0.8 * lpips(pred * 2 - 1, gt * 2 - 1)
    torch.testing.assert_close(loss_fn(pred, gt), expected, rtol=1e-5, atol=1e-6)
    assert loss_fn(gt, gt) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('estimator', ['lmeds', 'lstsq'])
def test_face_losses_reach_the_lora_through_the_face_warp(estimator, tiny_cfg, tiny_text_encoder):
    require_pypi_weights('vgg16.ckpt')
    backbone = BACKBONES.build(dict(tiny_cfg.tiny_backbone, in_channels=9))
    aligner = FACE_ALIGNERS.build(dict(type='FaceAligner', template='arcface112', output_size=56,
                                       estimator=estimator))
    identity = LOSSES.build(dict(type='IdentityLoss', extractor=ID_EXTRACTOR))
    fidelity = LOSSES.build(dict(type='FaceFidelityLoss'))
    with torch.no_grad():  # LoRA B is zero at start; give it values so LoRA A also gets gradients
        for name, param in backbone.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.02)
    lq, gt = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    landmarks = torch.tensor([[[50., 55.], [78., 55.], [64., 70.], [53., 86.], [75., 86.]]])
    sr = backbone(lq, tiny_text_encoder(['']), ref=torch.rand(1, 3, 128, 128),
                  face_mask=torch.ones(1, 1, 128, 128))
    matrices = aligner.estimate(landmarks)
    pred_face, gt_face = aligner.align(sr, matrices), aligner.align(gt, matrices)
    loss = identity(pred_face, gt_face, torch.rand_like(gt_face)) + fidelity(pred_face, gt_face)
    loss.backward()
    for prefix in ('vae.encoder', 'unet.'):
        grads = [p.grad for n, p in backbone.named_parameters() if n.startswith(prefix) and 'lora' in n]
        assert grads and all(g is not None for g in grads), prefix
        assert any(g.abs().sum() > 0 for g in grads), prefix
