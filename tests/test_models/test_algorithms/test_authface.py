"""AuthFace (arXiv 2410.09864): SDXL parts, the ControlNet restorer, stage-I fine-tuning, captions,
the one-step hook."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, OptimWrapperDict

from portraitisr.face.alignment.templates import FFHQ_512
from portraitisr.registry import BACKBONES, DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TEXT_ENCODERS

from tests.helpers.data_files import REPO_ROOT

TINY_SDXL = REPO_ROOT / 'configs' / '_base_' / 'models' / 'tiny_sdxl.py'


@pytest.fixture(scope='module')
def sdxl_cfg():
    return Config.fromfile(str(TINY_SDXL))


@pytest.fixture(scope='module')
def sdxl_text_encoder(sdxl_cfg):
    return TEXT_ENCODERS.build(sdxl_cfg.tiny_sdxl_text_encoder)


def _authface(cfg, text_encoder_cfg, facial=True, **kwargs):
    kwargs.setdefault('inference_scheduler', dict(type='DDIMScheduler'))
    kwargs.setdefault('num_inference_steps', 2)
    kwargs.setdefault('data_preprocessor', dict(type='PortraitDataPreprocessor', degradation='codeformer_face'))
    facial_loss = dict(type='TimeAwareFacialLoss', discriminator=cfg.tiny_facial_discriminator) if facial else None
    return MODELS.build(dict(type='AuthFace', backbone=cfg.tiny_sdxl_controlnet_backbone,
                             text_encoder=text_encoder_cfg, facial_loss=facial_loss, **kwargs))


@pytest.fixture(scope='module')
def authface_model(sdxl_cfg):
    """A tiny SDXL-shaped AuthFace with the facial loss (tests copy it before changing it)."""
    return _authface(sdxl_cfg, sdxl_cfg.tiny_sdxl_text_encoder)


# ---------------------------------------------------------------------------------------------- SDXL parts
def test_sdxl_architecture_builds_the_published_sizes():
    from diffusers import UNet2DConditionModel

    from portraitisr.models.backbones.sd21_architecture import SD21_UNET_CONFIG
    from portraitisr.models.backbones.sdxl_architecture import SDXL_UNET_CONFIG

    with torch.device('meta'):
        sdxl = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        sd21 = UNet2DConditionModel(**SD21_UNET_CONFIG)
    # SDXL 1.0-base's UNet has 2.567B parameters, SD 2.1's 865.9M
    assert sum(p.numel() for p in sdxl.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in sd21.parameters()) == 865_910_724
    assert sdxl.add_embedding.linear_1.in_features == 2816 == 1280 + 6 * 256


def test_sdxl_text_encoder_concatenates_penultimate_states_and_pools_the_second(sdxl_text_encoder):
    encoder = sdxl_text_encoder
    assert (encoder.embed_dim, encoder.pooled_dim) == (64, 32)
    prompts = ['a portrait, sharp focus', '']
    states, pooled = encoder.forward_with_pooled(prompts)
    assert states.shape == (2, 77, 64) and pooled.shape == (2, 32)
    # diffusers' StableDiffusionXLPipeline.encode_prompt, written out
    expected_states, expected_pooled = [], None
    for index, part in enumerate((encoder.encoder, encoder.encoder_2)):
        ids = part.tokenizer(prompts, max_length=77, padding='max_length', truncation=True,
                             return_tensors='pt').input_ids
        with torch.no_grad():
            output = part.text_model(ids, output_hidden_states=True)
        expected_states.append(output.hidden_states[-2])
        if index == 1:
            expected_pooled = output[0]  # CLIPTextModelWithProjection: text_embeds first
    torch.testing.assert_close(states, torch.cat(expected_states, dim=-1))
    torch.testing.assert_close(pooled, expected_pooled)
    # the two tokenizers pad as SDXL's: <|endoftext|> (49407) for the first, "!" (0) for the second
    assert encoder.encoder.tokenizer(['a'], padding='max_length', max_length=77).input_ids[0][-1] == 49407
    assert encoder.encoder_2.tokenizer(['a'], padding='max_length', max_length=77).input_ids[0][-1] == 0
    torch.testing.assert_close(encoder(prompts), states)  # forward: the states alone
    assert not any(p.requires_grad for p in encoder.parameters())


def test_sdxl_unet_gets_its_added_conditions(sdxl_cfg, sdxl_text_encoder):
    backbone = BACKBONES.build(sdxl_cfg.tiny_sdxl_finetune_backbone)
    assert backbone.is_sdxl and backbone.pooled_dim == 32
    added = backbone.added_conditions(torch.zeros(2, 32), 96, 64)
    assert torch.equal(added['time_ids'], torch.tensor([[96.0, 64, 0, 0, 96, 64]] * 2))
    states, pooled = sdxl_text_encoder.forward_with_pooled(['', ''])
    eps = backbone(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), states,
                   backbone.added_conditions(pooled, 64, 64))
    assert eps.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match='pooled'):
        backbone.added_conditions(None, 64, 64)


# ---------------------------------------------------------------------------------------------- ControlNet
def _train_zero_convs(controlnet, std=0.1):
    """Random weights where ControlNet starts at zero: the conditioning embedding's last convolution and the
    1x1 convolutions on its residuals."""
    with torch.no_grad():
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0, std)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, std)


@pytest.mark.parametrize('family', ['sdxl', 'sd21'])
def test_zero_initialised_controlnet_predicts_what_the_frozen_unet_does(family, authface_model, tiny_cfg):
    if family == 'sdxl':
        backbone = copy.deepcopy(authface_model.backbone)
        states, added = authface_model.prompt_conditions([''] * 2, 64, 64, torch.device('cpu'))
    else:
        backbone = BACKBONES.build(dict(type='ControlNetDiffusion', unet_cfg=tiny_cfg.tiny_unet_cfg,
                                        vae_cfg=tiny_cfg.tiny_vae_cfg, scheduler_cfg=tiny_cfg.sd21_scheduler_cfg,
                                        conditioning_embedding_out_channels=(8, 8, 16, 16)))
        states, added = torch.randn(2, 77, 32), None
    noisy, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    control = torch.rand(2, 3, 64, 64)
    controlled = backbone.predict_eps(noisy, timesteps, states, added, control=control)
    frozen = backbone.unet_eps(noisy, timesteps, states, added)
    assert torch.equal(controlled, frozen)
    # the ControlNet is a copy of the UNet's encoder; only it trains
    unet, controlnet = backbone.unet.state_dict(), backbone.controlnet.state_dict()
    encoder = [k for k in controlnet if k.startswith(('conv_in', 'time_embedding', 'down_blocks', 'mid_block'))]
    assert encoder and all(torch.equal(controlnet[k], unet[k]) for k in encoder)
    assert {n.split('.')[0] for n, p in backbone.named_parameters() if p.requires_grad} == {'controlnet'}
    # once the zero convolutions move, the prediction depends on the condition image
    _train_zero_convs(backbone.controlnet)
    other = backbone.predict_eps(noisy, timesteps, states, added, control=torch.zeros_like(control))
    assert not torch.equal(backbone.predict_eps(noisy, timesteps, states, added, control=control), other)
    with pytest.raises(ValueError, match='control image'):
        backbone.predict_eps(noisy, timesteps, states, added, control=torch.rand(2, 3, 32, 32))


def test_controlnet_starts_from_a_stage1_checkpoint(sdxl_cfg, tmp_path):
    stage1 = BACKBONES.build(dict(sdxl_cfg.tiny_sdxl_finetune_backbone, init_seed=7))
    checkpoint = tmp_path / 'iter_10.pth'
    torch.save(dict(meta=dict(iter=10), state_dict={f'backbone.unet.{k}': v
                                                    for k, v in stage1.unet.state_dict().items()}), checkpoint)
    backbone = BACKBONES.build(dict(sdxl_cfg.tiny_sdxl_controlnet_backbone, unet_weights=str(checkpoint)))
    assert all(torch.equal(v, stage1.unet.state_dict()[k]) for k, v in backbone.unet.state_dict().items())
    assert torch.equal(backbone.controlnet.conv_in.weight, stage1.unet.conv_in.weight)
    partial = tmp_path / 'partial.pth'
    torch.save(dict(state_dict={'backbone.unet.conv_in.weight': stage1.unet.conv_in.weight}), partial)
    with pytest.raises(KeyError, match='no complete UNet state dict'):
        BACKBONES.build(dict(sdxl_cfg.tiny_sdxl_controlnet_backbone, unet_weights=str(partial)))


def _portrait_batch(size=64):
    landmarks = torch.from_numpy(FFHQ_512 * size / 512).float()
    return dict(gt=[torch.rand(3, size, size), torch.rand(3, size, size)],
                metainfo=[dict(index=0, face_landmarks=landmarks), dict(index=1)])


@pytest.mark.slow
def test_authface_train_step_updates_the_controlnet_and_the_discriminators_only(sdxl_cfg, authface_model):
    model = copy.deepcopy(authface_model)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor',
        optim_wrapper_cfg=dict(backbone=dict(optimizer=dict(type='AdamW', lr=1e-3)),
                               facial_loss=dict(optimizer=dict(type='Adam', lr=1e-3)))))
    wrappers = constructor(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    log = model.train_step(_portrait_batch(), wrappers)
    assert {'loss_noise', 'loss_facial_adv', 'loss_facial_style', 'loss_facial_disc'} <= set(log)
    changed = {k.split('.')[0] + '.' + k.split('.')[1] for k, v in model.state_dict().items()
               if not torch.equal(v, before[k])}
    assert changed == {'backbone.controlnet', 'facial_loss.discriminators'}
    # Table 2 (b): the same model without the facial loss has one optimiser and no discriminator
    plain = copy.deepcopy(authface_model)
    plain.facial_loss = None
    log = plain.train_step(_portrait_batch(), OptimWrapperDict(backbone=OptimWrapper(
        torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-3))))
    assert 'loss_facial_adv' not in log and plain.facial_loss is None


@pytest.mark.slow
def test_authface_restores_with_any_scheduler_and_tiles(sdxl_cfg, authface_model):
    model = copy.deepcopy(authface_model).eval()
    _train_zero_convs(model.backbone.controlnet)  # a "trained" ControlNet: the LQ matters
    lq = torch.rand(1, 3, 72, 56)  # not a multiple of 16: padded and cropped back
    calls = []
    original = model.backbone.unet.forward
    model.backbone.unet.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    restored = model.restore(lq)
    assert restored.shape == (1, 3, 72, 56) and 0 <= float(restored.min()) and float(restored.max()) <= 1
    assert len(calls) == 2  # num_inference_steps
    assert torch.equal(model.restore(lq), restored)  # seeded
    assert not torch.equal(model.restore(lq, seed=1), restored)
    calls.clear()
    model.restore(lq, num_inference_steps=3)
    assert len(calls) == 3
    model.backbone.unet.forward = original
    # another diffusers scheduler gives another result
    model.inference_scheduler_cfg = dict(type='EulerDiscreteScheduler')
    assert not torch.equal(model.restore(lq), restored)
    model.inference_scheduler_cfg = dict(type='DDIMScheduler')
    with pytest.raises(KeyError, match='not a diffusers scheduler'):
        _authface(sdxl_cfg, sdxl_cfg.tiny_sdxl_text_encoder, facial=False,
                  inference_scheduler=dict(type='NoSuchScheduler'))
    # tiling: one tile covering the image is the untiled result; smaller tiles blend to a close one
    model.set_tiling(unet_tile=64, unet_overlap=4, decode_tile=64, decode_overlap=4)
    assert torch.equal(model.restore(lq), restored)
    model.set_tiling(unet_tile=6, unet_overlap=4, decode_tile=6, decode_overlap=4)
    tiled = model.restore(lq)
    assert tiled.shape == restored.shape and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, restored)
    model.set_tiling(None)
    # val/test outputs: pred, lq, gt, metainfo
    outputs = model.val_step(dict(inputs=[lq[0]], gt=[lq[0]], metainfo=[dict(index=0)]))
    assert outputs[0]['pred'].shape == (3, 72, 56) and 'gt' in outputs[0]


# ---------------------------------------------------------------------------------------------- stage I
def _finetune(cfg, **kwargs):
    return MODELS.build(dict(type='AuthFaceFineTune', backbone=cfg.tiny_sdxl_finetune_backbone,
                             text_encoder=cfg.tiny_sdxl_text_encoder, num_inference_steps=2,
                             prompter=dict(type='TagPrompter', tags_key='caption', template='{tags}',
                                           train_template='{tags}'), **kwargs))


@pytest.mark.slow
def test_stage1_trains_the_whole_unet_and_its_loss_does_not_depend_on_the_batch_split(sdxl_cfg):
    from mmengine.logging import MessageHub

    model = _finetune(sdxl_cfg, noise_seed=5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f'backbone.unet.{n}' for n, _ in model.backbone.unet.named_parameters()}
    MessageHub.get_current_instance().update_info('iter', 3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    meta = [dict(index=4, caption='a woman, portrait'), dict(index=9, caption='a man, outdoor')]
    whole = model(gt=images, metainfo=meta)['loss_noise']
    halves = [model(gt=[images[i]], metainfo=[meta[i]])['loss_noise'] for i in range(2)]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2, rtol=1e-5, atol=1e-6)
    # another iteration draws other noise
    MessageHub.get_current_instance().update_info('iter', 4)
    assert not torch.equal(model(gt=images, metainfo=meta)['loss_noise'], whole)
    # one optimiser step through mmengine's default train_step moves the UNet
    wrapper = OptimWrapper(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    before = model.backbone.unet.conv_in.weight.clone()
    log = model.train_step(dict(gt=images, metainfo=meta), wrapper)
    assert set(log) == {'loss', 'loss_noise'} and not torch.equal(before, model.backbone.unet.conv_in.weight)
    generated = model.generate(['a woman, portrait'], 64, 64)
    assert generated.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match='train_unet=True'):
        MODELS.build(dict(type='AuthFaceFineTune', backbone=dict(sdxl_cfg.tiny_sdxl_finetune_backbone,
                                                                  train_unet=False),
                          text_encoder=sdxl_cfg.tiny_sdxl_text_encoder))
    with pytest.raises(ValueError, match='SDXLTextEncoder'):
        MODELS.build(dict(type='AuthFaceFineTune', backbone=sdxl_cfg.tiny_sdxl_finetune_backbone,
                          text_encoder=dict(type='CLIPTextEncoder', text_encoder_cfg=dict(
                              sdxl_cfg.tiny_sdxl_text_encoder_cfg, hidden_size=64))))


def test_captioned_images_read_one_caption_file_per_image(tmp_path):
    import numpy as np
    from PIL import Image

    for name in ('a', 'b'):
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / f'{name}.png')
    (tmp_path / 'a.txt').write_text('woman, portrait,\nstudio lighting\n')
    with pytest.raises(FileNotFoundError, match='1 of 2 images have no caption'):
        DATASETS.build(dict(type='CaptionedImageDataset', data_root=str(tmp_path), resize=32))
    dataset = DATASETS.build(dict(type='CaptionedImageDataset', data_root=str(tmp_path), resize=32,
                                  captions={'b.png': 'man, outdoor'}))
    items = {dataset[i]['metainfo']['name']: dataset[i] for i in range(2)}
    assert items['a.png']['metainfo']['caption'] == 'woman, portrait, studio lighting'
    assert items['b.png']['metainfo']['caption'] == 'man, outdoor'
    assert items['a.png']['gt'].shape == (3, 32, 32)
    empty = DATASETS.build(dict(type='CaptionedImageDataset', data_root=str(tmp_path), missing_caption='empty'))
    assert sorted(empty[i]['metainfo']['caption'] for i in range(2)) == ['', 'woman, portrait, studio lighting']


# ---------------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_benchmark_script_times_the_tiny_stages():
    import importlib.util

    spec = importlib.util.spec_from_file_location('authface_benchmark', REPO_ROOT / 'tools' / 'benchmarks' /
                                                  'authface.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(['--tiny', '--stages', 'stage1', 'restore', '--steps', '1', '--warmup', '0'])
    assert [(r['stage'], r['world_size'], r['sharded'], r['size']) for r in rows] == [('stage1', 1, False, 64),
                                                                                      ('restore', 1, False, 128)]
    assert all(r['seconds'] > 0 and r['note'] == '' for r in rows)


# ---------------------------------------------------------------------------------------------- one-step hook
@pytest.mark.slow
def test_one_step_restorers_take_the_facial_loss_as_an_extra_loss(tiny_cfg):
    facial = dict(type='TimeAwareFacialLoss', time_weighting='constant',
                  discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=8))
    model = MODELS.build(dict(type='OSEDiff', backbone=tiny_cfg.tiny_backbone, text_encoder=tiny_cfg.tiny_text_encoder,
                              facial_loss=facial, data_preprocessor=dict(type='PortraitDataPreprocessor',
                                                                         degradation='codeformer_face')))
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor',
        optim_wrapper_cfg=dict(backbone=dict(optimizer=dict(type='AdamW', lr=1e-4)),
                               facial_loss=dict(optimizer=dict(type='Adam', lr=2e-3, betas=(0.9, 0.99))))))
    wrappers = constructor(model)
    before = model.facial_loss.discriminators['eyes'].conv1[0].weight.clone()
    log = model.train_step(_portrait_batch(), wrappers)
    assert {'loss_l2', 'loss_facial_adv', 'loss_facial_style', 'loss_facial_disc'} <= set(log)
    assert not torch.equal(before, model.facial_loss.discriminators['eyes'].conv1[0].weight)
    # the GT latent the loss compares with is the VAE encoder's without LoRA (the generator's adapters are off)
    gt = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for name, param in model.backbone.vae.named_parameters():
            if 'lora_B' in name:
                param.normal_()
    target = model.facial_target_latents(gt)
    model.backbone.vae.disable_adapters()
    with torch.no_grad():
        reference = model.backbone.vae.encode(gt * 2 - 1).latent_dist.mode() * model.backbone.scaling_factor
    model.backbone.vae.enable_adapters()
    torch.testing.assert_close(target, reference)
    # t = 999 would make Eq. 3's weight vanish: refused with the reason
    with pytest.raises(ValueError, match="time_weighting='constant'"):
        MODELS.build(dict(type='OSEDiff', backbone=tiny_cfg.tiny_backbone, text_encoder=tiny_cfg.tiny_text_encoder,
                          facial_loss=dict(facial, time_weighting='logit_normal')))
    with pytest.raises(KeyError, match='face landmarks'):
        plain = MODELS.build(dict(type='OSEDiff', backbone=tiny_cfg.tiny_backbone,
                                  text_encoder=tiny_cfg.tiny_text_encoder, facial_loss=facial,
                                  data_preprocessor=dict(type='SRDataPreprocessor', degradation='codeformer_face')))
        plain.train_step(dict(gt=[torch.rand(3, 64, 64)]), constructor(plain))
