"""OneStepSD: one-step maths, LoRA targets and counts, conv_in widening, merge, checkpoints."""
import pytest
import torch

from portraitisr.registry import BACKBONES


@pytest.fixture(scope='module')
def backbone(tiny_cfg):
    return BACKBONES.build(tiny_cfg.tiny_backbone)


def _perturb_lora(module, seed=0, scale=0.05):
    """LoRA B starts at zero (a no-op adapter); give it values so that LoRA matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if 'lora_B' in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def test_one_step_equals_closed_form_and_ddpm_step(backbone, tiny_text_encoder):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    _perturb_lora(backbone)
    lq = torch.rand(2, 3, 64, 64)
    embeds = tiny_text_encoder(['', 'a portrait'])
    with torch.no_grad():
        torch.manual_seed(1)
        sr = backbone(lq, embeds)
        torch.manual_seed(1)
        z_l = backbone.encode(lq)
        t = torch.full((2, ), 999)
        eps = backbone.unet(z_l, t, encoder_hidden_states=embeds).sample
        abar = backbone.scheduler.alphas_cumprod[999]
        z_h = (z_l - (1 - abar).sqrt() * eps) / abar.sqrt()
        expected = ((backbone.vae.decode(z_h / 0.18215).sample.clamp(-1, 1)) + 1) / 2
        # OSEDiff's diffusers 0.25 computed prev_t = 999 - 1000 // 1 = -1 after set_timesteps(1);
        # current diffusers looks t up in its schedule, which holds 999 with trailing spacing.
        scheduler = DDPMScheduler.from_config(backbone.scheduler.config,
                                              timestep_spacing='trailing')
        scheduler.set_timesteps(1)
        assert scheduler.timesteps.tolist() == [999]
        prev = scheduler.step(eps, 999, z_l).prev_sample
    torch.testing.assert_close(sr, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backbone.one_step(z_l, eps), prev, atol=1e-5, rtol=1e-5)


def test_sd21_schedule_constants(backbone):
    # OSEDiff section 1: abar_999 = 0.0046601 -> alpha = 0.068265, beta = 0.997667
    assert backbone.sqrt_alpha_bar.item() == pytest.approx(0.068265, abs=2e-6)
    assert backbone.sqrt_one_minus_alpha_bar.item() == pytest.approx(0.997667, abs=2e-6)
    assert backbone.scaling_factor == pytest.approx(0.18215)


def test_trainable_parameters_are_lora_and_conv_in(backbone):
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable, 'nothing trains'
    for name in trainable:
        assert 'lora_' in name or name.startswith('unet.conv_in.base_layer'), name
    assert {'unet.conv_in.base_layer.weight', 'unet.conv_in.base_layer.bias'} <= set(trainable)
    assert any(n.startswith('vae.encoder') and 'lora' in n for n in trainable)
    assert not any(n.startswith('vae.decoder') for n in trainable)
    lora_params = {n for n, _ in backbone.named_parameters() if 'lora_' in n}
    assert lora_params <= set(trainable)


def test_sd21_architecture_counts_match_osediff():
    """Built from the SD 2.1 config on the meta device: no weights, no download."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from portraitisr.models.backbones.lora_targets import (osediff_vae_module_list,
                                                           unet_lora_targets,
                                                           vae_encoder_lora_targets)
    from portraitisr.models.backbones.one_step_sd import _lora_config, add_osediff_unet_lora
    from portraitisr.models.backbones.sd21_architecture import SD21_UNET_CONFIG, SD21_VAE_CONFIG

    with torch.device('meta'):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
        vae = AutoencoderKL(**SD21_VAE_CONFIG)
        regularizer_unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
        targets = unet_lora_targets(unet)
        assert {k: len(v) for k, v in targets.items()} == {
            'default_encoder': 94, 'default_decoder': 148, 'default_others': 16}
        assert len(vae_encoder_lora_targets(vae)) == 32
        assert len(osediff_vae_module_list(vae)) == 65
        add_osediff_unet_lora(unet)
        add_osediff_unet_lora(regularizer_unet)
        vae.add_adapter(_lora_config(4, 8, vae_encoder_lora_targets(vae)),
                        adapter_name='default_encoder')

    def count(module, predicate):
        return sum(p.numel() for n, p in module.named_parameters() if predicate(n))

    generator = (count(unet, lambda n: 'lora' in n) + count(vae, lambda n: 'lora' in n) +
                 count(unet, lambda n: n.startswith('conv_in.base_layer')))
    regularizer = count(regularizer_unet, lambda n: 'lora' in n)
    assert generator == pytest.approx(4.437e6, rel=1e-3)
    assert regularizer == pytest.approx(4.056e6, rel=1e-3)
    # The paper's "8.5M trainable parameters", within 1%.
    assert generator + regularizer == pytest.approx(8.5e6, rel=0.01)


