"""The official OSEDiff release format (osediff.pkl) into and out of our backbone."""
import pytest
import torch
from peft import LoraConfig

from portraitisr.models.backbones.osediff_checkpoint import (export_osediff_checkpoint,
                                                             load_osediff_checkpoint)
from portraitisr.registry import BACKBONES


def _official_style_checkpoint(tiny_cfg, seed: int) -> dict:
    """A file with exactly OSEDiff's structure, built the way OSEDiff's code builds it: diffusers
    models + peft ``add_adapter`` with its module lists, ``save_model``'s key filters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_cfg.tiny_unet_cfg)
    vae = AutoencoderKL(**tiny_cfg.tiny_vae_cfg)
    grep = ['to_k', 'to_q', 'to_v', 'to_out.0', 'conv', 'conv1', 'conv2', 'conv_in', 'conv_shortcut',
            'conv_out', 'proj_out', 'proj_in', 'ff.net.2', 'ff.net.0.proj']
    lists = {'encoder': [], 'decoder': [], 'others': []}
    for name, _ in unet.named_parameters():
        if 'bias' in name or 'norm' in name:
            continue
        for pattern in grep:
            if pattern in name and ('down_blocks' in name or 'conv_in' in name):
                lists['encoder'].append(name.replace('.weight', ''))
                break
            if pattern in name and ('up_blocks' in name or 'conv_out' in name):
                lists['decoder'].append(name.replace('.weight', ''))
                break
            if pattern in name:
                lists['others'].append(name.replace('.weight', ''))
                break
    vae_list = []
    for name, _ in vae.named_parameters():
        if 'bias' in name or 'norm' in name:
            continue
        for pattern in ['conv1', 'conv2', 'conv_in', 'conv_shortcut', 'conv', 'conv_out', 'to_k',
                        'to_q', 'to_v', 'to_out.0']:
            if pattern in name and 'encoder' in name:
                vae_list.append(name.replace('.weight', ''))
            elif 'quant_conv' in name and 'post_quant_conv' not in name:
                vae_list.append(name.replace('.weight', ''))
    for part, modules in lists.items():
        unet.add_adapter(LoraConfig(r=4, init_lora_weights='gaussian', target_modules=modules),
                         adapter_name=f'default_{part}')
    vae.add_adapter(LoraConfig(r=4, init_lora_weights='gaussian', target_modules=vae_list),
                    adapter_name='default_encoder')
    with torch.no_grad():  # trained values, not the zero-initialised B
        for module in (unet, vae):
            for name, param in module.named_parameters():
                if 'lora' in name or 'conv_in' in name:
                    param.normal_(0, 0.02)
    return dict(
        unet_lora_encoder_modules=lists['encoder'], unet_lora_decoder_modules=lists['decoder'],
        unet_lora_others_modules=lists['others'], vae_lora_encoder_modules=vae_list,
        rank_unet=4, rank_vae=4,
        state_dict_unet={k: v for k, v in unet.state_dict().items() if 'lora' in k or 'conv_in' in k},
        state_dict_vae={k: v for k, v in vae.state_dict().items() if 'lora' in k})


def test_load_official_format(tmp_path, tiny_cfg):
    checkpoint = _official_style_checkpoint(tiny_cfg, seed=11)
    assert len(checkpoint['vae_lora_encoder_modules']) > len(set(checkpoint['vae_lora_encoder_modules']))
    path = tmp_path / 'osediff.pkl'
    torch.save(checkpoint, path)
    backbone = BACKBONES.build(tiny_cfg.tiny_backbone)
    load_osediff_checkpoint(backbone, str(path))  # torch.load(weights_only=True) inside
    unet_state, vae_state = backbone.unet.state_dict(), backbone.vae.state_dict()
    for key, value in checkpoint['state_dict_unet'].items():
        torch.testing.assert_close(unet_state[key], value)
    for key, value in checkpoint['state_dict_vae'].items():
        torch.testing.assert_close(vae_state[key], value)
    # Round trip through our exporter gives the same structure and tensors.
    exported = export_osediff_checkpoint(backbone)
    assert set(exported) == set(checkpoint)
    for key in ('unet_lora_encoder_modules', 'unet_lora_decoder_modules',
                'unet_lora_others_modules', 'vae_lora_encoder_modules'):
        assert exported[key] == checkpoint[key]
    assert set(exported['state_dict_unet']) == set(checkpoint['state_dict_unet'])


def test_load_into_nine_channel_conv_in(tiny_cfg):
    checkpoint = _official_style_checkpoint(tiny_cfg, seed=12)
    wide = BACKBONES.build(dict(tiny_cfg.tiny_backbone, in_channels=9))
    load_osediff_checkpoint(wide, checkpoint)
    weight = wide.unet.conv_in.base_layer.weight
    torch.testing.assert_close(weight[:, :4], checkpoint['state_dict_unet']['conv_in.base_layer.weight'])
    assert weight[:, 4:].abs().max() == 0
    lora_a = wide.unet.conv_in.lora_A['default_encoder'].weight
    assert lora_a.shape[1] == 9 and lora_a[:, 4:].abs().max() == 0


def test_rejects_other_formats_and_ranks(tiny_cfg):
    backbone = BACKBONES.build(tiny_cfg.tiny_backbone)
    with pytest.raises(KeyError, match='Not an OSEDiff checkpoint'):
        load_osediff_checkpoint(backbone, {'vae': {}, 'unet': {}})  # AdcSR's osediff.pkl
    checkpoint = _official_style_checkpoint(tiny_cfg, seed=13)
    checkpoint['rank_unet'] = 8
    with pytest.raises(ValueError, match='rank'):
        load_osediff_checkpoint(backbone, checkpoint)
