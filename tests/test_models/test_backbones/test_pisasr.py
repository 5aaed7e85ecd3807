"""PiSA-SR: dual-LoRA layout, one-step maths at t = 1, adjustable guidance, the pisa_sr.pkl layout, the two training
stages, CSD and the restorer, on tiny random SD parts (parity with PiSA-SR's own code: test_pisasr_parity.py)."""
import copy

import pytest
import torch
from mmengine.logging import MessageHub

from portraitisr.models.backbones import export_pisasr_checkpoint, load_pisasr_checkpoint
from portraitisr.models.backbones.lora_targets import (PISASR_PIXEL_ADAPTERS, PISASR_SEMANTIC_ADAPTERS,
                                                       pisasr_unet_lora_targets, unet_lora_targets)
from portraitisr.registry import BACKBONES, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, RESTORERS

ALL_ADAPTERS = PISASR_PIXEL_ADAPTERS + PISASR_SEMANTIC_ADAPTERS


def _tiny_backbone_cfg(tiny_cfg, **overrides) -> dict:
    return dict(type='PiSASD', unet_cfg=tiny_cfg.tiny_unet_cfg, vae_cfg=tiny_cfg.tiny_vae_cfg,
                scheduler_cfg=tiny_cfg.sd21_scheduler_cfg, **overrides)


