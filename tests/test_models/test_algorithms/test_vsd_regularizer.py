"""OSEDiff's VSD loss and regulariser."""
import pytest
import torch

from portraitisr.models.algorithms.vsd_regularizer import vsd_loss
from portraitisr.registry import MODELS


@pytest.fixture(scope='module')
def regularizer(tiny_cfg):
    return MODELS.build(dict(type='VSDRegularizer', unet_cfg=tiny_cfg.tiny_unet_cfg,
                             scheduler_cfg=tiny_cfg.sd21_scheduler_cfg))


def test_vsd_loss_gradient_is_the_scaled_score_difference():
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    x0_update, x0_fix = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    vsd_loss(latents, x0_update, x0_fix).backward()
    weight = (latents.detach() - x0_fix).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = 2 * (x0_update - x0_fix) / weight / latents.numel()
    torch.testing.assert_close(latents.grad, expected)


def test_fresh_regulariser_without_guidance_agrees_with_the_frozen_unet(tiny_cfg, regularizer,
                                                                        tiny_text_encoder):
    """LoRA B = 0 at start, so unet_update equals unet_fix; with CFG 1 both x0 estimates match."""
    regularizer.cfg_scale = 1.0
    try:
        embeds = tiny_text_encoder(['a', 'b'])
        latents = torch.randn(2, 4, 8, 8)
        x0_update, x0_fix = regularizer(latents, embeds, tiny_text_encoder(['', '']), mode='vsd')
    finally:
        regularizer.cfg_scale = 7.5
    torch.testing.assert_close(x0_update, x0_fix, atol=1e-5, rtol=1e-5)


def test_adapters_are_back_on_after_the_frozen_pass(regularizer, tiny_text_encoder):
    with torch.no_grad():
        for name, param in regularizer.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.1)
    embeds = tiny_text_encoder(['a'])
    latents = torch.randn(1, 4, 8, 8)
    torch.manual_seed(0)
    x0_update, x0_fix = regularizer(latents, embeds, tiny_text_encoder(['']), mode='vsd')
    assert (x0_update - x0_fix).abs().max() > 1e-4
    loss = regularizer(latents, embeds, mode='diffusion')
    loss.backward()
    lora_grads = [p.grad for n, p in regularizer.named_parameters() if 'lora' in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    frozen = [n for n, p in regularizer.named_parameters() if p.requires_grad and 'lora' not in n]
    assert not frozen
    with pytest.raises(ValueError, match='mode'):
        regularizer(latents, embeds, mode='nope')
