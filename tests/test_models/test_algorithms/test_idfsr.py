"""The IDFSR model (arXiv 2508.10937) on real photos: configuration checks, the conditions it builds, sampling, the
test-time identity choices, and stage-2 identity fitting (only the embedding moves; the loss goes down; a fit
resumes exactly)."""
import copy

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate

from portraitisr.models.algorithms.identity_fitting import IdentityFitter
from portraitisr.models.conditioning import IdentityCrossAttention, save_identity_embedding
from portraitisr.registry import DATASETS, MODELS

SIZE, SCALE = 32, 8
UNET = dict(type='DiffAEUNet', image_size=SIZE, in_channels=6, model_channels=32, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(16, ), embed_channels=32, dropout=0.1, enc_channel_mult=(1, 1, 2),
            enc_num_res_blocks=1, enc_out_channels=32, attention='identity', id_channels=128)
EMBEDDER = dict(type='IdentityEmbedder', extractor=dict(type='DlibResNet'))


def _model(**overrides):
    torch.manual_seed(0)
    # four DDIM steps keep the tests short (the 20-step sampler is checked against DiffAE in the parity test)
    cfg = dict(type='IDFSR', unet=dict(UNET), identity_embedder=EMBEDDER, sample_steps=4)
    for key, value in overrides.items():
        if key == 'unet':
            cfg['unet'] = dict(UNET, **value)
        else:
            cfg[key] = value
    return MODELS.build(cfg)


