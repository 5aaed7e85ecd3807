"""PortraitSR network modules (AAAI 2026): shapes, dictionary retrieval (Eq. 5-6), decorrelation loss (Eq. 14)."""
import pytest
import torch

from portraitisr.models.face_sr import (AssociativeTexturePrior, FaceSRDecoder, FaceSREncoder, HolisticPriorFusion,
                                        PortraitSRNet, SketchingStructurePrior)
from portraitisr.models.losses import DictionaryDecorrelationLoss, dictionary_decorrelation_loss

TINY = dict(dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 2, 2), ffn_expansion=2.0, refine_depth=1, dict_size=16,
            dict_channels=64, num_parsing_classes=5, num_regions=3)


def test_encoder_decoder_shapes_and_skips():
    torch.manual_seed(0)
    encoder = FaceSREncoder(8, (1, 1, 1, 1), (1, 1, 2, 2), 2.0)
    decoder = FaceSRDecoder(8, (1, 1, 1, 1), (1, 1, 2, 2), 2.0, refine_depth=1)
    latent, skips = encoder(torch.rand(2, 3, 32, 48))
    assert latent.shape == (2, 64, 4, 6)  # 8 * dim at H/8 (paper: F_latent in R^{H/8 x W/8 x 8C})
    assert [tuple(s.shape[1:]) for s in skips] == [(8, 32, 48), (16, 16, 24), (32, 8, 12)]
    assert decoder(latent, skips).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match='4 entries'):
        FaceSREncoder(8, (1, 1, 1), (1, 1, 1), 2.0)


def test_ssp_modulates_only_the_first_channel_half():
    torch.manual_seed(0)
    ssp = SketchingStructurePrior(latent_channels=16, parsing_channels=8, num_classes=5, upscale=8)
    latent = torch.randn(2, 16, 4, 4)
    out, parsing = ssp(latent)
    assert out.shape == latent.shape and parsing.shape == (2, 5, 32, 32)
    torch.testing.assert_close(parsing.sum(1), torch.ones(2, 32, 32))  # softmax class distribution
    torch.testing.assert_close(out[:, 8:], latent[:, 8:])  # Eq. 3: F_2 unaltered
    # Eq. 2-3 by hand: gamma, beta from the 3x3 conv on F_pm modulate F_1
    features, _ = ssp.parsing_decoder(latent)
    gamma, beta = ssp.modulation(features).chunk(2, dim=1)
    torch.testing.assert_close(out[:, :8], gamma * latent[:, :8] + beta)
    with pytest.raises(ValueError, match='even'):
        SketchingStructurePrior(15, 8, 5)


def test_dictionary_init_and_exact_entry_retrieval():
    torch.manual_seed(0)
    atp = AssociativeTexturePrior(num_entries=512, channels=384)
    assert atp.dictionary.shape == (512, 384)
    assert abs(atp.dictionary.std().item() - 0.02) < 1e-3 and abs(atp.dictionary.mean().item()) < 1e-3
    small = AssociativeTexturePrior(num_entries=32, channels=16)
    picks = torch.tensor([[3, 17], [31, 0]])
    # features equal to dictionary entries, scaled (cosine matching is scale-invariant)
    features = (small.dictionary.detach()[picks] * 5.0).permute(2, 0, 1)[None]  # 1 x 16 x 2 x 2
    entries, indices = small.retrieve(features)
    assert torch.equal(indices[0], picks)
    torch.testing.assert_close(entries, small.dictionary.detach()[picks].permute(2, 0, 1)[None])
    torch.testing.assert_close(small(features), features + entries)  # Eq. 6: residual addition
    sim = small.similarity(features)
    assert sim.shape == (1, 4, 32) and torch.allclose(sim.max(-1).values, torch.ones(1, 4))


def test_dictionary_gets_gradients_through_selected_entries_only():
    torch.manual_seed(0)
    atp = AssociativeTexturePrior(num_entries=8, channels=4)
    features = atp.dictionary.detach()[torch.tensor([2, 5])].t().reshape(1, 4, 1, 2)
    atp(features).sum().backward()
    used = atp.dictionary.grad.abs().sum(1) > 0
    assert used.tolist() == [i in (2, 5) for i in range(8)]


def test_hpf_shapes_masks_and_residual():
    torch.manual_seed(0)
    hpf = HolisticPriorFusion(channels=16, num_classes=5, num_regions=3)
    latent, ssp, atp = (torch.randn(2, 16, 4, 4) for _ in range(3))
    parsing = torch.rand(2, 5, 32, 32).softmax(1)
    masks = hpf.masks(parsing, (4, 4))
    assert masks.shape == (2, 3, 4, 4) and masks.min() > 0 and masks.max() < 1
    out = hpf(latent, ssp, atp, parsing)
    assert out.shape == latent.shape
    expected = latent + sum(att(torch.cat([masks[:, k:k + 1] * ssp, masks[:, k:k + 1] * atp], 1))
                            for k, att in enumerate(hpf.region_attention))
    torch.testing.assert_close(out, expected)  # Eq. 8-10


def test_full_network_branches_and_odd_sizes():
    torch.manual_seed(0)
    net = PortraitSRNet(**TINY)
    lq, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = net(lq, hr)
    assert out['sr'].shape == (2, 3, 32, 32) and out['rec'].shape == (2, 3, 32, 32)
    assert out['parsing'].shape == (2, 5, 32, 32)
    assert 'rec' not in net(lq)
    assert net.restore(torch.rand(1, 3, 30, 27)).shape == (1, 3, 30, 27)  # reflect-padded to multiples of 8
    with pytest.raises(ValueError, match='8 \\* dim'):
        PortraitSRNet(dim=8, dict_channels=384)
    residual = PortraitSRNet(**TINY, global_residual=True)
    residual.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(residual(lq, hr)['rec'], out['rec'] + lq)
        torch.testing.assert_close(residual(lq)['sr'], out['sr'] + lq)


def test_paper_network_size():
    net = PortraitSRNet()
    assert net.atp.dictionary.shape == (512, 384)
    assert net.encoder.latent_channels == 384
    sr_params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith('rec_encoder.'))
    # the Restormer-sized SR path (Restormer itself: 26.1M), counted exactly: a changed default layer shows here
    assert sr_params == 30_746_309
    assert sum(p.numel() for p in net.parameters()) == 48_906_241  # plus the HR reconstruction encoder


def test_decorrelation_loss_zero_for_orthogonal_entries():
    orthogonal = torch.linalg.qr(torch.randn(16, 16))[0] * 0.3  # rows orthogonal, not unit length
    for similarity in ('abs', 'square', 'raw'):
        assert dictionary_decorrelation_loss(orthogonal, similarity).item() < 1e-6
    eye = torch.eye(8, 32)
    assert dictionary_decorrelation_loss(eye).item() == 0.0
    same = torch.ones(6, 4)
    assert dictionary_decorrelation_loss(same).item() == pytest.approx(1.0)
    # anti-correlated pairs are penalised by 'abs' and rewarded by the printed signed form
    pair = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert dictionary_decorrelation_loss(pair, 'abs').item() == pytest.approx(1.0)
    assert dictionary_decorrelation_loss(pair, 'raw').item() == pytest.approx(-1.0)
    assert DictionaryDecorrelationLoss(loss_weight=0.001)(same).item() == pytest.approx(0.001)
    with pytest.raises(ValueError):
        dictionary_decorrelation_loss(same, 'cosine')
