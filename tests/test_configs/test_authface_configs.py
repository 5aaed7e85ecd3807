"""AuthFace's configs (arXiv 2410.09864): the values the paper states, table-driven; every config builds; the tiny
ControlNet config trains, validates and resumes exactly through tools/ on the CPU."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from portraitisr.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from tests.helpers.data_files import REPO_ROOT

AUTHFACE = REPO_ROOT / 'configs' / 'authface'
STAGE1 = 'authface/authface_stage1_sdxl.py'
STAGE2 = 'authface/authface_stage2_sdxl.py'
ABLATIONS = {row: f'authface/ablations/table2_{row}_{name}.py' for row, name in
             (('a', 'sdxl_prior'), ('b', 'finetuned_prior'), ('c', 'constant_weight'), ('d', 'time_aware'))}
TESTS = {name: f'authface/authface_sdxl_{name}_test.py' for name in ('celeba', 'lfw', 'webphoto', 'wider')}
SDXL = 'stabilityai/stable-diffusion-xl-base-1.0'
NO_REFERENCE = ['MANIQA', 'MUSIQ', 'CLIPIQA', 'FID']


def load(name: str) -> Config:
    return Config.fromfile(str(REPO_ROOT / 'configs' / name))


def get(cfg, path: str):
    value = cfg
    for part in path.split('.'):
        value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
    return value


def effective_batch(cfg) -> int:
    return cfg.train_dataloader.batch_size * cfg.num_gpus * cfg.optim_wrapper.get('accumulative_counts', 1)


def facial_weighting(cfg):
    facial = cfg.model.get('facial_loss')
    return None if facial is None else facial.time_weighting


# (config, what, expected, where the paper says it)
PAPER_VALUES = [
    # Stage I, sections 3.1 and 4.1
    (STAGE1, 'model.backbone.pretrained', SDXL, '4.1 "initialized from StableDiffusion-XL"'),
    (STAGE1, 'model.backbone.train_unet', True, '4.1 "we fine-tune the entire U-Net"'),
    (STAGE1, 'optim_wrapper.optimizer.type', 'AdamW', '4.1 "We employ AdamW"'),
    (STAGE1, 'optim_wrapper.optimizer.lr', 5e-7, '4.1 "learning rate of 5e-7"'),
    (STAGE1, effective_batch, 96, '4.1 "batch size ... 96"'),
    (STAGE1, lambda c: c.train_cfg.max_iters // c.optim_wrapper.accumulative_counts, 50000,
     '4.1 "training iteration ... 50k"'),
    (STAGE1, 'train_dataloader.dataset.resize', 1024, '4.1 "1024 x 1024 for fintuing model"; 3.1 fixed resolution'),
    (STAGE1, 'num_gpus', 4, '4.1 "four NVIDIA L40s GPUs"'),
    (STAGE1, 'model.prompter.tags_key', 'caption', '3.1 photography-guided captions as prompts'),
    # Stage II, sections 3.2 and 4.1
    (STAGE2, 'model.backbone.type', 'ControlNetDiffusion', '3.2 "we apply [ControlNet] as the controller"'),
    (STAGE2, 'model.backbone.pretrained', SDXL, '3.2 the fine-tuned SDXL as prior'),
    (STAGE2, 'model.backbone.unet_weights', 'work_dirs/authface_stage1_sdxl/iter_300000.pth',
     '3.2 "initialize ControlNet with the encoder from our finetuned SDXL"'),
    (STAGE2, 'model.backbone.train_unet', False, '3.2 "we freeze the parameters of our fine-tuned SDXL"'),
    (STAGE2, 'model.backbone.conditioning_channels', 3, '3.2 the degraded face image is the condition c'),
    (STAGE2, 'model.prompter.type', 'NullPrompter', '3.2 "null prompts [\'\']"'),
    (STAGE2, 'model.facial_loss.type', 'TimeAwareFacialLoss', '3.2 L_total = L_noise + L_facial'),
    (STAGE2, 'model.facial_loss.time_weighting', 'logit_normal', '3.2 Eq. 3'),
    (STAGE2, 'model.facial_loss.vae_factor', 8, '3.2 "downsampling with a factor of eight"'),
    (STAGE2, 'model.facial_loss.discriminator.in_channels', 4, '3.2 discriminators on latent patches'),
    (STAGE2, 'optim_wrapper.backbone.optimizer.type', 'AdamW', '4.1 "the same optimizer"'),
    (STAGE2, 'optim_wrapper.backbone.optimizer.lr', 2e-5, '4.1 "learning rate of 2e-5"'),
    (STAGE2, effective_batch, 48, '4.1 "batch size 48 for training ControlNet"'),
    (STAGE2, 'train_dataloader.dataset.resize', 512, '4.1 "512 x 512 for training ControlNet"; FFHQ resized to 512'),
    (STAGE2, 'train_dataloader.dataset.data_root', 'data/ffhq', '4.1 "we resize the FFHQ dataset"'),
    (STAGE2, 'model.data_preprocessor.degradation.blur_sigma', (0.1, 10), '4.1 GFP-GAN degradations'),
    (STAGE2, 'model.data_preprocessor.degradation.downsample_range', (0.8, 8), '4.1 GFP-GAN degradations'),
    (STAGE2, 'model.data_preprocessor.degradation.noise_range', (0, 20), '4.1 GFP-GAN degradations'),
    (STAGE2, 'model.data_preprocessor.degradation.jpeg_range', (60, 100), '4.1 GFP-GAN degradations'),
    (STAGE2, 'num_gpus', 4, '4.1 "four NVIDIA L40s GPUs"'),
    # Table 2 (section 4.3): diffusion prior x facial loss
    (ABLATIONS['a'], 'model.backbone.unet_weights', None, 'Table 2 (a): SDXL prior'),
    (ABLATIONS['a'], facial_weighting, None, 'Table 2 (a): no L_facial'),
    (ABLATIONS['b'], 'model.backbone.unet_weights', 'work_dirs/authface_stage1_sdxl/iter_300000.pth',
     'Table 2 (b): our prior'),
    (ABLATIONS['b'], facial_weighting, None, 'Table 2 (b): no L_facial'),
    (ABLATIONS['c'], 'model.backbone.unet_weights', 'work_dirs/authface_stage1_sdxl/iter_300000.pth',
     'Table 2 (c): our prior'),
    (ABLATIONS['c'], facial_weighting, 'constant', 'Table 2 (c): constant weight'),
    (ABLATIONS['d'], 'model.backbone.unet_weights', 'work_dirs/authface_stage1_sdxl/iter_300000.pth',
     'Table 2 (d): our prior'),
    (ABLATIONS['d'], facial_weighting, 'logit_normal', 'Table 2 (d): time-aware weight'),
    # Table 1 / section 4.1 "Metrics": full-reference metrics only where there is a GT
    (TESTS['celeba'], lambda c: [m.type for m in c.test_sets[0].evaluator],
     ['PSNR', 'SSIM', 'LPIPS', 'MANIQA', 'MUSIQ', 'CLIPIQA', 'FID'], '4.1 Metrics; Table 1 CelebA'),
    (TESTS['celeba'], 'test_sets.0.dataloader.dataset.gt_root', 'data/celeba_test/gt', 'CelebA-Test has GT'),
    *[(TESTS[name], lambda c: [m.type for m in c.test_sets[0].evaluator], NO_REFERENCE,
       f'4.1 Metrics; Table 1 {name}: no GT, no-reference metrics') for name in ('lfw', 'webphoto', 'wider')],
    *[(TESTS[name], lambda c: c.test_sets[0].dataloader.dataset.get('gt_root'), None, f'{name}: real, no GT')
      for name in ('lfw', 'webphoto', 'wider')],
    (TESTS['lfw'], 'test_sets.0.name', 'LFW-Test', '4.1 LFW-Test'),
    (TESTS['webphoto'], 'test_sets.0.name', 'WebPhoto-Test', '4.1 WebPhoto-Test'),
    (TESTS['wider'], 'test_sets.0.name', 'WIDER-Test', '4.1 WIDER-Test'),
    ('authface/authface_sdxl_test.py', lambda c: [s.name for s in c.test_sets],
     ['CelebA-Test', 'LFW-Test', 'WebPhoto-Test', 'WIDER-Test'], '4.1 the four test sets'),
]


@pytest.mark.parametrize('config, what, expected, source', PAPER_VALUES,
                         ids=[f'{c.split("/")[-1][:-3]}:{w if isinstance(w, str) else w.__name__}'
                              for c, w, _, _ in PAPER_VALUES])
def test_config_states_the_papers_value(config, what, expected, source):
    cfg = load(config)
    value = what(cfg) if callable(what) else get(cfg, what)
    if isinstance(expected, tuple):
        value = tuple(value)
    assert value == expected, f'{config}: {what} is {value!r}, the paper ({source}) says {expected!r}'


def test_every_authface_config_parses_and_names_registered_types():
    from portraitisr.registry import DATASETS, MODELS, RUNNERS, STRATEGIES

    configs = sorted(AUTHFACE.rglob('*.py')) + sorted((REPO_ROOT / 'configs' / 'debug').glob('authface_*.py'))
    assert len(configs) >= 18
    for path in configs:
        cfg = Config.fromfile(str(path))
        assert MODELS.get(cfg.model.type)
        RUNNERS.get(cfg.get('runner_type', 'PortraitRunner'))
        if cfg.get('strategy'):
            STRATEGIES.get(cfg.strategy.type)
        if cfg.get('train_dataloader'):
            DATASETS.get(cfg.train_dataloader.dataset.type)


def _tiny_stand_in(cfg: Config) -> dict:
    """The config's model with the SDXL weights replaced by the tiny SDXL-shaped parts (no download)."""
    tiny = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'models' / 'tiny_sdxl.py'))
    model = copy.deepcopy(cfg.model.to_dict())
    backbone = model['backbone']
    for key in ('pretrained', 'unet_weights'):
        backbone.pop(key, None)
    backbone.update(unet_cfg=tiny.tiny_sdxl_unet_cfg, vae_cfg=tiny.tiny_vae_cfg, scheduler_cfg=tiny.sd21_scheduler_cfg,
                    frozen_dtype='float32', gradient_checkpointing=False)
    if backbone['type'] == 'ControlNetDiffusion':
        backbone['conditioning_embedding_out_channels'] = (8, 8, 16, 16)
    model['text_encoder'] = tiny.tiny_sdxl_text_encoder
    if model.get('facial_loss'):
        model['facial_loss']['discriminator'] = tiny.tiny_facial_discriminator
    return model


