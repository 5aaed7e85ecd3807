"""AuthFace's time-aware latent facial feature loss (arXiv 2410.09864, section 3.2, Eq. 2-4) and its discriminators."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from portraitisr.face.alignment.templates import FFHQ_512
from portraitisr.models.discriminators import FacialComponentDiscriminator
from portraitisr.models.losses.time_aware_facial_loss import (TimeAwareFacialLoss, crop_latent_boxes,
                                                              ddim_predicted_x0, facial_component_boxes,
                                                              gram_matrix, logit_normal_weight, normalized_time)
from portraitisr.registry import LOSSES

TINY_D = dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=8)


def eq3(t: float, m: float, s: float) -> float:
    """Eq. 3 written out with Python floats (double precision)."""
    logit = math.log(t / (1 - t))
    return 1 / (s * math.sqrt(2 * math.pi)) / (t * (1 - t)) * math.exp(-(logit - m)**2 / (2 * s**2))


@pytest.mark.parametrize('m, s', [(0.0, 1.0), (0.5, 0.7), (-1.2, 2.0)])
def test_time_weight_is_eq3_in_float64(m, s):
    t = torch.cat([torch.linspace(1e-6, 1 - 1e-6, 2001, dtype=torch.float64), torch.tensor([1e-9, 0.5, 1 - 1e-9],
                                                                                             dtype=torch.float64)])
    ours = logit_normal_weight(t, m, s)
    assert ours.dtype == torch.float64
    reference = torch.tensor([eq3(float(v), m, s) for v in t], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-300)


def test_time_weight_of_the_loss_and_the_timestep_mapping():
    loss = TimeAwareFacialLoss(discriminator=TINY_D)
    timesteps = torch.tensor([0, 1, 250, 499, 500, 998, 999])
    t = normalized_time(timesteps, 1000)
    torch.testing.assert_close(t, (timesteps.double() + 0.5) / 1000)
    expected = torch.tensor([eq3(float(v), 0.0, 1.0) for v in t], dtype=torch.float32)
    torch.testing.assert_close(loss.time_weight(timesteps, 1000), expected, rtol=1e-6, atol=0)
    # SD3's defaults make Eq. 3 a density: over the 1000 DDPM timesteps it averages 1, the constant of Table 2 (c)
    mean = loss.time_weight(torch.arange(1000), 1000).double().mean()
    assert abs(float(mean) - 1) < 1e-3
    assert torch.equal(TimeAwareFacialLoss(discriminator=TINY_D, time_weighting='constant').time_weight(
        timesteps, 1000), torch.ones(7))
    # the one-step restorers' t = 999: the weight vanishes (why their configs use the constant weight)
    assert float(loss.time_weight(torch.tensor([999]), 1000)) < 1e-9


def test_predicted_x0_inverts_forward_noising_exactly():
    from diffusers import DDIMScheduler, DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False)
    alphas = scheduler.alphas_cumprod.double()
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(6, 4, 8, 8, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([0, 1, 37, 500, 998, 999])
    abar = alphas[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    recovered = ddim_predicted_x0(noisy, eps, alphas, timesteps)
    assert recovered.dtype == torch.float64
    torch.testing.assert_close(recovered, z0, rtol=0, atol=1e-12)
    # float32: the same as diffusers' DDIM ``pred_original_sample`` (the closed form the paper cites)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(10)
    t = int(ddim.timesteps[3])
    x = noisy[:1].float()
    e = eps[:1].float()
    reference = ddim.step(e, t, x).pred_original_sample
    torch.testing.assert_close(ddim_predicted_x0(x, e, scheduler.alphas_cumprod, torch.tensor([t])), reference,
                               rtol=1e-6, atol=1e-5)


def test_boxes_are_gfpgans_crops_on_the_ffhq_template():
    boxes = facial_component_boxes(torch.from_numpy(FFHQ_512).float()[None])
    eyes, mouth = boxes['eyes'][0], boxes['mouth'][0]
    torch.testing.assert_close(eyes[:, 2] - eyes[:, 0], torch.full((2, ), 80.0), atol=0.1, rtol=0)
    torch.testing.assert_close(mouth[2] - mouth[0], torch.tensor(120.0), atol=0.1, rtol=0)
    # centred on the eye landmarks and on the mouth corners' mid-point (pixel centres at x + 0.5)
    torch.testing.assert_close((eyes[:, :2] + eyes[:, 2:]) / 2, torch.from_numpy(FFHQ_512[:2]).float() + 0.5)
    torch.testing.assert_close((mouth[:2] + mouth[2:]) / 2, torch.from_numpy(FFHQ_512[3:]).float().mean(0) + 0.5)
    with pytest.raises(ValueError, match='N x 5 x 2'):
        facial_component_boxes(torch.zeros(1, 68, 2))


def _coordinate_latents(size: int = 64) -> torch.Tensor:
    """Channel 0 = latent x, channel 1 = latent y (pixel centres), channels 2-3 zero: bilinear crops of it are
    exact coordinates."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing='ij')
    return torch.stack([xs, ys, torch.zeros_like(xs), torch.zeros_like(xs)])[None]


