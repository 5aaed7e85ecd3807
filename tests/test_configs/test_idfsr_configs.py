"""IDFSR configs (arXiv 2508.10937): the values the paper states, asserted per config with the section that states
them, and every IDFSR config built with tiny parts, trained one step and validated on real photos."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper

from portraitisr.models.backbones import DiffAEUNet
from portraitisr.registry import DATASETS, METRICS, MODELS
from tests.helpers.data_files import REPO_ROOT
from tests.helpers.tiny_config import SAMPLE_PORTRAITS, TINY_IDFSR_FACE, tiny_config

IDFSR = REPO_ROOT / 'configs' / 'idfsr'
CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in IDFSR.rglob('*.py')) + ['configs/debug/idfsr_tiny.py']

# (dotted key, value, where the IDFSR paper states it) for every paper config
PAPER_VALUES = [
    ('model.type', 'IDFSR', 'the method'),
    ('model.num_train_timesteps', 1000, 'section 3.3: maximum diffusion step T = 1000'),
    ('model.beta_start', 1e-4, 'section 3.3: linear beta schedule (DiffAE linear: 1e-4 .. 0.02 at T = 1000)'),
    ('model.beta_end', 0.02, 'section 3.3: linear beta schedule'),
    ('model.sample_steps', 20, 'section 3.3: DDIM sampling with 20 steps; Table 6: 20 NFEs'),
    ('model.unet.image_size', 256, 'Table 4 / appendix E.2: DiffAE-256 architecture'),
    ('model.unet.model_channels', 128, 'Table 4: base channels 128'),
    ('model.unet.channel_mult', (1, 1, 2, 2, 4, 4), 'Table 4: channel multipliers [1,1,2,2,4,4]'),
    ('model.unet.attention_resolutions', (16, ), 'Table 4: attention resolution [16]'),
    ('model.unet.enc_channel_mult', (1, 1, 2, 2, 4, 4, 4), 'Table 4: style encoder ch. mult. [1,1,2,2,4,4,4]'),
    ('model.unet.enc_attn_resolutions', (16, ), 'Table 4: style enc. attn. resolution [16]'),
    ('model.unet.enc_out_channels', 512, 'Table 4: z_s size 512'),
    ('optim_wrapper.optimizer.type', 'Adam', 'Table 4: Adam'),
    ('optim_wrapper.optimizer.lr', 1e-4, 'Table 4: learning rate 1e-4'),
    ('optim_wrapper.optimizer.weight_decay', 0, 'Table 4: no weight decay'),
    ('train_dataloader.batch_size', 24, 'Table 4 and appendix E.2: batch size 24 per GPU'),
    ('num_gpus', 4, 'appendix E.2: four NVIDIA 3090 GPUs'),
    ('identity_fitting.lr', 1e-4, 'section 3.3: both stages share the training hyper-parameters'),
]
# the full method (sections 3.1-3.3, appendix E.1-E.2)
FULL_METHOD = [
    ('model.unet.in_channels', 6, 'appendix E.2: 6 input channels (noise + masked LR)'),
    ('model.unet.attention', 'identity', 'appendix E.2: self-attention replaced by cross-attention on ID'),
    ('model.unet.id_channels', 512, 'Table 4: z_id size 512'),
    ('model.identity_embedder.extractor.type', 'ArcFaceIResNet', 'Table 4: pretrained ArcFace ID encoder'),
    ('model.lr_condition', 'masked', 'section 3.1: the facial region of I_L is masked'),
    ('model.style_source', 'warped_reference', 'section 3.1: z_s = E_s(I_W)'),
    ('model.warper.transform', 'piecewise_affine', 'appendix E.1: PiecewiseAffineTransform'),
]
SPECIFIC = {
    'configs/idfsr/idfsr_x8_celebref.py': [
        ('train_dataloader.dataset.scale', 8, 'Table 1: x8'), ('test_dataloader.dataset.scale', 8, 'Table 1: x8'),
        ('model.test_identity', 'reference', 'section 4.1: reference ID embeddings in the pretrained (PT) rows'),
        ('model.init_weights', 'diffae_ffhq256_autoenc.ckpt', 'section 3.3: initialized with DiffAE weights')],
    'configs/idfsr/idfsr_x16_celebref.py': [
        ('train_dataloader.dataset.scale', 16, 'Table 1: x16'), ('test_dataloader.dataset.scale', 16, 'Table 1: x16'),
        ('model.init_weights', 'diffae_ffhq256_autoenc.ckpt', 'section 3.3: initialized with DiffAE weights')],
    'configs/idfsr/idfsr_x8_celebref_ft.py': [
        ('test_dataloader.dataset.scale', 8, 'Table 1: x8'),
        ('model.test_identity', 'fitted', 'section 3.3: fine-tuned ID embedding (FT rows)')],
    'configs/idfsr/idfsr_x16_celebref_ft.py': [
        ('test_dataloader.dataset.scale', 16, 'Table 1: x16'),
        ('model.test_identity', 'fitted', 'section 3.3: fine-tuned ID embedding (FT rows)')],
    'configs/idfsr/idfsr_x16_celebref_multiref.py': [
        ('multi_reference.counts', tuple(range(2, 11)), 'section 5.3: from 2 to 10 reference images'),
        ('multi_reference.min_images', 11, 'section 5.3: IDs with more than 10 images'),
        ('multi_reference.num_identities', 10, 'section 5.3 / Fig. 7: 10 identities'),
        ('model.test_identity', 'fitted', 'section 5.3: fine-tuning on the reference images')],
}
# section 5.4 (Fig. 8) component analysis: (lr_condition, style_source, identity, UNet in_channels)
COMPONENTS = {
    'case1_lr_concat.py': ('full', 'none', False, 6),           # LR concatenated with the noise (SR3 / SRDiff)
    'case2_masked_lr.py': ('masked', 'none', False, 6),         # the LR masked before the concatenation
    'case3_feature_conditioning.py': ('none', 'lr', False, 3),  # feature-based conditioning (DiffAE / SD)
    'case4_no_identity.py': ('masked', 'warped_reference', False, 6),  # default without the ID embedding
    'case5_no_style.py': ('masked', 'none', True, 6),           # default without the style embedding
}
TABLE1_METRICS = {'PSNR', 'SSIM', 'LPIPS', 'FID', 'CLIPIQA', 'MUSIQ', 'IDS'}


def _get(cfg, key):
    value = cfg
    for part in key.split('.'):
        value = value[part]
    return tuple(value) if isinstance(value, list) else value


def _paper_configs():
    return [c for c in CONFIGS if c.startswith('configs/idfsr/')]


@pytest.mark.parametrize('config', _paper_configs())
def test_paper_values(config):
    cfg = Config.fromfile(REPO_ROOT / config)
    checks = list(PAPER_VALUES) + SPECIFIC.get(config, [])
    name = Path(config).name
    if name in COMPONENTS:
        lr_condition, style, identity, in_channels = COMPONENTS[name]
        checks += [('model.lr_condition', lr_condition, f'section 5.4: {name}'),
                   ('model.style_source', style, f'section 5.4: {name}'),
                   ('model.unet.in_channels', in_channels, f'section 5.4: {name}'),
                   ('model.unet.attention', 'identity' if identity else 'self', f'section 5.4: {name}')]
        assert (cfg.model.identity_embedder is not None) == identity, name
    else:
        checks += FULL_METHOD
    for key, value, where in checks:
        assert _get(cfg, key) == value, f'{config}: {key} should be {value!r} ({where}), got {_get(cfg, key)!r}'
    # Table 1's columns on every test set (IDV, Table 2, at x16)
    for test_set in cfg.test_sets:
        metrics = {e['type'] for e in test_set['evaluator']}
        assert metrics >= (TABLE1_METRICS if 'multiref' not in config else {'PSNR', 'SSIM', 'LPIPS', 'IDS'})
        if 'x16' in config and 'multiref' not in config:
            assert 'FaceVerificationAccuracy' in metrics, 'Table 2 (IDV) is measured at x16'
        assert all(METRICS.get(e['type']) for e in test_set['evaluator'])
        assert test_set['dataloader']['dataset']['scale'] == cfg.test_dataloader.dataset.scale


def test_the_config_network_is_diffae256_with_idfsr_changes():
    cfg = Config.fromfile(IDFSR / 'idfsr_x8_celebref.py')
    with torch.device('meta'):
        unet = DiffAEUNet(**{k: v for k, v in cfg.model.unet.items() if k != 'type'})
    assert unet.input_blocks[0][0].in_channels == 6 and unet.encoder.input_blocks[0][0].in_channels == 3
    params = sum(p.numel() for p in unet.parameters())
    assert params == 168_495_747  # DiffAE-256's 168,492,291 + 3 input channels x 128 filters x 9 (no other)


# ---------------------------------------------------------------------------------------------------- whole configs
def _tiny(config: str, tmp_path: Path) -> dict:
    """The config's model with the whole-config tests' tiny parts (``TINY_SUBSTITUTIONS`` of
    tests/helpers/tiny_config.py): a small DiffAE UNet (its switches kept), dlib's identity network, a DiffAE checkpoint
    of the small UNet's shape for the initialisation, fitted identities for the sample photos, 2 DDIM steps."""
    return tiny_config(REPO_ROOT / config, tmp_path).model