def _perturb(backbone, seed: int, scale: float = 0.05, kinds=('pix', 'sem')) -> None:
    """Trained-looking LoRA: B away from zero (a zero B makes an adapter a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in kinds:
            for param in backbone.adapter_parameters(kind):
                param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(scope='module')
def backbone(tiny_cfg):
    backbone = BACKBONES.build(_tiny_backbone_cfg(tiny_cfg)).eval()
    _perturb(backbone, seed=0)
    return backbone


@pytest.fixture(scope='module')
def embeds(tiny_text_encoder):
    return tiny_text_encoder([''])


# ------------------------------------------------------------------------------------------------ layout
def test_dual_lora_layout_follows_pisasr(backbone):
    unet = backbone.unet
    assert set(unet.peft_config) == set(ALL_ADAPTERS)
    osediff = unet_lora_targets(unet)
    for pix, sem, part in zip(PISASR_PIXEL_ADAPTERS, PISASR_SEMANTIC_ADAPTERS, osediff):
        # pixel and semantic adapters target the same modules, OSEDiff's split of them
        assert backbone.unet_lora_targets[pix] == backbone.unet_lora_targets[sem] == osediff[part]
    for name in ALL_ADAPTERS:
        config = unet.peft_config[name]
        assert (config.r, config.lora_alpha, config.init_lora_weights) == (4, 8, 'gaussian')
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q  # an encoder module
    assert layer.scaling == {'default_encoder_pix': 2.0, 'default_encoder_sem': 2.0}  # alpha / r = 8 / 4
    assert sorted(layer.active_adapters) == sorted(ALL_ADAPTERS)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all('.lora_' in n and n.startswith('unet.') for n in trainable)
    assert not any('lora' in n for n, _ in backbone.vae.named_parameters())  # frozen VAE, no VAE LoRA
    assert not backbone.unet.conv_in.base_layer.weight.requires_grad
    assert (backbone.timestep, backbone.sample_posterior, backbone.in_channels) == (1, True, 4)
    assert (backbone.lambda_pix, backbone.lambda_sem) == (1.0, 1.0)


def test_sd21_module_counts():
    """PiSA-SR's rule on the SD 2.1 UNet (meta device, no weights): OSEDiff's 94 / 148 / 16 modules, twice."""
    from diffusers import UNet2DConditionModel

    from portraitisr.models.backbones.sd21_architecture import SD21_UNET_CONFIG

    with torch.device('meta'):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
    counts = {name: len(modules) for name, modules in pisasr_unet_lora_targets(unet).items()}
    assert counts == {'default_encoder_pix': 94, 'default_decoder_pix': 148, 'default_others_pix': 16,
                      'default_encoder_sem': 94, 'default_decoder_sem': 148, 'default_others_sem': 16}


# ------------------------------------------------------------------------------------------------ maths
def test_one_step_is_the_plain_residual_at_t1(backbone, embeds):
    lq = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        torch.manual_seed(3)
        sr, z_h = backbone(lq, embeds, return_latents=True)
        torch.manual_seed(3)
        z_l = backbone.vae.encode(lq * 2 - 1).latent_dist.sample() * 0.18215
        eps = backbone.unet(z_l, torch.tensor([1]), encoder_hidden_states=embeds).sample
        expected = (backbone.vae.decode((z_l - eps) / 0.18215).sample.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(z_h, z_l - eps, atol=1e-6, rtol=0)
    torch.testing.assert_close(sr, expected, atol=1e-6, rtol=0)


def _eps_without_semantic_lora(backbone, latents, embeds):
    """``eps_pix`` from an independent UNet: a copy with the semantic adapters deleted."""
    unet = copy.deepcopy(backbone.unet)
    unet.delete_adapters(list(PISASR_SEMANTIC_ADAPTERS))
    return unet(latents, torch.tensor([1]), encoder_hidden_states=embeds).sample


def test_guidance_formula_and_single_pass_default(backbone, embeds):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 6)
    t = torch.tensor([1])
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    with torch.no_grad():
        eps_sem = backbone.unet(latents, t, encoder_hidden_states=embeds).sample
        eps_pix = _eps_without_semantic_lora(backbone, latents, embeds)
        assert (eps_sem - eps_pix).abs().max() > 1e-2  # the semantic LoRA matters
        for lambda_pix, lambda_sem in ((0.5, 1.3), (1.2, 0.0), (0.0, 1.0)):
            ours = backbone.guided_eps(latents, t, embeds, lambda_pix, lambda_sem)
            expected = lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix)
            torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
        # (1, 1): the two passes give the one pass with both LoRAs, which predict_eps runs
        two_pass = backbone.guided_eps(latents, t, embeds, 1.0, 1.0)
        torch.testing.assert_close(two_pass, eps_sem, atol=1e-6, rtol=0)
        assert torch.equal(backbone.predict_eps(latents, t, embeds), eps_sem)
        backbone.set_guidance(0.5, 1.3)
        try:
            torch.testing.assert_close(backbone.predict_eps(latents, t, embeds),
                                       0.5 * eps_pix + 1.3 * (eps_sem - eps_pix), atol=1e-6, rtol=0)
        finally:
            backbone.set_guidance(1.0, 1.0)
    # the pixel-only pass switched adapters and back: every adapter active and trainable again
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == flags
    layer = backbone.unet.mid_block.attentions[0].proj_in
    assert sorted(layer.active_adapters) == sorted(ALL_ADAPTERS)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), '1', None, True])
def test_guidance_scales_must_be_finite_numbers(backbone, value):
    with pytest.raises(ValueError, match='lambda_pix must be a finite number'):
        backbone.set_guidance(value, 1.0)
    assert (backbone.lambda_pix, backbone.lambda_sem) == (1.0, 1.0)


def test_default_inference_copy_has_no_pixel_unet(backbone, embeds):
    fast = backbone.inference_copy('float32')
    assert fast.unet_pix is None and not hasattr(fast.unet, 'peft_config')
    fast.set_guidance(0.5, 1.0)
    with pytest.raises(RuntimeError, match='made at the default guidance'):
        fast(torch.rand(1, 3, 64, 64), embeds)


# ------------------------------------------------------------------------------------------------ checkpoint
def test_checkpoint_round_trip_in_the_official_layout(backbone, tiny_cfg, tmp_path):
    checkpoint = export_pisasr_checkpoint(backbone)
    assert sorted(checkpoint) == sorted([
        'unet_lora_encoder_modules_pix', 'unet_lora_decoder_modules_pix', 'unet_lora_others_modules_pix',
        'unet_lora_encoder_modules_sem', 'unet_lora_decoder_modules_sem', 'unet_lora_others_modules_sem',
        'lora_rank_unet_pix', 'lora_rank_unet_sem', 'state_dict_unet'])
    assert all('lora' in k for k in checkpoint['state_dict_unet'])
    assert any('.lora_A.default_encoder_sem.' in k for k in checkpoint['state_dict_unet'])
    path = tmp_path / 'pisa_sr.pkl'
    torch.save(checkpoint, path)
    fresh = BACKBONES.build(_tiny_backbone_cfg(tiny_cfg, init_seed=5, trained_weights=str(path)))
    state = fresh.unet.state_dict()
    for key, value in checkpoint['state_dict_unet'].items():
        assert torch.equal(state[key], value), key


def _broken(checkpoint, edit):
    broken = copy.deepcopy(checkpoint)
    edit(broken)
    return broken


@pytest.mark.parametrize('edit, error, message', [
    (lambda c: c.pop('lora_rank_unet_sem'), KeyError, 'missing keys'),
    (lambda c: c.update(state_dict_vae={}), KeyError, 'unexpected keys'),
    (lambda c: c.update(lora_rank_unet_pix=8), ValueError, 'lora_rank_unet_pix=8'),
    (lambda c: c['unet_lora_others_modules_sem'].pop(), ValueError, 'unet_lora_others_modules_sem'),
    (lambda c: c['state_dict_unet'].pop(next(iter(c['state_dict_unet']))), KeyError, '1 LoRA tensors missing'),
    (lambda c: c['state_dict_unet'].update({'conv_in.base_layer.weight': torch.zeros(1)}), KeyError, '1 unknown'),
    (lambda c: c['state_dict_unet'].update(
        {k: v[:1] for k, v in list(c['state_dict_unet'].items())[:1]}), ValueError, 'checkpoint'),
])
def test_loader_is_strict(backbone, edit, error, message):
    checkpoint = export_pisasr_checkpoint(backbone)
    with pytest.raises(error, match=message):
        load_pisasr_checkpoint(backbone, _broken(checkpoint, edit))


def test_osediff_release_is_not_a_pisasr_checkpoint(backbone, tiny_cfg):
    from portraitisr.models.backbones.osediff_checkpoint import export_osediff_checkpoint

    osediff = export_osediff_checkpoint(BACKBONES.build(tiny_cfg.tiny_backbone))
    with pytest.raises(KeyError, match="Not a PiSA-SR checkpoint: missing keys .*'state_dict_vae'"):
        load_pisasr_checkpoint(backbone, osediff)


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope='module')
def model_cfg(tiny_cfg):
    return dict(type='PiSASR', backbone=_tiny_backbone_cfg(tiny_cfg), text_encoder=tiny_cfg.tiny_text_encoder,
                prompter=dict(type='FixedPrompter', prompt='a portrait'), pix_steps=3, null_text_ratio=0.5,
                data_preprocessor=dict(type='SRDataPreprocessor', degradation='seesr', degradation_seed=0))


def _wrappers(model):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor',
        optim_wrapper_cfg=dict(backbone=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-2),
                                             clip_grad=dict(max_norm=1.0)))))(model)


def _step(model, wrappers, iteration: int) -> dict:
    MessageHub.get_current_instance().update_info('iter', iteration)
    batch = dict(gt=[torch.rand(3, 64, 64) for _ in range(2)], metainfo=[dict(index=0), dict(index=1)])
    return model.train_step(batch, wrappers)


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_two_training_stages_update_one_lora_each(model_cfg):
    model = MODELS.build(model_cfg).train()
    wrappers = _wrappers(model)
    sem_b = [n for n, _ in model.named_parameters() if '.lora_B.' in n and '_sem.' in n]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = _step(model, wrappers, iteration=0)  # pixel stage: L2 only
    assert set(log) == {'loss', 'loss_l2', 'semantic_stage'} and log['semantic_stage'] == 0
    changed = _changed(model, before)
    assert changed and all('_pix.' in n for n in changed)  # weight decay would move the others if they stepped
    assert all(model.get_parameter(n).abs().max() == 0 for n in sem_b)  # semantic LoRA still a no-op

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = _step(model, wrappers, iteration=3)  # semantic stage: L2 + CSD (no LPIPS configured here)
    assert set(log) == {'loss', 'loss_l2', 'loss_csd', 'semantic_stage'} and log['semantic_stage'] == 1
    assert all(torch.isfinite(v) for v in log.values())
    changed = _changed(model, before)
    assert changed and all('_sem.' in n for n in changed)
    # every LoRA tensor stays trainable (one fixed parameter set for distributed training)
    assert all(p.requires_grad for n, p in model.named_parameters() if '.lora_' in n)
    MessageHub.get_current_instance().update_info('iter', 0)


def test_pixel_stage_refuses_a_trained_semantic_lora(model_cfg):
    model = MODELS.build(model_cfg).train()
    _perturb(model.backbone, seed=1, kinds=('sem', ))
    with pytest.raises(ValueError, match='set pix_steps=0'):
        _step(model, _wrappers(model), iteration=0)
    MessageHub.get_current_instance().update_info('iter', 0)


def test_csd_gradient_uses_the_frozen_sd_unet(model_cfg, tiny_cfg):
    """d CSD / d z_H = 2 (x0_fake - x0_real) / (w numel), with both x0 from the *pretrained* UNet (an independent
    plain copy without adapters): the negative prompt is the unconditional branch, guidance 7.5."""
    from diffusers import UNet2DConditionModel

    model = MODELS.build(model_cfg)
    backbone = model.backbone
    _perturb(backbone, seed=2)  # adapters that would change the result if CSD used them
    plain = UNet2DConditionModel(**tiny_cfg.tiny_unet_cfg)
    plain.load_state_dict({k.replace('.base_layer', ''): v for k, v in backbone.unet.state_dict().items()
                           if 'lora' not in k})
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    prompt = model.text_encoder(['a portrait'] * 2)
    negative = model.text_encoder([model.negative_prompt] * 2)
    torch.manual_seed(7)
    model.csd_loss(latents, prompt, negative).backward()
    torch.manual_seed(7)
    t = torch.randint(20, 500, (2, ))
    noise = torch.randn(2, 4, 8, 8)
    abar = backbone.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents.detach() + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps_u = plain(noisy, t, encoder_hidden_states=negative).sample
        eps_c = plain(noisy, t, encoder_hidden_states=prompt).sample
    x0 = lambda eps: (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()  # noqa: E731
    x0_real, x0_fake = x0(eps_u + 7.5 * (eps_c - eps_u)), x0(eps_u)
    weight = (latents.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = 2 * (x0_fake - x0_real) / weight / latents.numel()
    torch.testing.assert_close(latents.grad, expected, atol=1e-5, rtol=1e-4)
    assert model.csd_timesteps == (20, 500) and model.csd_cfg_scale == 7.5


# ------------------------------------------------------------------------------------------------ restorer
def test_restorer_enlarges_small_inputs_and_sets_guidance(model_cfg, backbone, tmp_path):
    restorer = RESTORERS.build(dict(type='PiSASRRestorer', model=model_cfg, checkpoint=export_pisasr_checkpoint(
        backbone), lambda_pix=0.8, lambda_sem=1.2, min_input_size=32))
    inner = restorer.model.backbone
    assert (inner.lambda_pix, inner.lambda_sem) == (0.8, 1.2)
    for key, value in export_pisasr_checkpoint(backbone)['state_dict_unet'].items():
        assert torch.equal(inner.unet.state_dict()[key], value), key
    out = restorer(torch.rand(1, 3, 24, 20))  # shorter side 20 < 32: restored at 32 x 38 x 4, resized back
    assert out.shape == (1, 3, 96, 80)
    assert not any(p.requires_grad for p in restorer.parameters())
    # our own training's .safetensors loads too
    path = tmp_path / 'pisasr_generator.safetensors'
    backbone.save_trainable(str(path))
    restorer = RESTORERS.build(dict(type='PiSASRRestorer', model=model_cfg, checkpoint=str(path)))
    for key, value in export_pisasr_checkpoint(backbone)['state_dict_unet'].items():
        assert torch.equal(restorer.model.backbone.unet.state_dict()[key], value), key
    assert not any(p.requires_grad for p in restorer.parameters())
    with pytest.raises(ValueError, match='pisa_sr.pkl'):
        RESTORERS.build(dict(type='PiSASRRestorer', model=model_cfg))
