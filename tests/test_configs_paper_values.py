"""The values the papers state, asserted per config: one row per value, with the sentence or code that states it.

Paper 000 is HeadsUp ("HeadsUp! High-Fidelity Portrait Image Super-Resolution"), paper 002 PortraitSR; OSEDiff's
values come from its code (shared/reference/osediff.md, cswry/OSEDiff @fcc4f09), which HeadsUp follows ("the rest
weights are derived from OSEDiff", paper 000 section 4.1). Every config outside ``configs/debug/`` must match at
least one row, so a new paper config cannot arrive without its paper values being checked.
"""
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Union

import pytest
from mmengine.config import Config

from portraitisr.datasets.degradations import PRESETS
from .conftest import SHARED
from .helpers.tiny_config import CONFIG_ROOT, config_id, discover_configs

# paper 000, appendix B "Backbone Settings", quoted
HEADSUP_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, '
                           'unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, '
                           'signature, jpeg artifacts, deformed, lowres, over-smooth')
# cswry/OSEDiff README training command (shared/reference/osediff.md section 2): "oil painting" twice
OSEDIFF_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, '
                           'CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, '
                           'frames, watermark, signature, jpeg artifacts, deformed, lowres, over-smooth')
OSEDIFF_FACE_NEGATIVE_PROMPT = ('blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, '
                                'jpeg artifacts, deformed, lowres, over-smooth')


@dataclass(frozen=True)
class PaperValue:
    """``configs`` (fnmatch patterns relative to configs/) must have ``key`` (a dotted path; ``[i]`` indexes lists)
    equal to ``expected``, or, when ``expected`` is callable, ``expected(value)`` true."""

    configs: Union[str, tuple]
    key: str
    expected: Any
    source: str

    def applies_to(self, config: str) -> bool:
        patterns = (self.configs, ) if isinstance(self.configs, str) else self.configs
        return any(fnmatch.fnmatch(config, pattern) for pattern in patterns)


HEADSUP = 'headsup/*.py'  # fnmatch's * crosses '/': the paper config and every Table 4 ablation
HEADSUP_FULL = 'headsup/headsup_sd21.py'
OSEDIFF = 'osediff/osediff*sd21.py'
PORTRAITSR = 'portraitsr/portraitsr_x[48]_celeba.py'
BLENDING = 'blending/*.py'
OSEDIFF_CODE = 'OSEDiff code (shared/reference/osediff.md section 2, train_osediff.py)'
FROM_OSEDIFF = 'paper 000 section 4.1: "the rest weights are derived from OSEDiff" + ' + OSEDIFF_CODE


def names_of_test_sets(cfg: Config) -> List[str]:
    return [entry['name'] for entry in cfg.test_sets]


def first_test_set_metrics(cfg: Config) -> List[str]:
    return [metric['type'] for metric in cfg.test_sets[0]['evaluator']]


def portrait_lq_side(cfg: Config) -> int:
    """The PortraitSR-4K-Te LQ side: test crop / scale of the evaluation degradation."""
    degradation = cfg.model.data_preprocessor.get('eval_degradation') or cfg.model.data_preprocessor.degradation
    preset = PRESETS[degradation['preset'] if isinstance(degradation, dict) else degradation]
    return cfg.test_dataloader.dataset.crop_size // preset['scale']