def _trained_looking(model):
    """Random values in the zero-initialised layers (as after training), so every input path matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.unet.modules():
            if isinstance(module, IdentityCrossAttention):
                torch.nn.init.normal_(module.proj_out.weight, std=0.2)
        for name, param in model.unet.named_parameters():
            if param.dim() > 1 and float(param.abs().max()) == 0:
                torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.fixture(scope='module')
def items():
    dataset = DATASETS.build(dict(type='IdentityFaceDataset', manifest='sample://portraits', size=SIZE, scale=SCALE,
                                  ref_choice='next', ref_jitter=(8, 0.05, 0.03)))
    np.random.seed(0)  # the dataset draws the reference misalignment from numpy's global generator
    return [dataset[0], dataset[1]]


@pytest.fixture(scope='module')
def model():
    return _trained_looking(_model()).eval()


@pytest.mark.parametrize('overrides, message', [
    (dict(unet=dict(in_channels=3)), 'in_channels=3'),
    (dict(unet=dict(attention='self')), "attention='self'"),
    (dict(unet=dict(id_channels=512)), 'id_channels=512'),
    (dict(unet=dict(attention_resolutions=(32, ))), 'identity cross-attention on 32 channels has no effect'),
    (dict(style_source='none'), 'use_style=True'),
    (dict(lr_condition='blurred'), 'lr_condition must be one of'),
])
def test_inconsistent_configurations_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        _model(**overrides)


def test_conditions_mask_the_face_and_warp_the_reference(model, items):
    data = model.data_preprocessor(pseudo_collate(items), False)
    cond = model.conditions(data['inputs'], data['face_landmarks'], data['ref'], data['ref_landmarks'])
    mask = cond['mask']
    assert 0.2 < float(mask.mean()) < 0.4  # the ellipse covers the face of an FFHQ-aligned crop
    assert torch.equal(cond['masked_lr'][mask.expand(-1, 3, -1, -1) > 0], torch.full_like(
        cond['masked_lr'][mask.expand(-1, 3, -1, -1) > 0], 0.5))
    # the reference was aligned with a random misalignment; warping brings its face back onto the GT face
    face = mask.expand(-1, 3, -1, -1) > 0
    before = (data['ref'] - data['gt'])[face].abs().mean()
    after = (cond['warped'] - data['gt'])[face].abs().mean()
    assert after < 0.7 * before, (float(before), float(after))
    assert cond['style_image'] is cond['warped']


def test_loss_and_sampling(model, items):
    data = model.data_preprocessor(pseudo_collate(items), True)
    torch.manual_seed(3)
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_diffusion'} and 0.1 < float(losses['loss_diffusion']) < 10
    data = model.data_preprocessor(pseudo_collate(items), False)
    outputs = model.val_step(pseudo_collate(items))
    again = model.val_step(pseudo_collate(items))
    assert torch.equal(outputs[0]['pred'], again[0]['pred'])  # x_T seeded by eval_seed + index
    assert outputs[0]['pred'].shape == (3, SIZE, SIZE) and 0 <= float(outputs[0]['pred'].min())
    # the identity drives the output; without a reference the model falls back to appendix C (LR as reference)
    base = model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks'])
    other = model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks'],
                          identity=torch.nn.functional.normalize(torch.randn(128), dim=0))
    no_ref = model.restore(data['inputs'], None, data['face_landmarks'])
    assert (base - other).abs().max() > 1e-3 and (base - no_ref).abs().max() > 1e-3


def test_set_identity_from_a_file(model, items, tmp_path):
    data = model.data_preprocessor(pseudo_collate(items), False)
    identity = torch.nn.functional.normalize(torch.randn(128), dim=0)
    path = tmp_path / 'person.safetensors'
    save_identity_embedding(path, identity)
    explicit = model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks'],
                             identity=identity)
    model.set_identity(str(path))
    try:
        fitted = model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks'])
    finally:
        model.set_identity(None)
    assert torch.equal(fitted, explicit)
    with pytest.raises(ValueError, match='the identity has 512 channels, the model takes 128'):
        model.set_identity(torch.zeros(512))


def test_fitting_moves_only_the_embedding_and_lowers_the_loss(model, items):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = model.data_preprocessor(pseudo_collate(items[:1]), False)
    init = model.embed_identity(data['gt'], data['face_landmarks'])[0]
    fitter = IdentityFitter(model, items, init, lr=5e-2, batch_size=2, seed=0)
    start = fitter.evaluate(repeats=2)
    for _ in range(10):
        fitter.step()
    end = fitter.evaluate(repeats=2)
    assert end < start - 1e-3, (start, end)
    assert not torch.equal(fitter.embedding.detach(), init)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not any(p.requires_grad for p in model.parameters())


def test_a_fit_resumes_exactly(model, items):
    init = torch.nn.functional.normalize(torch.randn(128), dim=0)
    straight = IdentityFitter(model, items, init, lr=1e-2, batch_size=1, seed=5)
    for _ in range(4):
        straight.step()
    first = IdentityFitter(model, items, init, lr=1e-2, batch_size=1, seed=5)
    for _ in range(2):
        first.step()
    state = copy.deepcopy(first.state_dict())
    resumed = IdentityFitter(model, items, torch.zeros(128), lr=1e-2, batch_size=1, seed=99)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    assert resumed.step_count == 4
    assert torch.equal(resumed.embedding.detach(), straight.embedding.detach())


@pytest.mark.parametrize('overrides', [
    dict(unet=dict(in_channels=3, attention='self'), identity_embedder=None, lr_condition='none',
         style_source='lr'),                                                              # section 5.4, case 3
    dict(unet=dict(use_style=False), style_source='none'),                                # case 5
    dict(unet=dict(attention='self', use_style=False), identity_embedder=None, lr_condition='full',
         style_source='none'),                                                            # case 1
])
def test_component_analysis_switches_train_and_sample(items, overrides):
    model = _model(**overrides)
    data = model.data_preprocessor(pseudo_collate(items), True)
    loss = model(**data, mode='loss')['loss_diffusion']
    loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all(n.startswith('unet.') for n in trained)
    assert model.unet.encoder is None if overrides.get('style_source') == 'none' else model.unet.encoder is not None
    out = model.val_step(pseudo_collate(items))
    assert out[0]['pred'].shape == (3, SIZE, SIZE)