def test_widened_conv_in_starts_as_the_pretrained_model(tiny_cfg, tiny_text_encoder):
    narrow = BACKBONES.build(tiny_cfg.tiny_backbone)
    wide = BACKBONES.build(dict(tiny_cfg.tiny_backbone, in_channels=9))
    assert wide.unet.conv_in.base_layer.weight.shape[1] == 9
    assert wide.unet.conv_in.lora_A['default_encoder'].weight.shape[1] == 9
    torch.testing.assert_close(wide.unet.conv_in.base_layer.weight[:, :4],
                               narrow.unet.conv_in.base_layer.weight)
    assert wide.unet.conv_in.base_layer.weight[:, 4:].abs().max() == 0
    lq, ref = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    mask = torch.ones(1, 1, 64, 64)
    embeds = tiny_text_encoder([''])
    with torch.no_grad():
        torch.manual_seed(0)
        out_narrow = narrow(lq, embeds)
        torch.manual_seed(0)
        out_wide = wide(lq, embeds, ref=ref, face_mask=mask)
    # The reference is encoded after the LQ, so the LQ latent sample is the same.
    torch.testing.assert_close(out_wide, out_narrow, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='in_channels=9'):
        narrow(lq, embeds, ref=ref)


def test_merged_lora_matches_unmerged(tiny_cfg, tiny_text_encoder):
    model = BACKBONES.build(dict(tiny_cfg.tiny_backbone, sample_posterior=False)).eval()
    _perturb_lora(model, seed=3)
    lq, embeds = torch.rand(2, 3, 64, 64), tiny_text_encoder(['', ''])
    with torch.no_grad():
        reference = model(lq, embeds)
        with model.merged_lora():
            merged = model(lq, embeds)
        after = model(lq, embeds)
    assert (reference - model(torch.rand(2, 3, 64, 64), embeds)).abs().max() > 1e-3
    torch.testing.assert_close(merged, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after, reference)


def test_bf16_frozen_weights_keep_trainable_fp32(tiny_cfg, tiny_text_encoder):
    model = BACKBONES.build(dict(tiny_cfg.tiny_backbone, frozen_dtype='bfloat16'))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert model.sqrt_alpha_bar.dtype == torch.float32  # schedule constants keep full precision
    sr = model(torch.rand(1, 3, 64, 64), tiny_text_encoder(['']))
    assert sr.dtype == torch.float32 and sr.min() >= 0 and sr.max() <= 1
    sr.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gradients_reach_every_trainable_tensor(tiny_cfg, tiny_text_encoder):
    model = BACKBONES.build(dict(tiny_cfg.tiny_backbone, gradient_checkpointing=True))
    _perturb_lora(model)
    model(torch.rand(2, 3, 64, 64), tiny_text_encoder(['', ''])).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_trainable_safetensors_round_trip(tmp_path, tiny_cfg):
    source = BACKBONES.build(dict(tiny_cfg.tiny_backbone, init_seed=1))
    _perturb_lora(source, seed=5)
    path = tmp_path / 'lora.safetensors'
    source.save_trainable(str(path))
    target = BACKBONES.build(dict(tiny_cfg.tiny_backbone, init_seed=1))
    target.load_trainable(str(path))
    for name, value in source.trainable_state_dict().items():
        torch.testing.assert_close(target.trainable_state_dict()[name], value)
    with pytest.raises(KeyError, match='mismatch'):
        target.load_trainable({'unet.nope': torch.zeros(1)})


def test_lq_size_must_be_a_multiple_of_the_vae_factor(backbone, tiny_text_encoder):
    with pytest.raises(ValueError, match='multiple of 8'):
        backbone(torch.rand(1, 3, 60, 64), tiny_text_encoder(['']))


def test_missing_sd_weights_fail_with_a_clear_message(tmp_path, monkeypatch):
    from portraitisr.weights import WeightsNotFoundError

    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.delenv('PORTRAITISR_ALLOW_DOWNLOAD', raising=False)
    with pytest.raises(WeightsNotFoundError) as error:
        BACKBONES.build(dict(type='OneStepSD', pretrained='stabilityai/stable-diffusion-2-1-base'))
    assert 'stable-diffusion-2-1-base' in str(error.value)
    assert str(tmp_path) in str(error.value)