@pytest.mark.slow
@pytest.mark.parametrize('config', [STAGE1, STAGE2, *ABLATIONS.values()])
def test_paper_configs_build_and_their_strategy_covers_every_trainable_parameter(config):
    """Each paper config's model (tiny stand-ins for the SDXL weights) builds, its optimiser constructor covers the
    trainable parameters, and its FSDP2 shard_modules exist and hold every trainable parameter."""
    cfg = load(config)
    model = MODELS.build(_tiny_stand_in(cfg))
    optim_cfg = cfg.optim_wrapper.to_dict()
    if 'constructor' in optim_cfg:
        OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type=optim_cfg.pop('constructor'), optim_wrapper_cfg=optim_cfg))(model)
    roots = [model.get_submodule(path) for path in cfg.strategy.shard_modules]
    sharded = {id(p) for root in roots for p in root.parameters()}
    assert all(id(p) in sharded for p in model.parameters() if p.requires_grad)
    blocks = {type(m).__name__ for root in roots for m in root.modules()}
    assert set(cfg.strategy.block_classes) <= blocks


# ---------------------------------------------------------------------------------------------- through tools/
def _run(args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _train(config, work_dir, *options):
    return _run([sys.executable, 'tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options',
                 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2', *options])


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


@pytest.mark.slow
def test_controlnet_tiny_trains_validates_and_resumes_exactly(tmp_path):
    config = 'configs/debug/authface_controlnet_tiny.py'
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    log = _train(config, straight, 'train_cfg.max_iters=4')
    assert 'loss_facial_style' in log and 'loss_facial_disc' in log and 'PSNR' in log
    _train(config, resumed, 'train_cfg.max_iters=2')
    log = _train(config, resumed, 'train_cfg.max_iters=4', '--resume')
    assert 'resum' in log.lower()
    first, final = _weights(straight / 'iter_4.pth'), _weights(resumed / 'iter_4.pth')
    assert first.keys() == final.keys()
    prefixes = {'.'.join(k.split('.')[:2]) for k in first}
    assert prefixes == {'backbone.controlnet', 'facial_loss.discriminators'}  # trainable tensors only
    for key in first:
        assert torch.equal(first[key], final[key]), key
    assert any(not torch.equal(first[k], _weights(resumed / 'iter_2.pth')[k]) for k in first)
    # the test tool restores with the trained ControlNet (4-step DDIM) and scores
    out = _run([sys.executable, 'tools/test.py', config, str(straight / 'iter_4.pth'), '--work-dir',
                str(tmp_path / 'test')])
    assert 'PSNR' in out


@pytest.mark.slow
def test_stage1_tiny_and_the_one_step_hook_train_through_tools(tmp_path):
    log = _train('configs/debug/authface_finetune_tiny.py', tmp_path / 'stage1', 'train_cfg.max_iters=2',
                 'default_hooks.logger.interval=1')
    assert 'loss_noise' in log
    saved = _weights(tmp_path / 'stage1' / 'iter_2.pth')
    assert saved and all(k.startswith('backbone.unet.') for k in saved)  # the whole UNet, nothing frozen
    # stage II starts from it
    from portraitisr.registry import BACKBONES

    tiny = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'models' / 'tiny_sdxl.py'))
    backbone = BACKBONES.build(dict(tiny.tiny_sdxl_controlnet_backbone,
                                    unet_weights=str(tmp_path / 'stage1' / 'iter_2.pth')))
    assert torch.equal(backbone.unet.conv_in.weight, saved['backbone.unet.conv_in.weight'])
    log = _train('configs/debug/authface_headsup_tiny.py', tmp_path / 'headsup', 'train_cfg.max_iters=2',
                 'train_cfg.val_interval=100', 'default_hooks.logger.interval=1')
    assert 'loss_facial_adv' in log and 'loss_face_fid' in log
