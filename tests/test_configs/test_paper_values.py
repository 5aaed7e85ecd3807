"""The values the papers state, asserted per config: one row per value, with the sentence or code that states it.

The papers: HeadsUp ("HeadsUp! High-Fidelity Portrait Image Super-Resolution", arXiv 2510.09924), PortraitSR
("PortraitSR: Artist-Inspired Prior Learning for Progressive Face Super-Resolution", AAAI 2026), IDFSR ("Personalized
Face Super-Resolution with Identity Decoupling and Fitting", arXiv 2508.10937) and AuthFace (arXiv 2410.09864).
OSEDiff's values come from its code (cswry/OSEDiff @fcc4f09), which HeadsUp follows ("the rest weights are derived from
OSEDiff", HeadsUp section 4.1); PiSA-SR's from its code (csslc/PiSA-SR @9c76e12). Every config outside
``configs/debug/`` must match at least one row, so a new paper config cannot arrive without its paper values being
checked.
"""
import fnmatch
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Union

import pytest
from mmengine.config import Config

from portraitisr.degradations import PRESETS
from portraitisr.models.backbones import DiffAEUNet
from portraitisr.models.face_sr.portraitsr_net import PortraitSRNet
from tests.helpers.data_files import require_paper_text
from tests.test_configs.test_authface_configs import PAPER_VALUES as AUTHFACE_PAPER_VALUES
from tests.helpers.tiny_config import CONFIG_ROOT, config_id, discover_configs

# HeadsUp, appendix B "Backbone Settings", quoted
HEADSUP_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, '
                           'unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, '
                           'signature, jpeg artifacts, deformed, lowres, over-smooth')
# cswry/OSEDiff @fcc4f09, README training command and scripts/train/train_osediff.sh: `--neg_prompt`, quoted (the
# same string as HeadsUp's; "oil painting" once)
OSEDIFF_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, '
                           'unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, '
                           'signature, jpeg artifacts, deformed, lowres, over-smooth')
