"""``PortraitRestorer``: restore photos in code with any config of the library, or a model-zoo name.

Two kinds of models sit behind one interface:

* one-step SD restorers (:class:`~portraitisr.models.algorithms.OSEDiff`, HeadsUp) restore an LQ that was
  already upscaled to the output size, so the input is upscaled bicubically first (as OSEDiff's test code and
  :class:`~portraitisr.models.data_preprocessors.SRDataPreprocessor` do); any integer ``scale`` works;
* blending baselines take the LQ at its own size and upscale it themselves by their ``upscale``.

Around the model this class keeps what a file has besides RGB (DESIGN section 4): the alpha plane is upscaled
bicubically on its own and re-attached, 16-bit files come out 16-bit, grayscale files come out grayscale (the
model restores the 3-channel copy; the result is converted back with the ITU-R BT.601 luma weights).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.utils.image_io import ImageRecord, image_to_tensor, read_image, tensor_to_image, write_image

__all__ = ['PortraitRestorer', 'RestoredImage']

PathLike = Union[str, 'os.PathLike[str]']
#: ITU-R BT.601 luma weights, the ones OpenCV's RGB2GRAY uses, to turn a restored gray photo back into one plane.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Suffixes :func:`write_image` cannot write; their outputs become PNG.
_REWRITE_SUFFIX = {'.gif': '.png', '.bmp': '.png', '.ppm': '.png', '.pgm': '.png'}


class RestoredImage:
    """A restored image: ``rgb`` float32 ``H x W x 3`` (or ``H x W`` for a gray input) in [0, 1], ``alpha``
    float32 ``H x W`` or None, ``bit_depth`` 8/16 to write it with."""

    def __init__(self, rgb: np.ndarray, alpha: Optional[np.ndarray], bit_depth: int) -> None:
        self.rgb, self.alpha, self.bit_depth = rgb, alpha, bit_depth

    def save(self, path: PathLike) -> Path:
        """Write with the input's alpha and bit depth (PNG/TIFF/WebP keep alpha, PNG/TIFF keep 16 bits)."""
        return write_image(path, self.rgb, self.alpha, bit_depth=self.bit_depth)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


#: Parts of a model config that only training uses (losses, the VSD regulariser, the face discriminator and the
#: identity network behind the identity loss): :class:`PortraitRestorer` builds models without them, so restoring
#: needs neither their weights (LPIPS-VGG, the recogniser) nor their memory.
TRAINING_ONLY_PARTS = ('regularizer', 'lpips_loss', 'face_fidelity_loss', 'identity_loss', 'identity_aligner',
                       'discriminator', 'adversarial_loss', 'perceptual_loss')


def without_training_parts(model_cfg: dict) -> Tuple[dict, Tuple[str, ...]]:
    """``(model config with the training-only parts set to None, the names of the parts dropped)``."""
    dropped = tuple(key for key in TRAINING_ONLY_PARTS if model_cfg.get(key) is not None)
    return dict(model_cfg, **{key: None for key in dropped}), dropped