PAPER_VALUES: List[PaperValue] = [
    # ---------------------------------------------------------------- HeadsUp (paper 000) and its Table 4 rows
    PaperValue(HEADSUP, 'model.type', 'HeadsUp', 'paper 000 section 2.4'),
    PaperValue(HEADSUP, 'model.backbone.lora_rank', 4, 'paper 000 section 4.1: "The LoRA rank for all modules is set '
               'to 4"'),
    PaperValue(HEADSUP, 'model.regularizer.lora_rank', 4, 'paper 000 section 4.1 (all modules: rank 4)'),
    PaperValue(HEADSUP, 'model.backbone.in_channels', 9, 'paper 000 appendix B: "a nine-channel input"'),
    PaperValue(HEADSUP, 'model.backbone.timestep', 999, 'paper 000 section 2.4 (one step, following OSEDiff) + '
               'OSEDiff code (osediff.md section 1: timestep fixed at 999)'),
    PaperValue(HEADSUP, 'optim_wrapper.backbone.optimizer.type', 'AdamW', 'paper 000 section 4.1: "AdamW"'),
    PaperValue(HEADSUP, 'optim_wrapper.backbone.optimizer.lr', 5e-5, 'paper 000 section 4.1: "learning rate of '
               '5x10^-5"'),
    PaperValue(HEADSUP, 'optim_wrapper.regularizer.optimizer.lr', 5e-5, 'paper 000 section 4.1'),
    PaperValue(HEADSUP, 'model.l2_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.lpips_loss.loss_weight', 2.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.lpips_loss.net', 'vgg', FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.vsd_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.regularizer_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.regularizer.cfg_scale', 7.5, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.negative_prompt', HEADSUP_NEGATIVE_PROMPT, 'paper 000 appendix B "Backbone Settings"'),
    PaperValue(HEADSUP, 'model.face_aligner.template', 'ffhq512', 'paper 000 appendix B "Face Alignment" (FaceLib '
               'following CodeFormer: the FFHQ template)'),
    PaperValue(HEADSUP, 'model.face_aligner.estimator', 'lmeds', 'paper 000 appendix B: "estimateAffinePartial2D"'),
    PaperValue(HEADSUP, 'train_cfg.max_iters', 150000, 'paper 000 appendix B: "150k steps in two stages"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[0].iters', 40000, 'paper 000 appendix B: "The first '
               'consists of 40k steps"'),
    PaperValue(HEADSUP, 'train_dataloader.dataset.names', ['portraitsr4k', 'ffhq', 'lsdir', 'div2k'],
               'paper 000 appendix B: "PortraitSR-4K: ffhq: lsdir: div2k"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[0].ratios', [0.15, 0.05, 1.7, 0.3],
               'paper 000 appendix B: "0.15:0.05:1.7:0.3"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[1].ratios', [1.5, 0.5, 1.7, 0.3],
               'paper 000 appendix B: "1.5:0.5:1.7:0.3"'),
    *[PaperValue(HEADSUP, f'train_dataloader.dataset.datasets[{i}].crop_size', 1024,
                 'paper 000 section 4.1: "The training resolution is at 1024x1024"') for i in range(4)],
    PaperValue(HEADSUP, 'test_dataloader.dataset.crop_size', 1024, 'paper 000 appendix B: "The training and '
               'inference resolution is at 1024x1024"'),
    PaperValue(HEADSUP, portrait_lq_side, 256, 'paper 000 section 4.1: "PortraitSR-4K-Te, with the input resolution at '
               '256x256"'),
    PaperValue(HEADSUP, 'model.data_preprocessor.degradation', 'osediff', 'paper 000 section 4.1: "derived from '
               'Real-ESRGAN" as OSEDiff runs it (no USM: OSEDiff dataloaders/realesrgan.py)'),
    PaperValue((HEADSUP_FULL, 'headsup/ablations/headsup_sd21_id_only.py', 'headsup/ablations/headsup_sd21_no_ref.py'),
               'model.identity_loss.extractor.weights', lambda w: w.startswith('cvlface'),
               'paper 000 section 4.1: "The face extractor is set as CVLFace"'),
    PaperValue(HEADSUP, 'test_sets[0].name', 'PortraitSR-4K-Te', 'paper 000 sections 4.2 (Table 2) and 4.4 '
               '(Table 4)'),
    PaperValue(HEADSUP, first_test_set_metrics, lambda names: 'IDScore' in names, 'paper 000 section 4.1: "the '
               'similarity score as defined in Eq. 4"'),
    # row 5 (the full model) and Tables 1-3
    PaperValue(HEADSUP_FULL, 'model.face_fidelity_loss.loss_weight', 1.0, 'paper 000 section 4.1: lambda^fid = 1'),
    PaperValue(HEADSUP_FULL, 'model.face_fidelity_loss.lpips_weight', 0.8, 'paper 000 section 4.1: '
               'lambda_LPIPS = 0.8'),
    PaperValue(HEADSUP_FULL, 'model.identity_loss.loss_weight', 4.0, 'paper 000 section 4.1: lambda^id = 4'),
    PaperValue(HEADSUP_FULL, 'model.ref_dropout', 0.2, 'paper 000 appendix B: "The probability of dropping the '
               'reference image in both stages is 0.2"'),
    PaperValue(HEADSUP_FULL, 'model.use_reference_at_test', True, 'paper 000 Table 4 row 5 (w/ x_r)'),
    PaperValue(HEADSUP_FULL, 'model.discriminator.type', 'FacePatchDiscriminator', 'paper 000 section 2.3: '
               'L_F^adv'),
    PaperValue(HEADSUP_FULL, 'test_sets[1].dataloader.dataset.upscale', 4, 'paper 000 section 4.1: GISR LQ 128, '
               'HQ 512'),
    PaperValue(HEADSUP_FULL, names_of_test_sets,
               ['PortraitSR-4K-Te', 'DIV2K', 'RealSR', 'DRealSR', 'CelebA-Test'],
               'paper 000 section 4.1 "Testing" (Tables 1-3)'),
    # Table 4 rows 1-4: the ablated terms; every ablation trains and tests without references
    PaperValue('headsup/ablations/*.py', 'model.ref_dropout', 1.0, 'paper 000 Table 4: rows 1-4 without x_r'),
    PaperValue('headsup/ablations/*.py', 'model.use_reference_at_test', False, 'paper 000 Table 4: rows 1-4'),
    PaperValue('headsup/ablations/*.py', names_of_test_sets, ['PortraitSR-4K-Te'],
               'paper 000 Table 4 (PortraitSR-4K-Te)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses*.py', 'model.face_fidelity_loss', None,
               'paper 000 Table 4 row 1'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses*.py', 'model.identity_loss', None,
               'paper 000 Table 4 row 1'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses.py', 'model.discriminator', None,
               'paper 000 section 4.4: "without face-aware supervision (first row)"; L_F includes L_F^adv '
               '(section 2.3)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses.py', 'optim_wrapper.discriminator', None,
               'paper 000 section 4.4 (no discriminator, no optimiser)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses_keep_adv.py', 'model.adversarial_loss.loss_weight',
               0.1, 'the other reading of Table 4 row 1: the full model\'s adversarial term kept'),
    PaperValue('headsup/ablations/headsup_sd21_fid_only.py', 'model.face_fidelity_loss.loss_weight', 1.0,
               'paper 000 Table 4 row 2 + section 4.1'),
    PaperValue('headsup/ablations/headsup_sd21_fid_only.py', 'model.identity_loss', None, 'paper 000 Table 4 row 2'),
    PaperValue('headsup/ablations/headsup_sd21_id_only.py', 'model.identity_loss.loss_weight', 4.0,
               'paper 000 Table 4 row 3 + section 4.1'),
    PaperValue('headsup/ablations/headsup_sd21_id_only.py', 'model.face_fidelity_loss', None,
               'paper 000 Table 4 row 3'),
    PaperValue('headsup/ablations/headsup_sd21_no_ref.py', 'model.face_fidelity_loss.loss_weight', 1.0,
               'paper 000 Table 4 row 4'),
    PaperValue('headsup/ablations/headsup_sd21_no_ref.py', 'model.identity_loss.loss_weight', 4.0,
               'paper 000 Table 4 row 4'),
    # ---------------------------------------------------------------- OSEDiff and OSEDiff_Face (reference code)
    PaperValue(OSEDIFF, 'model.type', 'OSEDiff', OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'model.backbone.lora_rank', 4, 'OSEDiff code (osediff.md section 1: rank 4 everywhere)'),
    PaperValue(OSEDIFF, 'model.backbone.lora_alpha', 8, 'OSEDiff code (osediff.md section 1: peft default 8)'),
    PaperValue(OSEDIFF, 'model.backbone.timestep', 999, 'OSEDiff code (osediff.md section 1)'),
    PaperValue(OSEDIFF, 'model.regularizer.cfg_scale', 7.5, OSEDIFF_CODE + ': CFG 7.5'),
    PaperValue(OSEDIFF, 'model.regularizer.vsd_timesteps', [20, 980], OSEDIFF_CODE + ': t ~ randint(20, 980)'),
    PaperValue(OSEDIFF, 'model.l2_weight', 1.0, OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'model.lpips_loss.loss_weight', 2.0, OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'model.lpips_loss.net', 'vgg', OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'model.vsd_weight', 1.0, OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'model.regularizer_weight', 1.0, OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'optim_wrapper.backbone.optimizer',
               dict(type='AdamW', lr=5e-5, betas=[0.9, 0.999], weight_decay=1e-2, eps=1e-8), OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'optim_wrapper.backbone.clip_grad.max_norm', 1.0, OSEDIFF_CODE),
    PaperValue(OSEDIFF, 'train_dataloader.batch_size', 4, OSEDIFF_CODE + ': 4 per GPU x 4 GPUs'),
    PaperValue(OSEDIFF, 'randomness.seed', 123, OSEDIFF_CODE + ': seed 123'),
    PaperValue(OSEDIFF, 'train_cfg.max_iters', 14000, 'OSEDiff issue #58 (osediff.md section 2: ~14k iterations)'),
    PaperValue('osediff/osediff_sd21.py', 'model.negative_prompt', OSEDIFF_NEGATIVE_PROMPT,
               'OSEDiff README training command (osediff.md section 2)'),
    PaperValue('osediff/osediff_sd21.py', 'model.data_preprocessor.degradation', 'osediff',
               'OSEDiff dataloaders/params_realesrgan.yml without USM (degradation_metrics.md section 1c)'),
    PaperValue('osediff/osediff_sd21.py', 'train_dataloader.dataset.crop_size', 512, OSEDIFF_CODE + ': 512 crops'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.negative_prompt', OSEDIFF_FACE_NEGATIVE_PROMPT,
               'OSEDiff face run (osediff.md section 2)'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.data_preprocessor.degradation', 'codeformer_face',
               'OSEDiff train_osediff_face.py: params_codeformer.yml (osediff.md section 2)'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.color_fix', None, 'OSEDiff face mode: nofix (osediff.md '
               'section 1)'),
    PaperValue('osediff/osediff_face_sd21.py', 'train_dataloader.dataset.resize', 512, 'OSEDiff facesr_dataset.py: '
               'FFHQ at 512'),
    # ---------------------------------------------------------------- blending baselines of paper 000
    PaperValue(BLENDING, 'model.type', 'BlendingRestorer', 'paper 000 section 4.1 "Baselines": blending approaches'),
    PaperValue(BLENDING, 'model.upscale', 4, 'paper 000 section 4.1: 256x256 inputs, 1024x1024 outputs'),
    PaperValue(BLENDING, 'test_sets[0].name', 'PortraitSR-4K-Te', 'paper 000 section 4.2 (Table 2)'),
    PaperValue('blending/realesrgan_codeformer.py', 'model.general_restorer.type', 'RealESRGANRestorer',
               'paper 000 section 4.1: "Real-ESRGAN + CodeFormer"'),
    PaperValue('blending/realesrgan_codeformer.py', 'model.face_restorer.type', 'CodeFormerRestorer',
               'paper 000 section 4.1'),
    PaperValue('blending/osediff_osediff_face.py', 'model.general_restorer.checkpoint', 'osediff.pkl',
               'paper 000 section 4.1: "OSEDiff + OSEDiff_Face"'),
    PaperValue('blending/osediff_osediff_face.py', 'model.face_restorer.checkpoint', 'osediff_face.pkl',
               'paper 000 section 4.1'),
    # ---------------------------------------------------------------- PortraitSR (paper 002)
    PaperValue(PORTRAITSR, 'model.type', 'PortraitSR', 'paper 002'),
    PaperValue(PORTRAITSR, 'optim_wrapper.optimizer', dict(type='Adam', lr=2e-4, betas=[0.9, 0.99]),
               'paper 002 "Implementation Details": Adam, beta1 0.9, beta2 0.99, initial learning rate 2x10^-4'),
    PaperValue(PORTRAITSR, 'model.generator.dict_size', 512, 'paper 002 "Implementation Details": N = 512'),
    PaperValue(PORTRAITSR, 'model.generator.dict_channels', 384, 'paper 002 "Implementation Details": C = 384'),
    PaperValue(PORTRAITSR, 'model.generator.dict_init_std', 0.02, 'paper 002 "Implementation Details": delta 0.02'),
    PaperValue(PORTRAITSR, 'model.perceptual_loss.loss_weight', 0.1, 'paper 002 "Implementation Details": weights '
               '0.1, 0.005, 0.5 and 0.001'),
    PaperValue(PORTRAITSR, 'model.parsing_weight', 0.005, 'paper 002 "Implementation Details"'),
    PaperValue(PORTRAITSR, 'model.reconstruction_weight', 0.5, 'paper 002 "Implementation Details"'),
    PaperValue(PORTRAITSR, 'model.dictionary_weight', 0.001, 'paper 002 "Implementation Details"'),
    PaperValue(PORTRAITSR, 'model.pixel_weight', 1.0, 'paper 002 Eq. 15 (L_1 unweighted)'),
    PaperValue(PORTRAITSR, 'train_dataloader.dataset.size', 128, 'paper 002 "Datasets": 128x128 GT'),
    PaperValue('portraitsr/portraitsr_x8_celeba.py', 'train_dataloader.dataset.scale', 8, 'paper 002 "Datasets": '
               '16x16 inputs (x8)'),
    PaperValue('portraitsr/portraitsr_x4_celeba.py', 'train_dataloader.dataset.scale', 4, 'paper 002 "Datasets": '
               '32x32 inputs (x4)'),
    PaperValue(PORTRAITSR, names_of_test_sets, ['CelebA', 'Helen'],
               'paper 002 "Datasets": evaluated on CelebA and Helen'),
    PaperValue(PORTRAITSR, first_test_set_metrics, ['PSNR', 'SSIM', 'LPIPS'],
               'paper 002 "Datasets": PSNR, SSIM and LPIPS'),
]


def _lookup(cfg: Config, key: Union[str, Callable]) -> Any:
    if callable(key):
        return key(cfg)
    value: Any = cfg
    for part in re.findall(r'[^.\[\]]+|\[\d+\]', key):
        if part.startswith('['):
            value = value[int(part[1:-1])]
        else:
            if part not in value:
                raise KeyError(f'{key}: no {part!r}')
            value = value[part]
    return value


def _plain(value: Any) -> Any:
    """ConfigDicts as dicts, tuples as lists: compare the values, not the containers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


CONFIGS = [config_id(p) for p in discover_configs()]
CASES = [(config, row) for row in PAPER_VALUES for config in CONFIGS if row.applies_to(config)]


def _case_id(case) -> str:
    config, row = case
    return f'{config}:{row.key if isinstance(row.key, str) else row.key.__name__}'


@pytest.fixture(scope='module')
def configs():
    return {}


@pytest.mark.parametrize('case', CASES, ids=[_case_id(c) for c in CASES])
def test_config_states_the_paper_value(case, configs):
    config, row = case
    if config not in configs:
        configs[config] = Config.fromfile(str(CONFIG_ROOT / config))
    value = _plain(_lookup(configs[config], row.key))
    if callable(row.expected):
        assert row.expected(value), f'{config}: {row.key} = {value!r} does not satisfy {row.source}'
    else:
        assert value == _plain(row.expected), f'{config}: {row.key} = {value!r}, {row.source} says {row.expected!r}'


def test_every_row_applies_to_a_config():
    """A row whose pattern matches nothing checks nothing: a renamed config would silently escape."""
    assert [row for row in PAPER_VALUES if not any(row.applies_to(c) for c in CONFIGS)] == []


def test_every_paper_config_is_checked_against_its_paper():
    """Configs outside debug/ reproduce a paper: each must have its stated values in PAPER_VALUES."""
    unchecked = [c for c in CONFIGS if not c.startswith('debug/') and not any(r.applies_to(c) for r in PAPER_VALUES)]
    assert unchecked == [], f'add the paper values of {unchecked} to PAPER_VALUES in {__file__}'


def test_quoted_strings_are_the_papers_own():
    """The negative prompt above is the paper's sentence, verbatim (whitespace normalised)."""
    paper = SHARED / 'papers' / '000_29afdb085c78016c.txt'
    if not paper.is_file():
        pytest.skip('../shared/papers is not available')
    text = ' '.join(paper.read_text(encoding='utf-8').split())
    assert f'"{HEADSUP_NEGATIVE_PROMPT}"' in text
    assert 'The LoRA rank for all modules is set to 4' in text
    assert 'The probability of dropping the reference image in both stages is 0.2' in text