# csslc/PiSA-SR src/my_utils/training_utils.py: `--neg_prompt_csd` default, quoted ("oil painting" twice)
PISASR_NEGATIVE_PROMPT = ('painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, '
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
PORTRAITSR_X8 = ('portraitsr/portraitsr_x8_celeba.py', 'portraitsr/ablations/*.py')  # every ablation is x8
PORTRAITSR_ALL = (PORTRAITSR, 'portraitsr/ablations/*.py')
PISASR_CODE = 'PiSA-SR code (csslc/PiSA-SR @9c76e12)'
BLENDING = 'blending/*.py'
OSEDIFF_CODE = 'OSEDiff code (cswry/OSEDiff @fcc4f09: train_osediff.py, osediff.py, README training command)'
FROM_OSEDIFF = 'HeadsUp section 4.1: "the rest weights are derived from OSEDiff" + ' + OSEDIFF_CODE


# IDFSR: fnmatch's * crosses '/', so IDFSR_ALL includes the section 5.4 component-analysis configs
IDFSR_ALL = 'idfsr/*.py'
IDFSR_FULL = 'idfsr/idfsr_*.py'  # the full method: the x8 / x16 pretraining and fine-tuned (FT) rows, multi-reference
IDFSR_PT = ('idfsr/idfsr_x8_celebref.py', 'idfsr/idfsr_x16_celebref.py')
IDFSR_FT = 'idfsr/idfsr_x*_celebref_ft.py'
IDFSR_TABLE1 = (*IDFSR_PT, IDFSR_FT)
IDFSR_CASES = 'idfsr/component_analysis/'
IDFSR_S33 = ('IDFSR section 3.3: "Both stages share the same training hyperparameters: a maximum diffusion step of '
             '$T = 1000$, a linear β schedule, and DDIM sampling with 20 steps during inference"')
IDFSR_E2 = 'IDFSR appendix E.2'
IDFSR_T4 = 'IDFSR Table 4 (IDFSR architecture)'
IDFSR_METRICS = ('PSNR', 'SSIM', 'LPIPS', 'FID', 'CLIPIQA', 'MUSIQ', 'IDS')


def names_of_test_sets(cfg: Config) -> List[str]:
    return [entry['name'] for entry in cfg.test_sets]


def first_test_set_metrics(cfg: Config) -> List[str]:
    return [metric['type'] for metric in cfg.test_sets[0]['evaluator']]


def generator_switches(cfg: Config) -> dict:
    """PortraitSR's ablation switches (PortraitSR Tables 2-5); those a config leaves out take PortraitSRNet's
    defaults (which must be the full model's)."""
    defaults = inspect.signature(PortraitSRNet.__init__).parameters
    return {name: cfg.model.generator.get(name, defaults[name].default)
            for name in ('structure_prior', 'texture_prior', 'holistic_fusion', 'decoder_structure_layers')}


def idfsr_unet_use_style(cfg: Config) -> bool:
    """Whether IDFSR's UNet takes the style embedding (a config that leaves ``use_style`` out takes DiffAEUNet's
    default)."""
    return cfg.model.unet.get('use_style', inspect.signature(DiffAEUNet.__init__).parameters['use_style'].default)


def portrait_lq_side(cfg: Config) -> int:
    """The PortraitSR-4K-Te LQ side: test crop / scale of the evaluation degradation."""
    degradation = cfg.model.data_preprocessor.get('eval_degradation') or cfg.model.data_preprocessor.degradation
    preset = PRESETS[degradation['preset'] if isinstance(degradation, dict) else degradation]
    return cfg.test_dataloader.dataset.crop_size // preset['scale']


PAPER_VALUES: List[PaperValue] = [
    # ---------------------------------------------------------------- HeadsUp and its Table 4 rows
    PaperValue(HEADSUP, 'model.type', 'HeadsUp', 'HeadsUp section 2.4'),
    PaperValue(HEADSUP, 'model.prompter.tagger.type', 'DAPETagger', 'HeadsUp section 4.1: "For the text prompt '
               'extractor, we adopt the DAPE module"'),
    PaperValue(HEADSUP, 'model.prompter.use_gt_in_training', False, 'HeadsUp section 3 "Overview": '
               'x_H = G(x_L, x_r, M, T(x_L)), the text extractor reads the LQ'),
    PaperValue(HEADSUP, 'model.backbone.lora_rank', 4, 'HeadsUp section 4.1: "The LoRA rank for all modules is set '
               'to 4"'),
    PaperValue(HEADSUP, 'model.regularizer.lora_rank', 4, 'HeadsUp section 4.1 (all modules: rank 4)'),
    PaperValue(HEADSUP, 'model.backbone.in_channels', 9, 'HeadsUp appendix B: "a nine-channel input"'),
    PaperValue(HEADSUP, 'model.backbone.timestep', 999, 'HeadsUp section 2.4 (one step, following OSEDiff) + '
               'OSEDiff code (osediff.py: timestep fixed at 999)'),
    PaperValue(HEADSUP, 'optim_wrapper.backbone.optimizer.type', 'AdamW', 'HeadsUp section 4.1: "AdamW"'),
    PaperValue(HEADSUP, 'optim_wrapper.backbone.optimizer.lr', 5e-5, 'HeadsUp section 4.1: "learning rate of '
               '5x10^-5"'),
    PaperValue(HEADSUP, 'optim_wrapper.regularizer.optimizer.lr', 5e-5, 'HeadsUp section 4.1'),
    PaperValue(HEADSUP, 'model.l2_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.lpips_loss.loss_weight', 2.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.lpips_loss.net', 'vgg', FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.vsd_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.regularizer_weight', 1.0, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.regularizer.cfg_scale', 7.5, FROM_OSEDIFF),
    PaperValue(HEADSUP, 'model.negative_prompt', HEADSUP_NEGATIVE_PROMPT, 'HeadsUp appendix B "Backbone Settings"'),
    PaperValue(HEADSUP, 'model.face_aligner.template', 'ffhq512', 'HeadsUp appendix B "Face Alignment" (FaceLib '
               'following CodeFormer: the FFHQ template)'),
    PaperValue(HEADSUP, 'model.face_aligner.estimator', 'lmeds', 'HeadsUp appendix B: "estimateAffinePartial2D"'),
    PaperValue(HEADSUP, 'train_cfg.max_iters', 150000, 'HeadsUp appendix B: "150k steps in two stages"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[0].iters', 40000, 'HeadsUp appendix B: "The first '
               'consists of 40k steps"'),
    PaperValue(HEADSUP, 'train_dataloader.dataset.names', ['portraitsr4k', 'ffhq', 'lsdir', 'div2k'],
               'HeadsUp appendix B: "PortraitSR-4K: ffhq: lsdir: div2k"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[0].ratios', [0.15, 0.05, 1.7, 0.3],
               'HeadsUp appendix B: "0.15:0.05:1.7:0.3"'),
    PaperValue(HEADSUP, 'train_dataloader.sampler.stages[1].ratios', [1.5, 0.5, 1.7, 0.3],
               'HeadsUp appendix B: "1.5:0.5:1.7:0.3"'),
    *[PaperValue(HEADSUP, f'train_dataloader.dataset.datasets[{i}].crop_size', 1024,
                 'HeadsUp section 4.1: "The training resolution is at 1024x1024"') for i in range(4)],
    PaperValue(HEADSUP, 'test_dataloader.dataset.crop_size', 1024, 'HeadsUp appendix B: "The training and '
               'inference resolution is at 1024x1024"'),
    PaperValue(HEADSUP, portrait_lq_side, 256, 'HeadsUp section 4.1: "PortraitSR-4K-Te, with the input resolution at '
               '256x256"'),
    PaperValue(HEADSUP, 'model.data_preprocessor.degradation', 'osediff', 'HeadsUp section 4.1: "derived from '
               'Real-ESRGAN" as OSEDiff runs it (no USM: OSEDiff dataloaders/realesrgan.py)'),
    PaperValue((HEADSUP_FULL, 'headsup/ablations/headsup_sd21_id_only.py', 'headsup/ablations/headsup_sd21_no_ref.py'),
               'model.identity_loss.extractor.weights', lambda w: w.startswith('cvlface'),
               'HeadsUp section 4.1: "The face extractor is set as CVLFace"'),
    PaperValue(HEADSUP, 'test_sets[0].name', 'PortraitSR-4K-Te', 'HeadsUp sections 4.2 (Table 2) and 4.4 '
               '(Table 4)'),
    PaperValue(HEADSUP, first_test_set_metrics, lambda names: 'IDScore' in names, 'HeadsUp section 4.1: "the '
               'similarity score as defined in Eq. 4"'),
    # row 5 (the full model) and Tables 1-3
    PaperValue(HEADSUP_FULL, 'model.face_fidelity_loss.loss_weight', 1.0, 'HeadsUp section 4.1: lambda^fid = 1'),
    PaperValue(HEADSUP_FULL, 'model.face_fidelity_loss.lpips_weight', 0.8, 'HeadsUp section 4.1: '
               'lambda_LPIPS = 0.8'),
    PaperValue(HEADSUP_FULL, 'model.identity_loss.loss_weight', 4.0, 'HeadsUp section 4.1: lambda^id = 4'),
    PaperValue(HEADSUP_FULL, 'model.ref_dropout', 0.2, 'HeadsUp appendix B: "The probability of dropping the '
               'reference image in both stages is 0.2"'),
    PaperValue(HEADSUP_FULL, 'model.use_reference_at_test', True, 'HeadsUp Table 4 row 5 (w/ x_r)'),
    PaperValue(HEADSUP_FULL, 'model.discriminator.type', 'FacePatchDiscriminator', 'HeadsUp section 2.3: '
               'L_F^adv'),
    PaperValue(HEADSUP_FULL, 'test_sets[1].dataloader.dataset.upscale', 4, 'HeadsUp section 4.1: GISR LQ 128, '
               'HQ 512'),
    PaperValue(HEADSUP_FULL, names_of_test_sets,
               ['PortraitSR-4K-Te', 'DIV2K', 'RealSR', 'DRealSR', 'CelebA-Test'],
               'HeadsUp section 4.1 "Testing" (Tables 1-3)'),
    # Table 4 rows 1-4: the ablated terms; every ablation trains and tests without references
    PaperValue('headsup/ablations/*.py', 'model.ref_dropout', 1.0, 'HeadsUp Table 4: rows 1-4 without x_r'),
    PaperValue('headsup/ablations/*.py', 'model.use_reference_at_test', False, 'HeadsUp Table 4: rows 1-4'),
    PaperValue('headsup/ablations/*.py', names_of_test_sets, ['PortraitSR-4K-Te'],
               'HeadsUp Table 4 (PortraitSR-4K-Te)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses*.py', 'model.face_fidelity_loss', None,
               'HeadsUp Table 4 row 1'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses*.py', 'model.identity_loss', None,
               'HeadsUp Table 4 row 1'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses.py', 'model.discriminator', None,
               'HeadsUp section 4.4: "without face-aware supervision (first row)"; L_F includes L_F^adv '
               '(section 2.3)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses.py', 'optim_wrapper.discriminator', None,
               'HeadsUp section 4.4 (no discriminator, no optimiser)'),
    PaperValue('headsup/ablations/headsup_sd21_no_face_losses_keep_adv.py', 'model.adversarial_loss.loss_weight',
               0.1, 'the other reading of Table 4 row 1: the full model\'s adversarial term kept'),
    PaperValue('headsup/ablations/headsup_sd21_fid_only.py', 'model.face_fidelity_loss.loss_weight', 1.0,
               'HeadsUp Table 4 row 2 + section 4.1'),
    PaperValue('headsup/ablations/headsup_sd21_fid_only.py', 'model.identity_loss', None, 'HeadsUp Table 4 row 2'),
    PaperValue('headsup/ablations/headsup_sd21_id_only.py', 'model.identity_loss.loss_weight', 4.0,
               'HeadsUp Table 4 row 3 + section 4.1'),
    PaperValue('headsup/ablations/headsup_sd21_id_only.py', 'model.face_fidelity_loss', None,
               'HeadsUp Table 4 row 3'),
    PaperValue('headsup/ablations/headsup_sd21_no_ref.py', 'model.face_fidelity_loss.loss_weight', 1.0,
               'HeadsUp Table 4 row 4'),
    PaperValue('headsup/ablations/headsup_sd21_no_ref.py', 'model.identity_loss.loss_weight', 4.0,
               'HeadsUp Table 4 row 4'),
    # ---------------------------------------------------------------- OSEDiff and OSEDiff_Face (reference code)
    PaperValue(OSEDIFF, 'model.type', 'OSEDiff', OSEDIFF_CODE),
    PaperValue('osediff/osediff_sd21.py', 'model.prompter.train_tagger.type', 'RAMTagger',
               OSEDIFF_CODE + ': plain RAM tags x_tgt, the caption is the tags'),
    PaperValue('osediff/osediff_sd21.py', 'model.prompter.use_gt_in_training', True, OSEDIFF_CODE + ': RAM on the GT'),
    PaperValue(('osediff/osediff_sd21.py', 'osediff/osediff_sd21_portraitsr4k.py'), 'model.prompter.tagger.type',
               'DAPETagger', 'OSEDiff code (test_osediff.py): DAPE tags of the LQ, f"{tags}, {prompt},"'),
    PaperValue(OSEDIFF, 'model.backbone.lora_rank', 4, 'OSEDiff code (osediff.py: rank 4 everywhere)'),
    PaperValue(OSEDIFF, 'model.backbone.lora_alpha', 8, 'OSEDiff code (osediff.py: LoraConfig without lora_alpha, '
               'peft default 8)'),
    PaperValue(OSEDIFF, 'model.backbone.timestep', 999, 'OSEDiff code (osediff.py: torch.tensor([999]))'),
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
    PaperValue(OSEDIFF, 'train_cfg.max_iters', 14000, 'cswry/OSEDiff issue #58 (the maintainer: ~14k iterations)'),
    PaperValue('osediff/osediff_sd21.py', 'model.negative_prompt', OSEDIFF_NEGATIVE_PROMPT,
               'cswry/OSEDiff README, training command'),
    PaperValue('osediff/osediff_sd21.py', 'model.data_preprocessor.degradation', 'osediff',
               'OSEDiff dataloaders/params_realesrgan.yml without USM (commented out in dataloaders/realesrgan.py)'),
    PaperValue('osediff/osediff_sd21.py', 'train_dataloader.dataset.crop_size', 512, OSEDIFF_CODE + ': 512 crops'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.negative_prompt', OSEDIFF_FACE_NEGATIVE_PROMPT,
               'cswry/OSEDiff README, face training command'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.data_preprocessor.degradation', 'codeformer_face',
               'cswry/OSEDiff README, face training command: train_osediff_face.py with params_codeformer.yml'),
    PaperValue('osediff/osediff_face_sd21.py', 'model.color_fix', None, 'cswry/OSEDiff README, face '
               'test command: --align_method nofix'),
    PaperValue('osediff/osediff_face_sd21.py', 'train_dataloader.dataset.resize', 512, 'OSEDiff facesr_dataset.py: '
               'FFHQ at 512'),
    # ---------------------------------------------------------------- blending baselines of HeadsUp
    PaperValue(BLENDING, 'model.type', 'BlendingRestorer', 'HeadsUp section 4.1 "Baselines": blending approaches'),
    PaperValue(BLENDING, 'model.upscale', 4, 'HeadsUp section 4.1: 256x256 inputs, 1024x1024 outputs'),
    PaperValue(BLENDING, 'test_sets[0].name', 'PortraitSR-4K-Te', 'HeadsUp section 4.2 (Table 2)'),
    PaperValue('blending/realesrgan_codeformer.py', 'model.general_restorer.type', 'RealESRGANRestorer',
               'HeadsUp section 4.1: "Real-ESRGAN + CodeFormer"'),
    PaperValue('blending/realesrgan_codeformer.py', 'model.face_restorer.type', 'CodeFormerRestorer',
               'HeadsUp section 4.1'),
    PaperValue('blending/osediff_osediff_face.py', 'model.general_restorer.checkpoint', 'osediff.pkl',
               'HeadsUp section 4.1: "OSEDiff + OSEDiff_Face"'),
    PaperValue('blending/osediff_osediff_face.py', 'model.face_restorer.checkpoint', 'osediff_face.pkl',
               'HeadsUp section 4.1'),
    # ---------------------------------------------------------------- PortraitSR
    PaperValue(PORTRAITSR_ALL, 'model.type', 'PortraitSR', 'PortraitSR'),
    PaperValue(PORTRAITSR_ALL, 'optim_wrapper.optimizer', dict(type='Adam', lr=2e-4, betas=[0.9, 0.99]),
               'PortraitSR "Implementation Details": Adam, beta1 0.9, beta2 0.99, initial learning rate 2x10^-4'),
    PaperValue(PORTRAITSR_ALL, 'model.generator.dict_size', 512, 'PortraitSR "Implementation Details": N = 512'),
    PaperValue(PORTRAITSR_ALL, 'model.generator.dict_channels', 384, 'PortraitSR "Implementation Details": C = 384'),
    PaperValue(PORTRAITSR_ALL, 'model.generator.dict_init_std', 0.02, 'PortraitSR "Implementation Details": '
               'delta 0.02'),
    PaperValue(PORTRAITSR_ALL, 'model.perceptual_loss.loss_weight', 0.1, 'PortraitSR "Implementation Details": weights '
               '0.1, 0.005, 0.5 and 0.001'),
    PaperValue(PORTRAITSR_ALL, 'model.parsing_weight', 0.005, 'PortraitSR "Implementation Details"'),
    PaperValue(PORTRAITSR_ALL, 'model.reconstruction_weight', 0.5, 'PortraitSR "Implementation Details"'),
    PaperValue(PORTRAITSR_ALL, 'model.dictionary_weight', 0.001, 'PortraitSR "Implementation Details"'),
    PaperValue(PORTRAITSR_ALL, 'model.pixel_weight', 1.0, 'PortraitSR Eq. 15 (L_1 unweighted)'),
    PaperValue(PORTRAITSR_ALL, 'train_dataloader.dataset.size', 128, 'PortraitSR "Datasets": 128x128 GT'),
    PaperValue(PORTRAITSR_X8, 'train_dataloader.dataset.scale', 8, 'PortraitSR "Datasets": '
               '16x16 inputs (x8)'),
    PaperValue('portraitsr/portraitsr_x4_celeba.py', 'train_dataloader.dataset.scale', 4, 'PortraitSR "Datasets": '
               '32x32 inputs (x4)'),
    PaperValue(PORTRAITSR_ALL, names_of_test_sets, ['CelebA', 'Helen'],
               'PortraitSR "Datasets": evaluated on CelebA and Helen'),
    PaperValue('portraitsr/portraitsr_x4_celeba.py', first_test_set_metrics, ['PSNR', 'SSIM', 'LPIPS'],
               'PortraitSR "Datasets": PSNR, SSIM and LPIPS'),
    PaperValue(PORTRAITSR_X8, first_test_set_metrics, ['PSNR', 'SSIM', 'LPIPS', 'VIF'],
               'PortraitSR "Datasets" (PSNR, SSIM, LPIPS) and Table 5 (x8: "PSNR SSIM LPIPS VIF")'),
    PaperValue(PORTRAITSR_ALL, lambda cfg: [entry['table'] for entry in cfg.test_sets], ['face_sr', 'face_sr'],
               'PortraitSR Tables 1 and 5 (the face_sr layout has their columns)'),
    # the ablations' switches: one row per table row of PortraitSR section "Ablation Study"
    *[PaperValue(f'portraitsr/{config}', generator_switches,
                 dict(structure_prior=ssp, texture_prior=atp, holistic_fusion=hpf, decoder_structure_layers=layers),
                 f'PortraitSR {row}') for config, ssp, atp, hpf, layers, row in (
        ('portraitsr_x8_celeba.py', 'ssp', 'joint', True, 0, 'Table 2 row 5 (SSP, ATP, HPF) = Table 5 "None"'),
        ('ablations/baseline_x8_celeba.py', None, None, False, 0, 'Table 2 row 1 (Baseline only)'),
        ('ablations/ssp_x8_celeba.py', 'ssp', None, False, 0, 'Table 2 row 2 (Baseline + SSP)'),
        ('ablations/atp_x8_celeba.py', None, 'joint', False, 0, 'Table 2 row 3 (Baseline + ATP) = Table 4 "Ours"'),
        ('ablations/ssp_atp_x8_celeba.py', 'ssp', 'joint', False, 0, 'Table 2 row 4 (SSP + ATP, no HPF)'),
        ('ablations/pm_supervision_x8_celeba.py', 'supervision', None, False, 0, 'Table 3 row 2 (PM only)'),
        ('ablations/pm_add_x8_celeba.py', 'add', None, False, 0, 'Table 3 row 3 (unnamed column; our reading)'),
        ('ablations/pm_attention_x8_celeba.py', 'attention', None, False, 0, 'Table 3 row 4 (Att)'),
        ('ablations/pm_concat_x8_celeba.py', 'concat', None, False, 0, 'Table 3 row 5 (Cat)'),
        ('ablations/hd_rf_x8_celeba.py', None, 'fixed', False, 0, 'Table 4 row 2 (HD-RF, a fixed dictionary)'),
        ('ablations/hd_retrain_x8_celeba.py', None, 'fixed', False, 0, 'Table 4 row 3 (HD-Retrain, fixed)'),
        ('ablations/decoder_fusion_1layer_x8_celeba.py', 'ssp', 'joint', True, 1, 'Table 5 row 2 (1-layer)'),
        ('ablations/decoder_fusion_2layer_x8_celeba.py', 'ssp', 'joint', True, 2, 'Table 5 row 3 (2-layer)'),
        ('ablations/decoder_fusion_3layer_x8_celeba.py', 'ssp', 'joint', True, 3, 'Table 5 row 4 (3-layer)'))],
    # ---------------------------------------------------------------- Table 2 baselines of HeadsUp (test only)
    PaperValue('osediff/osediff_sd21_portraitsr4k.py', names_of_test_sets, ['PortraitSR-4K-Te'],
               'HeadsUp section 4.2 (Table 2, row OSEDiff)'),
    PaperValue(('osediff/osediff_sd21_portraitsr4k.py', 'pisasr/pisasr_sd21.py'), portrait_lq_side, 256,
               'HeadsUp section 4.1: "PortraitSR-4K-Te, with the input resolution at 256x256"'),
    PaperValue(('osediff/osediff_sd21_portraitsr4k.py', 'pisasr/pisasr_sd21.py'),
               'model.data_preprocessor.eval_degradation', dict(preset='osediff', resize_back=False),
               'HeadsUp Table 2: every row restores the same LQ as HeadsUp (its evaluation degradation)'),
    PaperValue('osediff/osediff_sd21_portraitsr4k.py', 'model.backbone.timestep', 999, OSEDIFF_CODE),
    PaperValue('osediff/osediff_sd21_portraitsr4k.py', 'model.backbone.trained_weights', 'osediff.pkl',
               'HeadsUp section 4.1 "Baselines": OSEDiff (the authors\' release)'),
    PaperValue('pisasr/pisasr_sd21.py', names_of_test_sets, ['PortraitSR-4K-Te', 'DIV2K', 'RealSR', 'DRealSR'],
               'HeadsUp Table 2 (PiSA-SR) and Table 3 (PiSA-SR-S1)'),
    # ---------------------------------------------------------------- PiSA-SR (reference code)
    PaperValue('pisasr/*.py', 'model.type', 'PiSASR', PISASR_CODE),
    PaperValue('pisasr/*.py', 'model.backbone.timestep', 1, PISASR_CODE + ', pisasr.py: t = 1, z_H = z_L - eps'),
    PaperValue('pisasr/*.py', 'model.backbone.lora_rank_pix', 4, PISASR_CODE + ': --lora_rank_unet_pix 4'),
    PaperValue('pisasr/*.py', 'model.backbone.lora_rank_sem', 4, PISASR_CODE + ': --lora_rank_unet_sem 4'),
    PaperValue('pisasr/*.py', 'model.backbone.lora_alpha', 8, PISASR_CODE + ': peft default alpha 8'),
    PaperValue('pisasr/pisasr_sd21.py', 'model.backbone.lambda_pix', 1.0, PISASR_CODE + ': --lambda_pix 1.0'),
    PaperValue('pisasr/pisasr_sd21.py', 'model.backbone.lambda_sem', 1.0, PISASR_CODE + ': --lambda_sem 1.0'),
    PaperValue('pisasr/pisasr_sd21.py', 'model.color_fix', 'adain', PISASR_CODE + ': --align_method adain'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.pix_steps', 4000, PISASR_CODE + ': pix_steps 4000 (script)'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.null_text_ratio', 0.5, PISASR_CODE + ': null_text_ratio 0.5'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.negative_prompt', PISASR_NEGATIVE_PROMPT,
               'csslc/PiSA-SR src/my_utils/training_utils.py: --neg_prompt_csd default'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.l2_weight', 1.0, PISASR_CODE + ': lambda_l2 1.0'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.lpips_loss.loss_weight', 2.0, PISASR_CODE + ': lambda_lpips 2'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.csd_weight', 1.0, PISASR_CODE + ': lambda_csd 1.0'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.csd_cfg_scale', 7.5, PISASR_CODE + ': cfg_csd 7.5'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'model.csd_timesteps', [20, 500],
               PISASR_CODE + ': min/max_dm_step_ratio 0.02 / 0.5 of 1000'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'optim_wrapper.backbone.optimizer',
               dict(type='AdamW', lr=5e-5, betas=[0.9, 0.999], weight_decay=1e-2, eps=1e-8), PISASR_CODE),
    PaperValue('pisasr/pisasr_sd21_train.py', 'train_dataloader.batch_size', 4, PISASR_CODE + ': 4 per GPU x 4'),
    PaperValue('pisasr/pisasr_sd21_train.py', 'train_dataloader.dataset.crop_size', 512, PISASR_CODE + ': 512'),
    # ---------------------------------------------------------------- AuthFace's facial loss on the one-step models
    PaperValue('authface/*_sd21_facial_loss.py', 'model.facial_loss.type', 'TimeAwareFacialLoss',
               'AuthFace section 3.2, Eq. 4'),
    PaperValue('authface/*_sd21_facial_loss.py', 'model.facial_loss.discriminator.in_channels', 4,
               'AuthFace section 3.2: discriminators on latent patches (SD latents have 4 channels)'),
    PaperValue('authface/*_sd21_facial_loss.py', 'model.facial_loss.time_weighting', 'constant',
               'AuthFace Eq. 3 vanishes at t = 999 (our choice for one-step models, stated in the config)'),
    PaperValue('authface/headsup_sd21_facial_loss.py', 'model.lpips_loss.loss_weight', 2.0, FROM_OSEDIFF),
    PaperValue('authface/headsup_sd21_facial_loss.py', 'model.face_fidelity_loss.loss_weight', 1.0,
               'HeadsUp section 4.1: lambda^fid = 1'),
    PaperValue('authface/osediff_sd21_facial_loss.py', 'model.lpips_loss.loss_weight', 2.0, OSEDIFF_CODE),
    PaperValue('authface/osediff_sd21_facial_loss.py', 'model.regularizer.cfg_scale', 7.5, OSEDIFF_CODE),
    # ---------------------------------------------------------------- IDFSR, every config
    PaperValue(IDFSR_ALL, 'model.type', 'IDFSR', 'IDFSR'),
    PaperValue(IDFSR_ALL, 'model.num_train_timesteps', 1000, IDFSR_S33 + '; ' + IDFSR_T4 + ': "Training T 1000"'),
    PaperValue(IDFSR_ALL, 'model.sample_steps', 20, IDFSR_S33 + '; Table 6: IDFSR 20 NFEs'),
    PaperValue(IDFSR_ALL, 'model.beta_start', 1e-4, IDFSR_S33 + ' (' + IDFSR_T4 + ': "β scheduler Linear"), DiffAE\'s '
               '"linear" schedule, linspace(1e-4, 0.02, T) at T = 1000 (phizaz/diffae @00c57d3, diffusion/base.py '
               'get_named_beta_schedule): '
               + IDFSR_E2 + ': "Our main framework adopts the architecture and parameters of DiffAE"'),
    PaperValue(IDFSR_ALL, 'model.beta_end', 0.02, IDFSR_S33 + ', DiffAE\'s linear schedule (as beta_start)'),
    PaperValue(IDFSR_ALL, 'model.unet.model_channels', 128, IDFSR_T4 + ': "Base channels 128"'),
    PaperValue(IDFSR_ALL, 'model.unet.channel_mult', [1, 1, 2, 2, 4, 4], IDFSR_T4 + ': "Channel multipliers '
               '[1,1,2,2,4,4]"'),
    PaperValue(IDFSR_ALL, 'model.unet.attention_resolutions', [16], IDFSR_T4 + ': "Attention resolution [16]"'),
    PaperValue(IDFSR_ALL, 'model.unet.enc_channel_mult', [1, 1, 2, 2, 4, 4, 4], IDFSR_T4 + ': "Style Encoder ch. '
               'mult. [1,1,2,2,4,4,4]"'),
    PaperValue(IDFSR_ALL, 'model.unet.enc_attn_resolutions', [16], IDFSR_T4 + ': "Style Enc. attn. resolution [16]"'),
    PaperValue(IDFSR_ALL, 'model.unet.enc_out_channels', 512, IDFSR_T4 + ': "z_s size 512"'),
    PaperValue(IDFSR_ALL, 'optim_wrapper.optimizer', dict(type='Adam', lr=1e-4, weight_decay=0),
               IDFSR_T4 + ': "Learning rate 1×10^{-4}", "Optimizer Adam (no weight decay)"'),
    PaperValue(IDFSR_ALL, 'identity_fitting.lr', 1e-4, IDFSR_S33 + ' (Table 4: learning rate 1×10^{-4})'),
    PaperValue(IDFSR_ALL, 'train_dataloader.batch_size', 24, IDFSR_T4 + ': "Batch size 24"; ' + IDFSR_E2 + ': "with '
               'a batch size of 24 per GPU"'),
    PaperValue(IDFSR_ALL, 'num_gpus', 4, IDFSR_E2 + ': "We train the model in parallel using four NVIDIA 3090 GPUs"'),
    # the full method (sections 3.1-3.3, appendices E.1-E.2)
    PaperValue(IDFSR_FULL, 'model.unet.in_channels', 6, IDFSR_E2 + ': "we change the original 3-channel input (single '
               'image) to 6 channels by concatenating noise and masked LR inputs"'),
    PaperValue(IDFSR_FULL, 'model.lr_condition', 'masked', 'IDFSR section 3.1: "A finetuned face landmark '
               'detector is used to mask the facial region of I_L, producing the masked image I_M"'),
    PaperValue(IDFSR_FULL, 'model.unet.attention', 'identity', IDFSR_E2 + ': "all self-attention mechanisms are '
               'replaced with cross-attention mechanisms to incorporate ID embeddings"'),
    PaperValue(IDFSR_FULL, 'model.unet.id_channels', 512, IDFSR_T4 + ': "z_{id} size 512"'),
    PaperValue(IDFSR_FULL, 'model.identity_embedder.extractor.type', 'ArcFaceIResNet', IDFSR_T4 + ': "ID Encoder '
               'Pretrained ArcFace"; section 3.3: "we leverage a pretrained ArcFace encoder"'),
    PaperValue(IDFSR_FULL, 'model.style_source', 'warped_reference', 'IDFSR section 3.1: "the style embedding '
               '$z_s = \\mathcal{E}_s(I_W)$"'),
    PaperValue(IDFSR_FULL, idfsr_unet_use_style, True, 'IDFSR section 3.1 (z_s conditions the network)'),
    PaperValue(IDFSR_FULL, 'model.warper.transform', 'piecewise_affine', 'IDFSR appendix E.1, Listing 1: '
               '"TPS warping using Piecewise Affine Transform"'),
    # pretraining (PT) and fine-tuned (FT) rows of Table 1
    PaperValue(IDFSR_PT, 'model.init_weights', 'diffae_ffhq256_autoenc.ckpt', 'IDFSR section 3.3: "initialized '
               'with DiffAE weights pretrained on the FFHQ dataset"'),
    PaperValue(IDFSR_PT, 'model.test_identity', 'reference', 'IDFSR section 4.1: "In the pretraining phase, ID '
               'embeddings from reference images are used to achieve general FSR"'),
    PaperValue((IDFSR_FT, 'idfsr/idfsr_x16_celebref_multiref.py'), 'model.test_identity', 'fitted',
               'IDFSR section 3.3: "In the finetuning stage, we freeze both the U-Net and the style encoder, and '
               'solely optimize a learnable ID embedding"'),
    *[PaperValue(configs, key, scale, 'IDFSR Table 1: "upsampling scales of $8\\times$ and $16\\times$"')
      for configs, scale in ((('idfsr/idfsr_x8_celebref.py', 'idfsr/idfsr_x8_celebref_ft.py'), 8),
                             (('idfsr/idfsr_x16_celebref.py', 'idfsr/idfsr_x16_celebref_ft.py'), 16))
      for key in ('train_dataloader.dataset.scale', 'test_dataloader.dataset.scale')],
    PaperValue(IDFSR_TABLE1, 'test_dataloader.dataset.split', 'test', 'IDFSR section 4.1: "Each sampled ID is '
               'equally divided into a fine-tuning set and a test set"'),
    PaperValue(IDFSR_TABLE1, first_test_set_metrics, lambda names: set(IDFSR_METRICS) <= set(names),
               'IDFSR section 4.1: "PSNR, SSIM, LPIPS, FID, CLIPQA, MUSIQ, and ID similarity (IDS)" (Table 1)'),
    PaperValue(('idfsr/idfsr_x16_celebref.py', 'idfsr/idfsr_x16_celebref_ft.py'), first_test_set_metrics,
               lambda names: 'FaceVerificationAccuracy' in names, 'IDFSR section 4.4: "recognition accuracy under '
               'a $16\\times$ scale setting" (Table 2, IDV)'),
    # section 5.3: the impact of reference image quantity (Fig. 7)
    PaperValue('idfsr/idfsr_x16_celebref_multiref.py', 'multi_reference.counts', list(range(2, 11)),
               'IDFSR section 5.3: "the number of reference images used for fine-tuning, ranging from 2 to 10"'),
    PaperValue('idfsr/idfsr_x16_celebref_multiref.py', 'multi_reference.min_images', 11,
               'IDFSR section 5.3: "each ID contains more than 10 images"'),
    PaperValue('idfsr/idfsr_x16_celebref_multiref.py', 'multi_reference.num_identities', 10,
               'IDFSR section 5.3: "across 10 identities"'),
    # section 5.4 (Fig. 8), component analysis: what the text says of each case
    PaperValue(IDFSR_CASES + 'case1_lr_concat.py', 'model.lr_condition', 'full', 'IDFSR section 5.4: "concatenates '
               'the low-resolution (LR) image with the noise input at each timestep (case1)"'),
    PaperValue(IDFSR_CASES + 'case1_lr_concat.py', 'model.unet.in_channels', 6, 'IDFSR section 5.4 (case1: noise '
               'and LR concatenated)'),
    PaperValue(IDFSR_CASES + 'case2_masked_lr.py', 'model.lr_condition', 'masked', 'IDFSR section 5.4: "In case2, '
               'the LR image is masked before concatenation"'),
    PaperValue(IDFSR_CASES + 'case2_masked_lr.py', 'model.unet.in_channels', 6, 'IDFSR section 5.4 (case2: '
               'concatenation)'),
    PaperValue(IDFSR_CASES + 'case3_feature_conditioning.py', 'model.lr_condition', 'none', 'IDFSR section 5.4: '
               '"methods relying on feature-based conditioning or attention mechanisms—such as DiffAE and Stable '
               'Diffusion (Rombach et al., 2022) (case3)" (no concatenation)'),
    PaperValue(IDFSR_CASES + 'case3_feature_conditioning.py', 'model.unet.in_channels', 3, 'IDFSR section 5.4 '
               '(case3: the noise alone enters the UNet)'),
    *[PaperValue((IDFSR_CASES + 'case4_no_identity.py', IDFSR_CASES + 'case5_no_style.py'), key, value,
                 'IDFSR section 5.4: case4 and case5 remove one embedding "under the default setting"')
      for key, value in (('model.lr_condition', 'masked'), ('model.unet.in_channels', 6))],
    PaperValue(IDFSR_CASES + 'case4_no_identity.py', 'model.identity_embedder', None, 'IDFSR section 5.4: "When '
               'the ID embedding is removed under the default setting (case4)"'),
    PaperValue(IDFSR_CASES + 'case4_no_identity.py', 'model.unet.attention', 'self', 'IDFSR section 5.4 (case4: '
               'no ID embedding to cross-attend to)'),
    PaperValue(IDFSR_CASES + 'case4_no_identity.py', 'model.style_source', 'warped_reference', 'IDFSR section 5.4 '
               '(case4: the default style embedding kept)'),
    PaperValue(IDFSR_CASES + 'case5_no_style.py', 'model.style_source', 'none', 'IDFSR section 5.4: "Removing the '
               'style embedding (case5)"'),
    PaperValue(IDFSR_CASES + 'case5_no_style.py', idfsr_unet_use_style, False, 'IDFSR section 5.4 (case5)'),
    PaperValue(IDFSR_CASES + 'case5_no_style.py', 'model.unet.attention', 'identity', 'IDFSR section 5.4 (case5: '
               'the default ID embedding kept)'),
    PaperValue(IDFSR_CASES + 'case5_no_style.py', 'model.identity_embedder.extractor.type', 'ArcFaceIResNet',
               'IDFSR section 5.4 (case5: the default ID embedding kept; Table 4: pretrained ArcFace)'),
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
    """Configs outside debug/ reproduce a paper: each must have its stated values in PAPER_VALUES (AuthFace's
    stage and test configs have theirs in tests/test_configs/test_authface_configs.py, AuthFace's table)."""
    authface = {row[0] for row in AUTHFACE_PAPER_VALUES}
    unchecked = [c for c in CONFIGS if not c.startswith('debug/') and c not in authface
                 and not any(r.applies_to(c) for r in PAPER_VALUES)]
    assert unchecked == [], f'add the paper values of {unchecked} to PAPER_VALUES in {__file__}'


def test_quoted_strings_are_the_papers_own():
    """The negative prompt above is the paper's sentence, verbatim (whitespace normalised)."""
    paper = require_paper_text('000_29afdb085c78016c.txt', 'HeadsUp', '2510.09924')
    text = ' '.join(paper.split())
    assert f'"{HEADSUP_NEGATIVE_PROMPT}"' in text
    assert 'The LoRA rank for all modules is set to 4' in text
    assert 'The probability of dropping the reference image in both stages is 0.2' in text