@pytest.mark.slow
@pytest.mark.parametrize('config', CONFIGS)
def test_every_config_trains_and_validates_with_tiny_parts(config, tmp_path):
    cfg = Config.fromfile(REPO_ROOT / config)
    torch.manual_seed(0)
    np.random.seed(0)
    model = MODELS.build(_tiny(config, tmp_path))
    if cfg.model.get('init_weights') is not None:
        assert model.init_report is not None and model.init_report.copied
    geometry = dict(type='IdentityFaceDataset', manifest=SAMPLE_PORTRAITS, size=TINY_IDFSR_FACE,
                    scale=min(cfg.train_dataloader.dataset.get('scale', 8), 16))
    train = DATASETS.build(dict(geometry, ref_jitter=(5, 0.05, 0.02), flip=True))
    optim = OptimWrapper(torch.optim.Adam(model.parameters(), lr=cfg.optim_wrapper.optimizer.lr))
    log = model.train_step(pseudo_collate([train[0], train[1]]), optim)
    assert torch.isfinite(log['loss'].detach()) and float(log['loss'].detach()) > 0
    val = DATASETS.build(dict(geometry, ref_choice='next'))
    items = [val[0], val[1]]
    outputs = model.val_step(pseudo_collate(items))
    for item, output in zip(items, outputs):
        assert torch.equal(output['gt'], item['gt'])  # scored against the dataset's GT, unchanged
        assert output['pred'].shape == item['gt'].shape and 0 <= float(output['pred'].min())