def test_crops_follow_the_landmarks():
    loss = TimeAwareFacialLoss(discriminator=TINY_D)
    latents = _coordinate_latents()
    landmarks = torch.from_numpy(FFHQ_512).float()[None]
    index = torch.tensor([0])
    crops = loss.crops(latents, landmarks, index)
    assert crops['eyes'].shape == (2, 4, 12, 12) and crops['mouth'].shape == (1, 4, 16, 16)
    # the crop's mean latent coordinate is the landmark mapped to the latent grid: (x + 0.5) / 8 - 0.5
    centre = crops['eyes'][:, :2].mean(dim=(-1, -2))
    torch.testing.assert_close(centre, (landmarks[0, :2] + 0.5) / 8 - 0.5, atol=1e-4, rtol=0)
    # moving the landmarks moves the crops by the same amount on the latent grid (8 px = 1 latent px)
    shift = torch.tensor([24.0, -16.0])
    moved = loss.crops(latents, landmarks + shift, index)
    for region in ('eyes', 'mouth'):
        torch.testing.assert_close(moved[region][:, 0] - crops[region][:, 0], torch.full_like(crops[region][:, 0], 3.0),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(moved[region][:, 1] - crops[region][:, 1],
                                   torch.full_like(crops[region][:, 1], -2.0), atol=1e-4, rtol=0)
    # a larger face (landmarks scaled about the image centre) gives a proportionally larger crop
    bigger = loss.crops(latents, (landmarks - 256) * 1.5 + 256, index)
    span = lambda c: float(c[0, 0, 0, -1] - c[0, 0, 0, 0])  # noqa: E731
    assert span(bigger['mouth']) == pytest.approx(1.5 * span(crops['mouth']), rel=1e-4)


def test_crop_image_index_selects_the_image():
    latents = torch.stack([torch.zeros(4, 16, 16), torch.ones(4, 16, 16)])
    boxes = torch.tensor([[8.0, 8.0, 72.0, 72.0], [8.0, 8.0, 72.0, 72.0]])
    crops = crop_latent_boxes(latents, boxes, torch.tensor([1, 0]), 4)
    assert torch.equal(crops[0], torch.ones(4, 4, 4)) and torch.equal(crops[1], torch.zeros(4, 4, 4))


class _Generator(nn.Module):
    """A stand-in for the denoiser: eps = conv(z_t)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, z):
        return self.conv(z)


def _face_batch(batch=2, size=64):
    landmarks = torch.from_numpy(FFHQ_512 * (size * 8 / 512)).float()[None].repeat(batch, 1, 1)
    return landmarks


def test_gradients_reach_the_generator_through_the_predicted_latent_not_the_discriminators():
    torch.manual_seed(0)
    loss = TimeAwareFacialLoss(discriminator=TINY_D)
    generator = _Generator()
    alphas = torch.linspace(0.99, 0.01, 1000)
    z0 = torch.randn(2, 4, 32, 32)
    timesteps = torch.tensor([400, 600])
    noise = torch.randn_like(z0)
    abar = alphas[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    pred = ddim_predicted_x0(noisy, generator(noisy), alphas, timesteps)
    losses, crops = loss.generator_loss(pred, z0, _face_batch(2, 32), timesteps, 1000)
    sum(losses.values()).backward()
    assert generator.conv.weight.grad is not None and generator.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert all(p.requires_grad for p in loss.parameters())  # nothing left frozen
    # the discriminator step: gradients for the discriminators only (the fake crops are detached)
    generator.zero_grad()
    d_loss, log = loss(crops['real'], crops['fake'], mode='discriminator')
    d_loss.backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert generator.conv.weight.grad is None or generator.conv.weight.grad.abs().sum() == 0
    assert set(log) == {'facial_d_eyes_real', 'facial_d_eyes_fake', 'facial_d_mouth_real', 'facial_d_mouth_fake'}


def test_eq4_terms_weights_and_faceless_images():
    torch.manual_seed(0)
    pred, gt = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32, 32)
    landmarks = _face_batch(2, 32)
    loss = TimeAwareFacialLoss(discriminator=TINY_D, style_weight=200.0, adversarial_weight=1.0)
    same_t = torch.tensor([500, 500])
    losses, _ = loss.generator_loss(pred, gt, landmarks, same_t, 1000)
    # Eq. 4 by hand for the same crops: weight * (lambda_d * mean log(1 - sigmoid(D)) + lambda_s * Gram L1)
    crops = loss.crops(pred, landmarks, torch.arange(2))
    real = loss.crops(gt, landmarks, torch.arange(2))
    weight = eq3(0.5005, 0.0, 1.0)
    adv = style = 0.0
    for region, per_face in (('eyes', 2), ('mouth', 1)):
        logits, fake_features = loss.discriminators[region](crops[region])
        _, real_features = loss.discriminators[region](real[region])
        adv += torch.log(1 - torch.sigmoid(logits)).flatten(1).mean(1).view(2, per_face).mean(1).mean()
        term = sum(w * (gram_matrix(f) - gram_matrix(r)).abs().flatten(1).mean(1)
                   for w, f, r in zip((0.5, 1.0), fake_features, real_features))
        style += term.view(2, per_face).mean(1).mean()
    torch.testing.assert_close(losses['loss_facial_adv'], weight * adv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses['loss_facial_style'], 200 * weight * style, rtol=1e-5, atol=1e-6)
    assert float(losses['loss_facial_adv']) < 0  # Eq. 4's log(1 - D) as printed
    # the time weight scales the loss: t = 100 and t = 500 differ by the ratio of Eq. 3
    other, _ = loss.generator_loss(pred, gt, landmarks, torch.tensor([100, 100]), 1000)
    ratio = eq3(0.1005, 0, 1) / weight
    torch.testing.assert_close(other['loss_facial_style'], losses['loss_facial_style'] * ratio, rtol=1e-5, atol=0)
    # an image without a face adds 0: its half of the batch sum is missing
    partial, crops = loss.generator_loss(pred, gt, landmarks, same_t, 1000, has_face=torch.tensor([True, False]))
    alone, _ = loss.generator_loss(pred[:1], gt[:1], landmarks[:1], same_t[:1], 1000)
    torch.testing.assert_close(partial['loss_facial_style'], alone['loss_facial_style'] / 2)
    assert crops['fake']['eyes'].shape[0] == 2 and crops['fake']['mouth'].shape[0] == 1
    # no face at all: zeros that keep the graph, and a discriminator step that still runs
    pred.requires_grad_(True)
    none, crops = loss.generator_loss(pred, gt, landmarks, same_t, 1000, has_face=torch.tensor([False, False]))
    assert all(float(v.detach()) == 0 and v.requires_grad for v in none.values())
    d_loss, _ = loss(crops['real'], crops['fake'], mode='discriminator')
    assert float(d_loss.detach()) == 0
    d_loss.backward()
    assert all(p.grad is not None for p in loss.parameters())


def test_non_saturating_option_and_bad_arguments():
    torch.manual_seed(0)
    pred, gt = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    loss = TimeAwareFacialLoss(discriminator=TINY_D, adversarial='non_saturating')
    losses, _ = loss.generator_loss(pred, gt, _face_batch(1, 32), torch.tensor([500]), 1000)
    assert float(losses['loss_facial_adv']) > 0  # -log D
    with pytest.raises(ValueError, match='time_weighting'):
        TimeAwareFacialLoss(discriminator=TINY_D, time_weighting='cosine')
    with pytest.raises(ValueError, match='multiple of 4'):
        TimeAwareFacialLoss(discriminator=TINY_D, eye_size=10)
    with pytest.raises(ValueError, match='positive'):
        logit_normal_weight(torch.tensor([0.5]), 0.0, 0.0)
    assert type(LOSSES.build(dict(type='TimeAwareFacialLoss', discriminator=TINY_D))) is TimeAwareFacialLoss


def test_discriminator_follows_gfpgans_layout():
    d = FacialComponentDiscriminator(in_channels=3, base_channels=64)
    keys = set(d.state_dict())
    assert keys == {'conv1.0.weight', 'conv1.1.bias', 'conv2.1.weight', 'conv2.2.bias', 'conv3.0.weight',
                    'conv3.1.bias', 'conv4.1.weight', 'conv4.2.bias', 'conv5.0.weight', 'conv5.1.bias',
                    'final_conv.0.weight', 'final_conv.0.bias'}
    logits, features = d(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 1, 8, 8)  # GFPGAN's own test: 32 x 32 -> 1 x 1 x 8 x 8
    assert [tuple(f.shape) for f in features] == [(1, 128, 16, 16), (1, 256, 8, 8)]
    assert d(torch.randn(2, 3, 80, 80))[0].shape == (2, 1, 20, 20)  # eye crops: 80 -> 40 -> 20
    # the blur is the normalised (1, 3, 3, 1) outer product; the fused activation is leaky_relu(x + b, 0.2) * sqrt 2
    kernel = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    np.testing.assert_allclose(d.conv2[0].kernel.numpy(), kernel)
    x = torch.randn(2, 128, 4, 4)
    act = d.conv1[1]
    act.bias.data.normal_()
    assert d.conv1[0].weight.std().item() == pytest.approx(1.0, abs=0.1)  # equalised lr: N(0, 1) weights
    torch.testing.assert_close(act(x[:, :64]), torch.nn.functional.leaky_relu(x[:, :64] + act.bias.view(1, -1, 1, 1),
                                                                              0.2) * math.sqrt(2))
    # frozen=True: same values, no gradient into the weights
    y = torch.randn(1, 3, 32, 32, requires_grad=True)
    out, _ = d(y, frozen=True)
    torch.testing.assert_close(out, d(y)[0])
    out.sum().backward()
    assert y.grad is not None and all(p.grad is None for p in d.parameters())
    with pytest.raises(ValueError, match='B x 3'):
        d(torch.randn(1, 4, 32, 32))
    # seeded: two builds are the same network
    first, second = FacialComponentDiscriminator(3, 16), FacialComponentDiscriminator(3, 16)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = FacialComponentDiscriminator(3, 16, init_seed=1)
    assert not torch.equal(first.conv1[0].weight, other.conv1[0].weight)