def _load_model_weights(model: torch.nn.Module, checkpoint: PathLike, dropped_parts: Sequence[str] = ()) -> None:
    """Load a training checkpoint of this library (trainable tensors only, or a full state dict) strictly.

    Frozen pretrained parts (SD, face networks) come from the config; every trainable tensor of the model must be
    in the checkpoint and nothing else may be, so a checkpoint of another config fails loudly. Tensors of
    ``dropped_parts`` (training-only modules the model was built without, e.g. ``discriminator``) are ignored.
    """
    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.weights import load_state_dict

    loaded = load_state_dict(checkpoint)
    state = loaded.get('state_dict', loaded)
    state = {key.replace('.module.', '.').removeprefix('module.'): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.split('.', 1)[0] not in dropped_parts}
    own = {key for key, _ in model.named_parameters()} | {key for key, _ in model.named_buffers()}
    unexpected = sorted(set(state) - own)
    missing = sorted(trainable_names(model) - set(state))
    if unexpected or missing:
        raise KeyError(f'checkpoint {checkpoint} does not fit this config: {len(missing)} trained tensors missing '
                       f'(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    # Only the checkpoint's tensors are copied; the frozen rest (checked above to be all that is absent) stays.
    model.load_state_dict(state, strict=False)


class PortraitRestorer:
    """Restore images with a portraitisr model.

    Args:
        config: a config file path (or a loaded mmengine ``Config``) whose ``model`` is a one-step restorer
            (OSEDiff, HeadsUp) or a blending baseline.
        checkpoint: a training checkpoint of this library for that config (``work_dir/iter_N.pth``), or None
            for models whose weights all come from the config.
        device: ``'cuda'``, ``'cpu'``, ...; default CUDA when available.
        scale: output size / input size. One-step models take any integer; default the model's (blending
            ``upscale``) or 4 (the papers' x4 setting).
        tile: tile size in pixels for huge inputs, passed to the model's ``restore(tile=...)``; a model without
            tiling raises ``ValueError``.
        cfg_options: config overrides, as ``--cfg-options`` takes them.
        precision: for one-step models, ``'auto'`` (a merged-LoRA copy in bf16 on CUDA, merged float32 on the
            CPU, where bf16 is slower without AMX), ``'bf16'``, ``'fp32'`` (merged float32) or ``'unmerged'``
            (the training path: LoRA layers kept, float32). See ``OneStepRestorer.enable_fast_inference``.
        keep_training_parts: build the losses, regulariser and discriminator too (default: built without them,
            see :data:`TRAINING_ONLY_PARTS`; a training checkpoint's tensors of those parts are then ignored).

    Use :meth:`from_zoo` for a model-zoo name.
    """

    def __init__(self, config, checkpoint: Optional[PathLike] = None, device: Optional[str] = None,
                 scale: Optional[int] = None, tile: Optional[int] = None,
                 cfg_options: Optional[dict] = None, precision: str = 'auto',
                 keep_training_parts: bool = False) -> None:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        from portraitisr.registry import MODELS

        cfg = Config.fromfile(os.fspath(config)) if not isinstance(config, Config) else config
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        init_default_scope(cfg.get('default_scope', 'portraitisr'))
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        model_cfg, dropped = (dict(cfg.model), ()) if keep_training_parts else without_training_parts(cfg.model)
        model = MODELS.build(model_cfg)
        if checkpoint is not None:
            _load_model_weights(model, checkpoint, dropped)
        self.model = model.to(self.device).eval()
        # Blending baselines upscale themselves (their ``upscale``); one-step models restore at the output size.
        self.upsamples_itself = hasattr(self.model, 'general_sr')
        native = getattr(self.model, 'upscale', None) if self.upsamples_itself else None
        self.scale = int(scale or native or 4)
        if self.upsamples_itself and native is not None and self.scale != native:
            raise ValueError(f'{type(self.model).__name__} upscales by {native}; scale={self.scale} is not possible')
        if self.scale < 1:
            raise ValueError(f'scale must be >= 1, got {self.scale}')
        self.tile = tile
        self._restore_kwargs = self._tiling_kwargs(tile)
        self.precision = self._use_precision(precision)
        self.eval_seed = int(getattr(self.model, 'eval_seed', 0))

    @classmethod
    def from_zoo(cls, name: str, checkpoint: Optional[PathLike] = None, **kwargs) -> 'PortraitRestorer':
        """Build the model-zoo entry ``name`` from weights already on this machine (never downloads).

        Raises:
            WeightsNotFoundError: naming every missing file and ``portraitisr download NAME`` (or how to train an
                unreleased model, unless ``checkpoint`` is given), before anything is built.
        """
        from portraitisr.apis import model_zoo

        zoo = model_zoo.load_index()
        entry = model_zoo.get_model(name, zoo)
        found = model_zoo.check_available(name, zoo, need_checkpoint=checkpoint is None)
        options = dict(kwargs.pop('cfg_options', None) or {})
        if entry.checkpoint is not None and checkpoint is None:
            options[entry.checkpoint_option] = str(found[entry.checkpoint])
        return cls(model_zoo.config_path(entry), checkpoint=checkpoint, cfg_options=options, **kwargs)

    # ------------------------------------------------------------------ speed
    def _use_precision(self, precision: str) -> str:
        """Switch one-step models to their merged fast copy; returns the precision in use."""
        choices = ('auto', 'bf16', 'fp32', 'unmerged')
        if precision not in choices:
            raise ValueError(f'precision must be one of {choices}, got {precision!r}')
        if not hasattr(self.model, 'enable_fast_inference'):
            return 'model default'  # blending baselines: their restorers choose
        if precision == 'auto':
            precision = 'bf16' if self.device.type == 'cuda' else 'fp32'
        if precision != 'unmerged':
            self.model.enable_fast_inference('bfloat16' if precision == 'bf16' else 'float32')
        return precision

    # ------------------------------------------------------------------ tiling
    def _tiling_kwargs(self, tile: Optional[int]) -> dict:
        """Switch on the model's own tiling for tiles of ``tile`` output pixels: the one place tiling is connected.

        One-step models with ``set_tiling`` (latent tiling of the VAE and the UNet) get a ``LatentTiling`` whose
        sizes keep OSEDiff's proportions (UNet overlap 1/3 of a tile, encoder overlap 1/8, decoder overlap 1/4);
        a model whose ``restore`` takes ``tile=`` gets it per call (returned as keyword arguments); any other
        model cannot tile and says so.
        """
        if tile is None:
            return {}
        if tile <= 0:
            raise ValueError(f'tile must be a positive number of pixels, got {tile}')
        if hasattr(self.model, 'set_tiling'):
            factor = int(self.model._backbone.vae_downscale)
            latent = max(tile // factor, 1)
            encode = max(tile // factor * factor, factor)
            self.model.set_tiling(unet_tile=latent, unet_overlap=latent // 3, encode_tile=encode,
                                  encode_overlap=encode // 8 // factor * factor, decode_tile=latent,
                                  decode_overlap=latent // 4)
            return {}
        if 'tile' in inspect.signature(self.model.restore).parameters:
            return {'tile': int(tile)}
        raise ValueError(f'{type(self.model).__name__} has no tiling option; run without --tile '
                         '(or on a smaller image / a GPU with more memory)')

    # ------------------------------------------------------------------ tensors
    @torch.no_grad()
    def restore_tensor(self, lq: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x 3 x (scale H) x (scale W)`` in [0, 1] (on the input's device).

        Args:
            ref: HeadsUp only: aligned reference faces ``B x 3 x S x S`` in [0, 1] (FFHQ template); the face
                they belong to is detected in the photo (largest face).
        """
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ValueError(f'expected B x 3 x H x W, got {tuple(lq.shape)}')
        source_device = lq.device
        lq = lq.to(self.device, torch.float32).clamp(0, 1)
        conditions = dict(self._restore_kwargs)
        if ref is not None:
            if 'ref' not in inspect.signature(self.model.restore).parameters:
                raise ValueError(f'{type(self.model).__name__} takes no reference face (HeadsUp does)')
            conditions['ref'] = ref.to(self.device, torch.float32)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            # The VAE posterior is sampled: a fixed seed makes the same photo restore the same way every time.
            torch.manual_seed(self.eval_seed)
            if self.upsamples_itself:
                sr = self.model.restore(lq, **conditions)
            else:
                size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
                upscaled = F.interpolate(lq, size=size, mode='bicubic', align_corners=False).clamp(0, 1)
                sr = self.model.restore(upscaled, **conditions)
        return sr.float().clamp(0, 1).to(source_device)

    # ------------------------------------------------------------------ arrays and files
    def restore_array(self, rgb: np.ndarray, alpha: Optional[np.ndarray] = None, bit_depth: int = 8,
                      ref: Optional[np.ndarray] = None) -> RestoredImage:
        """Restore an ``H x W x 3`` RGB (or ``H x W`` gray) float array in [0, 1] (uint8/uint16 are scaled).

        ``alpha`` (``H x W``) is upscaled bicubically and re-attached; a gray input (2-D, or 3 equal channels)
        comes out as ``H' x W'`` gray; ``bit_depth`` is passed through for :meth:`RestoredImage.save`.
        """
        rgb = _as_unit_float(rgb)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        gray = _is_gray(rgb)
        ref_tensor = image_to_tensor(_as_unit_float(ref)) if ref is not None else None
        sr = tensor_to_image(self.restore_tensor(image_to_tensor(rgb), ref=ref_tensor))
        if gray:
            sr = np.clip(sr @ _LUMA, 0.0, 1.0)
        out_alpha = None
        if alpha is not None:
            alpha = _as_unit_float(alpha)
            # The model sees colour only; the alpha plane is smooth, so bicubic upscaling is enough.
            out_alpha = np.clip(cv2.resize(alpha, (sr.shape[1], sr.shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)
        return RestoredImage(sr, out_alpha, bit_depth)

    def restore_record(self, record: ImageRecord, ref: Optional[np.ndarray] = None) -> RestoredImage:
        """Restore an image read by :func:`~portraitisr.utils.image_io.read_image`."""
        return self.restore_array(record.rgb, record.alpha, record.bit_depth, ref=ref)

    def restore_file(self, path: PathLike, output: PathLike, ref: Optional[PathLike] = None,
                     compare: Optional[PathLike] = None) -> Path:
        """Read ``path``, restore it and write ``output`` (alpha and bit depth kept).

        Args:
            ref: a reference-face image file (HeadsUp).
            compare: also write a side-by-side image here: the input upscaled (nearest neighbour, so its pixels
                stay visible) on the left, the restoration on the right.

        Raises:
            ImageReadError: the input cannot be decoded (nothing is written).
        """
        record = read_image(path)
        ref_rgb = read_image(ref).rgb if ref is not None else None
        restored = self.restore_record(record, ref=ref_rgb)
        written = restored.save(output)
        if compare is not None:
            write_comparison(compare, record, restored)
        return written

    @staticmethod
    def output_name(path: PathLike) -> str:
        """The file name an output of ``path`` gets: the same name, PNG for formats that cannot be written."""
        path = Path(path)
        return path.stem + _REWRITE_SUFFIX.get(path.suffix.lower(), path.suffix)


def _as_unit_float(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def write_comparison(path: PathLike, record: ImageRecord, restored: RestoredImage) -> Path:
    """Input (nearest-neighbour upscaled to the output size) | output, side by side, 8-bit RGB.

    Transparent pixels are shown over white so that both halves look as a viewer would show them.
    """
    out = restored.rgb if restored.rgb.ndim == 3 else np.repeat(restored.rgb[..., None], 3, axis=2)
    h, w = out.shape[:2]
    left = cv2.resize(record.rgb, (w, h), interpolation=cv2.INTER_NEAREST)
    if record.alpha is not None:
        a = cv2.resize(record.alpha, (w, h), interpolation=cv2.INTER_NEAREST)[..., None]
        left = left * a + (1 - a)
    if restored.alpha is not None:
        out = out * restored.alpha[..., None] + (1 - restored.alpha[..., None])
    return write_image(path, np.concatenate([left, out], axis=1), bit_depth=8)
