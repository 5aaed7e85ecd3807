"""Face PatchGAN discriminator and GAN losses: shapes, hand-computed values, gradients, training."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from portraitisr.models.discriminators import FacePatchDiscriminator
from portraitisr.models.losses import GANLoss
from portraitisr.registry import LOSSES, MODELS

GAN_TYPES = ('vanilla', 'lsgan', 'hinge', 'softplus')


def _convs(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize('size, expected', [(64, 6), (128, 14), (512, 62)])
def test_patch_logit_map_shapes(size, expected):
    torch.manual_seed(0)
    # Width does not change the geometry; a narrow D keeps the 512 case fast.
    disc = FacePatchDiscriminator(base_channels=8)
    out = disc(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, expected, expected)
    assert disc.output_size(size, size) == (expected, expected)


def test_default_layout_is_pix2pix_nlayer():
    disc = MODELS.build(dict(type='FacePatchDiscriminator'))
    convs = _convs(disc)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    deep = FacePatchDiscriminator(num_layers=5)
    assert [c.out_channels for c in _convs(deep)] == [64, 128, 256, 512, 512, 512, 1]  # capped at 8x
    slopes = {m.negative_slope for m in disc.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert disc(torch.rand(1, 3, 64, 64)).shape == (1, 1, 6, 6)


def test_input_size_resizes_before_judging():
    torch.manual_seed(0)
    resizing = FacePatchDiscriminator(base_channels=8, input_size=256).eval()
    plain = FacePatchDiscriminator(base_channels=8).eval()
    plain.load_state_dict(resizing.state_dict())
    faces = torch.rand(2, 3, 512, 512)
    out = resizing(faces)
    assert out.shape == (2, 1, 30, 30) and resizing.output_size(512, 512) == (30, 30)
    expected = plain(F.interpolate(faces, size=(256, 256), mode='bilinear', align_corners=False, antialias=True))
    torch.testing.assert_close(out, expected)
    # Faces already at input_size pass through untouched; (h, w) tuples are accepted.
    small = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(resizing(small), plain(small))
    rectangular = FacePatchDiscriminator(base_channels=8, input_size=(128, 64))
    assert rectangular(torch.rand(1, 3, 100, 90)).shape == (1, 1, 14, 6)


def test_faces_in_unit_range_are_mapped_to_minus_one_one():
    torch.manual_seed(0)
    disc = FacePatchDiscriminator(base_channels=8, norm='none').eval()
    faces = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(disc(faces), disc.body(faces * 2 - 1))


@pytest.mark.parametrize('norm', ['spectral', 'instance', 'none'])
def test_deterministic_and_empty_batch(norm):
    torch.manual_seed(3)
    disc = FacePatchDiscriminator(base_channels=8, norm=norm)
    torch.manual_seed(3)
    twin = FacePatchDiscriminator(base_channels=8, norm=norm)
    for a, b in zip(disc.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    disc.eval()
    faces = torch.rand(2, 3, 64, 64)
    assert torch.equal(disc(faces), disc(faces))

    empty = torch.rand(0, 3, 64, 64, requires_grad=True)
    out = disc.train()(empty)
    assert out.shape == (0, 1, 6, 6)
    loss = GANLoss()(out, target_is_real=True) + GANLoss().discriminator_loss(out, out)
    assert loss.item() == 0
    loss.backward()  # the graph survives, and every parameter gets a (zero) gradient for DDP
    assert all(p.grad is not None and not p.grad.any() for p in disc.parameters())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match='norm'):
        FacePatchDiscriminator(norm='batch')
    disc = FacePatchDiscriminator(base_channels=8)
    with pytest.raises(ValueError, match='N x 3'):
        disc(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match='too small'):
        disc(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match='gan_type'):
        GANLoss(gan_type='wgan')


def test_weight_init_and_norm_configuration():
    torch.manual_seed(0)
    spectral = FacePatchDiscriminator()
    for conv in _convs(spectral):
        assert parametrize.is_parametrized(conv, 'weight')
        original = conv.parametrizations.weight.original
        assert abs(original.std().item() - 0.02) < 0.004 and abs(original.mean().item()) < 0.003
        assert not conv.bias.any()
    # Spectral norm bounds each layer's largest singular value by about 1.
    conv = _convs(spectral)[1]
    for _ in range(20):  # converge the power iteration
        spectral(torch.rand(1, 3, 64, 64))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)

    instance = FacePatchDiscriminator(norm='instance')
    assert not any(parametrize.is_parametrized(c, 'weight') for c in _convs(instance))
    norms = [m for m in instance.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3  # all but the first and the last convolution, as pix2pix
    assert abs(torch.cat([n.weight for n in norms]).mean().item() - 1.0) < 0.01

    plain = FacePatchDiscriminator(norm='none')
    assert not any(parametrize.is_parametrized(c, 'weight') for c in _convs(plain))
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in plain.modules())


def test_gan_loss_values_against_hand_computation():
    zeros = torch.zeros(2, 1, 3, 3)
    log2 = math.log(2)
    for gan_type in ('vanilla', 'softplus'):
        loss = GANLoss(gan_type)
        assert loss(zeros, True).item() == pytest.approx(log2)
        assert loss(zeros, False, is_disc=True).item() == pytest.approx(log2)

    logits = torch.tensor([[-2.0, 0.5], [1.0, 3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    values = [-2.0, 0.5, 1.0, 3.0]
    expected = {
        ('vanilla', True): sum(sp(-v) for v in values) / 4,
        ('vanilla', False): sum(sp(v) for v in values) / 4,
        ('lsgan', True): sum((v - 1)**2 for v in values) / 4,  # (9 + 0.25 + 0 + 4) / 4
        ('lsgan', False): sum(v**2 for v in values) / 4,
        ('hinge', True): (3.0 + 0.5 + 0.0 + 0.0) / 4,  # relu(1 - x)
        ('hinge', False): (0.0 + 1.5 + 2.0 + 4.0) / 4,  # relu(1 + x)
    }
    expected[('softplus', True)], expected[('softplus', False)] = expected[('vanilla', True)], expected[
        ('vanilla', False)]
    assert expected[('lsgan', True)] == pytest.approx(13.25 / 4)
    for (gan_type, real), value in expected.items():
        got = GANLoss(gan_type)(logits, target_is_real=real, is_disc=True)
        assert got.item() == pytest.approx(value, rel=1e-6), (gan_type, real)
    # vanilla is binary cross-entropy on logits
    torch.testing.assert_close(GANLoss('vanilla')(logits, True),
                               F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)))

    # Generator sides and the convenience methods.
    mean = sum(values) / 4
    assert GANLoss('hinge').generator_loss(logits).item() == pytest.approx(-mean)
    assert GANLoss('lsgan').generator_loss(logits).item() == pytest.approx(expected[('lsgan', True)])
    assert GANLoss('softplus').generator_loss(logits).item() == pytest.approx(expected[('softplus', True)])
    real, fake = torch.tensor([0.5, -1.5]), torch.tensor([-0.5, 2.0])
    hinge_d = (0.5 + 2.5) / 2 + (0.5 + 3.0) / 2  # relu(1 - r) + relu(1 + f)
    assert GANLoss('hinge').discriminator_loss(real, fake).item() == pytest.approx(hinge_d)
    softplus_d = (sp(-0.5) + sp(1.5)) / 2 + (sp(-0.5) + sp(2.0)) / 2  # softplus(-r) + softplus(f)
    assert GANLoss('softplus').discriminator_loss(real, fake).item() == pytest.approx(softplus_d)


@pytest.mark.parametrize('gan_type', GAN_TYPES)
def test_loss_weight_scales_the_generator_side_only(gan_type):
    logits = torch.tensor([[-0.7, 0.2, 1.3]])
    unit, weighted = GANLoss(gan_type), LOSSES.build(dict(type='GANLoss', gan_type=gan_type, loss_weight=0.1))
    torch.testing.assert_close(weighted.generator_loss(logits), 0.1 * unit.generator_loss(logits))
    torch.testing.assert_close(weighted(logits, False), 0.1 * unit(logits, False))
    torch.testing.assert_close(weighted.discriminator_loss(logits, -logits), unit.discriminator_loss(logits, -logits))
    torch.testing.assert_close(weighted(logits, True, is_disc=True), unit(logits, True, is_disc=True))


@pytest.mark.parametrize('gan_type', GAN_TYPES)
def test_empty_logits_give_a_graph_keeping_zero(gan_type):
    logits = torch.zeros(0, 1, 6, 6, requires_grad=True)
    loss_fn = GANLoss(gan_type, loss_weight=2.0)
    for loss in (loss_fn.generator_loss(logits), loss_fn.discriminator_loss(logits, logits)):
        assert loss.shape == () and loss.item() == 0 and loss.requires_grad
        loss.backward()


@pytest.mark.parametrize('gan_type', GAN_TYPES)
def test_gradients_reach_generator_input_and_discriminator(gan_type):
    torch.manual_seed(0)
    disc = FacePatchDiscriminator(base_channels=8)
    loss_fn = GANLoss(gan_type)
    fake = torch.rand(2, 3, 64, 64, requires_grad=True)  # stands for the generator's face crops
    loss_fn.generator_loss(disc(fake)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0

    disc.zero_grad()
    real = torch.rand(2, 3, 64, 64)
    loss_fn.discriminator_loss(disc(real), disc(fake.detach())).backward()
    # Weights only: with an untrained D every logit sits inside the hinge margin, so the final
    # bias gets -1/n from the real and +1/n from the fake term, which cancel exactly.
    grads = [p.grad for p in disc.parameters() if p.dim() > 1]
    assert len(grads) == 5 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_discriminator_learns_to_separate_faces_from_noise():
    """Behaviour: a few AdamW steps on smooth "faces" vs uniform noise must separate them."""
    torch.manual_seed(0)

    def smooth_images(n: int) -> torch.Tensor:
        ramp = torch.linspace(0, 1, 64)
        shading = ramp[None, :] * ramp[:, None]
        return (shading * torch.rand(n, 3, 1, 1) + 0.2 * torch.rand(n, 3, 1, 1)).clamp(0, 1)

    disc = MODELS.build(dict(type='FacePatchDiscriminator', base_channels=16))
    loss_fn = LOSSES.build(dict(type='GANLoss', gan_type='softplus'))
    optimizer = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(25):
        loss = loss_fn.discriminator_loss(disc(smooth_images(4)), disc(torch.rand(4, 3, 64, 64)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.05)  # an untrained D is undecided
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0]
    disc.eval()
    with torch.no_grad():
        real_scores = disc(smooth_images(8)).mean((1, 2, 3))
        fake_scores = disc(torch.rand(8, 3, 64, 64)).mean((1, 2, 3))
    assert real_scores.min() > fake_scores.max()
