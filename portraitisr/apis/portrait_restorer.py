"""``PortraitRestorer``: restore photos in code with any config of the library, or a model-zoo name.

Two kinds of models sit behind one interface:

* one-step SD restorers (:class:`~portraitisr.models.algorithms.OSEDiff`, HeadsUp) restore an LQ that was
  already upscaled to the output size, so the input is upscaled bicubically first (as OSEDiff's test code and
  :class:`~portraitisr.models.data_preprocessors.SRDataPreprocessor` do); any integer ``scale`` works;
* blending baselines take the LQ at its own size and upscale it themselves by their ``upscale``.

IDFSR (face super-resolution with identity fitting) restores like a one-step model (FFHQ-aligned face crops, upscaled
first; give its ``scale``); :meth:`PortraitRestorer.set_identity` makes it use a person's fitted identity embedding.

Around the model this class keeps what a file has besides RGB (docs/command_line.md, "What is kept from each file"): the
alpha plane is upscaled bicubically on its own and re-attached, 16-bit files come out 16-bit, grayscale files come out
grayscale (the model restores the 3-channel copy; the result is converted back with the ITU-R BT.601 luma weights).

Memory: arrays and files of one-step models are restored by :mod:`.streamed_restore`, tile by tile with the tiling
:mod:`.memory_plan` picks for each image from its size, the model and the free memory (``tile=None``), so a photo
of any size restores within the budget or is refused before any computing. ``restore_tensor`` (batches, HeadsUp
with a reference) runs the model's own ``restore`` on whole tensors.
"""
from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portraitisr.engine.checkpoint_loading import checkpoint_training_info
from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
from portraitisr.models.backbones.latent_tiling import stage_tile_counts, unet_downscale
from portraitisr.utils.tiling import report_tiles
from portraitisr.registry import MODELS
from portraitisr.utils.image_io import (ImageRecord, image_to_tensor, output_suffix, read_image, tensor_to_image,
                                        unit_float_image, write_image)
from portraitisr.weights import load_state_dict
from . import memory_plan, model_zoo
from .config_location import zoo_config_path
from .streamed_restore import BAND_ROWS, RowSink, UpscaledImage, can_stream, restore_streamed

__all__ = ['PortraitRestorer', 'RestoredImage', 'UntrainedModelWarning', 'FEW_ITERATIONS']

PathLike = Union[str, 'os.PathLike[str]']
#: ITU-R BT.601 luma weights, the ones OpenCV's RGB2GRAY uses, to turn a restored gray photo back into one plane.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: A checkpoint trained for fewer iterations than this is reported as barely trained (our choice: the papers'
#: configs train for tens of thousands of iterations; the tiny debug configs for 40, whose output is noise).
FEW_ITERATIONS = 1000
#: Progress callback of :meth:`PortraitRestorer.restore_file`: ``(tiles done, tiles in all)``.
TileProgress = Callable[[int, int], None]


class UntrainedModelWarning(UserWarning):
    """The model restores with random or barely trained weights: expect noise, not a restoration."""


class RestoredImage:
    """A restored image: ``rgb`` ``H x W x 3`` (or ``H x W`` for a gray input) float32 in [0, 1] (uint8 / uint16
    at full range from :meth:`PortraitRestorer.restore_file`, which converts as it goes), ``alpha`` ``H x W`` in
    the same type or None, ``bit_depth`` 8/16 to write it with."""

    def __init__(self, rgb: np.ndarray, alpha: Optional[np.ndarray], bit_depth: int) -> None:
        self.rgb, self.alpha, self.bit_depth = rgb, alpha, bit_depth

    def save(self, path: PathLike) -> Path:
        """Write with the input's alpha and bit depth (PNG/TIFF/WebP keep alpha, PNG/TIFF keep 16 bits)."""
        return write_image(path, self.rgb, self.alpha, bit_depth=self.bit_depth)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


#: Parts of a model config that only training uses (losses, the VSD regulariser, the face discriminator, the
#: identity network behind the identity loss, and IDFSR's DiffAE initialisation ``init_weights``, which a trained
#: checkpoint replaces): :class:`PortraitRestorer` builds models without them, so restoring needs neither their
#: weights (LPIPS-VGG, the recogniser, DiffAE's checkpoint) nor their memory.
TRAINING_ONLY_PARTS = ('regularizer', 'lpips_loss', 'face_fidelity_loss', 'identity_loss', 'identity_aligner',
                       'discriminator', 'adversarial_loss', 'perceptual_loss', 'init_weights')


def without_training_parts(model_cfg: dict) -> Tuple[dict, Tuple[str, ...]]:
    """``(model config with the training-only parts set to None, the names of the parts dropped)``."""
    dropped = tuple(key for key in TRAINING_ONLY_PARTS if model_cfg.get(key) is not None)
    return dict(model_cfg, **{key: None for key in dropped}), dropped


def with_optional_taggers(cfg: Any) -> Any:
    """``cfg`` with every ``TagPrompter`` (nested ones too, e.g. a blending baseline's OSEDiff) told to restore
    without tags, after one warning, when its tagger's weights are missing (``if_tagger_missing='warn'``), unless
    the config chose otherwise. Restoring is where a missing DAPE should not stop the user; training keeps the
    configs' ``'error'``."""
    if isinstance(cfg, dict):
        out = {key: with_optional_taggers(value) for key, value in cfg.items()}
        if out.get('type') == 'TagPrompter':
            out.setdefault('if_tagger_missing', 'warn')
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(with_optional_taggers(value) for value in cfg)
    return cfg


def _load_model_weights(model: torch.nn.Module, checkpoint: PathLike,
                        dropped_parts: Sequence[str] = ()) -> Optional[int]:
    """Load a training checkpoint of this library (trainable tensors only, or a full state dict) strictly; returns
    its training length in iterations (``trained_iters`` of
    :func:`~portraitisr.engine.checkpoint_loading.checkpoint_training_info`; None when the file does not say).

    Frozen pretrained parts (SD, face networks) come from the config; every trainable tensor of the model must be
    in the checkpoint and nothing else may be, so a checkpoint of another config fails loudly. Tensors of
    ``dropped_parts`` (training-only modules the model was built without, e.g. ``discriminator``) are ignored.
    """

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
    return checkpoint_training_info(checkpoint)['trained_iters']


def _untrained_note(model, model_cfg: dict, checkpoint: Optional[PathLike], iterations: Optional[int]) -> str:
    """Why the restorations will be noise, or '' when there is no reason to think so."""

    if checkpoint is not None:
        if iterations is not None and iterations < FEW_ITERATIONS:
            return (f'the checkpoint {checkpoint} was trained for only {iterations} iteration(s): expect noise, not '
                    f'a restoration (the papers train for tens of thousands; see docs/get_started.md)')
        return ''
    backbone = model_cfg.get('backbone') or {}
    if hasattr(model, 'inference_backbone') and not backbone.get('trained_weights'):
        if backbone.get('pretrained'):
            return ('no trained weights: the trainable parts (LoRA, conv_in) keep their initial values, so the model '
                    'restores like the untuned base network; give --checkpoint')
        return ('no checkpoint and no pretrained weights: the model restores with random weights (pure noise); '
                'give --checkpoint')
    if not hasattr(model, 'inference_backbone') and trainable_names(model):
        return 'no checkpoint: the model\'s trainable parts keep their initial values; give --checkpoint'
    return ''


class PortraitRestorer:
    """Restore images with a portraitisr model.

    Args:
        config: a config file path (or a loaded mmengine ``Config``) whose ``model`` is a one-step restorer
            (OSEDiff, HeadsUp) or a blending baseline.
        checkpoint: a training checkpoint of this library for that config (``work_dir/iter_N.pth``), or None
            for models whose weights all come from the config.
        device: ``'cuda'``, ``'cpu'``, ...; default CUDA when available.
        scale: output size / input size, a positive integer. One-step models take any; default the model's
            (blending ``upscale``) or 4 (the papers' x4 setting).
        tile: tile size in output pixels. None (default): one-step models pick it per image from the image size,
            the model and the free memory (:mod:`.memory_plan`), other models run untiled; a number: that tile for
            every image, through the model's own tiling (a model without tiling raises ``ValueError``); 0: never
            tile.
        max_memory: the memory budget in bytes for the automatic tiling (GPU memory on a GPU); default
            :data:`~portraitisr.apis.memory_plan.BUDGET_FRACTION` of the memory free when an image starts.
        cfg_options: config overrides, as ``--cfg-options`` takes them.
        precision: for one-step models, ``'auto'`` (a merged-LoRA copy in bf16 on CUDA, merged float32 on the
            CPU, where bf16 is slower without AMX), ``'bf16'``, ``'fp32'`` (merged float32) or ``'unmerged'``
            (the training path: LoRA layers kept, float32). See ``OneStepRestorer.enable_fast_inference``.
        keep_training_parts: build the losses, regulariser and discriminator too (default: built without them,
            see :data:`TRAINING_ONLY_PARTS`; a training checkpoint's tensors of those parts are then ignored).

    Warns ``UntrainedModelWarning`` once when the weights are random or barely trained (:attr:`untrained_note`).
    Use :meth:`from_zoo` for a model-zoo name.
    """

    def __init__(self, config, checkpoint: Optional[PathLike] = None, device: Optional[str] = None,
                 scale: Optional[int] = None, tile: Optional[int] = None, cfg_options: Optional[dict] = None,
                 precision: str = 'auto', keep_training_parts: bool = False,
                 max_memory: Optional[int] = None) -> None:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        for name, value in (('scale', scale), ('tile', tile), ('max_memory', max_memory)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise TypeError(f'{name} must be an integer, got {value!r}')
        if scale is not None and scale < 1:
            raise ValueError(f'scale must be a positive integer, got {scale}')
        if tile is not None and tile < 0:
            raise ValueError(f'tile must be a positive number of pixels (0: never tile), got {tile}')
        if max_memory is not None and max_memory <= 0:
            raise ValueError(f'max_memory must be a positive number of bytes, got {max_memory}')
        cfg = Config.fromfile(os.fspath(config)) if not isinstance(config, Config) else config
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        init_default_scope(cfg.get('default_scope', 'portraitisr'))
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        model_cfg, dropped = (dict(cfg.model), ()) if keep_training_parts else without_training_parts(cfg.model)
        model = MODELS.build(with_optional_taggers(model_cfg))
        self.training_iterations = _load_model_weights(model, checkpoint, dropped) if checkpoint is not None else None
        self.untrained_note = _untrained_note(model, model_cfg, checkpoint, self.training_iterations)
        if self.untrained_note:
            warnings.warn(self.untrained_note, UntrainedModelWarning, stacklevel=2)
        self.model = model.to(self.device).eval()
        # Blending baselines upscale themselves (their ``upscale``); one-step models restore at the output size.
        self.upsamples_itself = hasattr(self.model, 'general_sr')
        native = getattr(self.model, 'upscale', None) if self.upsamples_itself else None
        self.scale = int(scale or native or 4)
        if self.upsamples_itself and native is not None and self.scale != native:
            raise ValueError(f'{type(self.model).__name__} upscales by {native}; scale={self.scale} is not possible')
        self.tile = tile
        self.max_memory = max_memory
        self._restore_kwargs = self._tiling_kwargs(tile) if tile else {}
        self.precision = self._use_precision(precision)
        self.eval_seed = int(getattr(self.model, 'eval_seed', 0))
        self._activations: Optional[memory_plan.ActivationProfile] = None

    @classmethod
    def from_zoo(cls, name: str, checkpoint: Optional[PathLike] = None, **kwargs) -> 'PortraitRestorer':
        """Build the model-zoo entry ``name`` from weights already on this machine (never downloads). Its config
        is the installed package's (next to the imported ``portraitisr``), never a file of the current folder.

        Raises:
            WeightsNotFoundError: naming every missing file and ``portraitisr download NAME`` (or how to train an
                unreleased model, unless ``checkpoint`` is given), before anything is built.
        """
        zoo = model_zoo.load_index()
        entry = model_zoo.get_model(name, zoo)
        found = model_zoo.check_available(name, zoo, need_checkpoint=checkpoint is None)
        options = dict(kwargs.pop('cfg_options', None) or {})
        if entry.checkpoint is not None and checkpoint is None:
            options[entry.checkpoint_option] = str(found[entry.checkpoint])
        return cls(zoo_config_path(entry.config, name), checkpoint=checkpoint, cfg_options=options, **kwargs)

    # ------------------------------------------------------------------ what the model takes
    @property
    def takes_reference(self) -> bool:
        """Whether the model restores with a reference face (HeadsUp)."""
        return 'ref' in inspect.signature(self.model.restore).parameters

    @property
    def min_input_side(self) -> int:
        """The smallest input side this model restores: one-step models need ``scale x side`` of at least the VAE
        factor (8), so the reflect padding to a multiple of it has pixels to mirror."""
        if hasattr(self.model, 'inference_backbone'):
            return max(1, -(-int(self.model._backbone.vae_downscale) // self.scale))
        return 1

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

        One-step models with ``set_tiling`` (latent tiling of the VAE and the UNet) get a ``LatentTiling`` with
        OSEDiff's proportions (:func:`~portraitisr.apis.memory_plan.latent_tiling_for`); a model whose ``restore``
        takes ``tile=`` gets it per call (returned as keyword arguments); any other model cannot tile and says so.
        """
        if tile is None:
            return {}
        if tile <= 0:
            raise ValueError(f'tile must be a positive number of pixels, got {tile}')
        if hasattr(self.model, 'set_tiling'):
            self.model.set_tiling(memory_plan.latent_tiling_for(tile, int(self.model._backbone.vae_downscale)))
            return {}
        if 'tile' in inspect.signature(self.model.restore).parameters:
            return {'tile': int(tile)}
        raise ValueError(f'{type(self.model).__name__} has no tiling option; run without --tile '
                         '(or on a smaller image / a GPU with more memory)')

    def preferred_tile(self) -> Tuple[int, int]:
        """``(largest tile, largest untiled output side)`` of the automatic tiling (larger tiles cost time: the
        self-attention of the VAE and the UNet grows with the square of a tile's pixels). On the CPU 256 and 512,
        where the tiny model runs fastest (CPU-seconds per output megapixel, one thread: 1.6 / 1.8 / 2.7 untiled at
        384 / 512 / 768 pixels, 2.5 / 2.9 / 2.1 with 256-pixel tiles, 2.6 with 512 at 768;
        ``tools/benchmarks/restore_memory.py --speed``); on a GPU 768 for both (OSEDiff's 96-latent UNet tile,
        reference section 1 "Tiling")."""
        return (768, 768) if self.device.type == 'cuda' else (256, 512)

    def activation_profile(self) -> memory_plan.ActivationProfile:
        """The model's activations per tile pixel (probed once, :func:`~.memory_plan.probe_activations`)."""
        if self._activations is None:
            self._activations = memory_plan.probe_activations(self.model.inference_backbone)
        return self._activations

    def plan(self, size: Tuple[int, int], file_bytes: int = 0, bit_depth: int = 8, gray: bool = False,
             alpha: bool = False, compare: bool = False, in_memory: bool = False) -> memory_plan.TilePlan:
        """The tiling and memory estimate for restoring an ``(h, w)`` image now (one-step models).

        With ``tile`` fixed, that tile (0: untiled) and its estimate; else the largest tile that fits the budget.

        Raises:
            MemoryBudgetError: nothing fits the budget (the message gives the estimate).
        """
        on_gpu = self.device.type == 'cuda'
        kwargs = dict(file_bytes=file_bytes, bit_depth=bit_depth, gray=gray, alpha=alpha, compare=compare,
                      in_memory=in_memory, on_gpu=on_gpu)
        if on_gpu:
            kwargs.update(base=memory_plan.process_rss() or 0, device_base=torch.cuda.memory_allocated(self.device))
        else:
            kwargs.update(base=memory_plan.process_rss() or 0)
        profile = self.activation_profile()
        if self.tile is not None:  # fixed: LatentTiling's 'auto' GroupNorm mode, as _tiling_kwargs sets it
            tile = self.tile or None
            exact = on_gpu and tile is not None
            estimate = memory_plan.estimate_restore_memory(size, self.scale, tile, profile, exact_group_norm=exact,
                                                           **kwargs)
            return memory_plan.TilePlan(tile=tile, estimate=estimate, budget=self.max_memory, scale=self.scale,
                                        group_norm='auto')
        free = memory_plan.device_available_memory(self.device)
        budget = self.max_memory
        if budget is None and free is not None:
            # the budget covers the whole process: what it holds already plus a share of what is free
            budget = int(memory_plan.BUDGET_FRACTION * free) + (kwargs['device_base'] if on_gpu else kwargs['base'])
        host_free = memory_plan.host_available_memory() if on_gpu else None
        host_budget = None if host_free is None else int(memory_plan.BUDGET_FRACTION * host_free) + kwargs['base']
        preferred, untiled_up_to = self.preferred_tile()
        return memory_plan.plan_tiling(size, self.scale, profile, budget, preferred, untiled_up_to,
                                       host_budget=host_budget, **kwargs)

    # ------------------------------------------------------------------ identity
    def set_identity(self, identity: Union[PathLike, Tensor, None]) -> None:
        """Restore every image from now on with a fitted identity embedding (IDFSR).

        Args:
            identity: a ``.safetensors`` file of ``tools/fit_identity.py`` (or a ``D`` tensor); None goes back to the
                model's own test-time identity.

        Raises:
            ValueError: the model takes no identity embedding, or the file is not an identity embedding of the
                model's width (nothing is changed then).
        """
        takes_identity = hasattr(self.model, 'set_identity') and getattr(self.model, 'uses_identity', False)
        if identity is not None and not takes_identity:
            raise ValueError(f'{type(self.model).__name__} takes no identity embedding (an IDFSR config with an '
                             'identity embedder does)')
        if takes_identity:
            self.model.set_identity(identity if identity is None or isinstance(identity, Tensor)
                                    else os.fspath(identity))

    # ------------------------------------------------------------------ tensors
    def _check_tensor(self, images: Tensor, what: str) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'{what}: expected B x 3 x H x W, got {tuple(images.shape)}')
        if not images.is_floating_point():
            raise TypeError(f'{what} must be a float tensor in [0, 1], got {images.dtype}')
        if images.numel() == 0:
            raise ValueError(f'{what} is empty ({tuple(images.shape)})')
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f'{what} has NaN or infinite values')
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise ValueError(f'{what} values span {low:g}..{high:g}, outside [0, 1]')

    def _check_size(self, height: int, width: int) -> None:
        if height == 0 or width == 0:
            raise ValueError(f'the image is empty ({width}x{height})')
        side = self.min_input_side
        if min(height, width) < side:
            raise ValueError(f'the image is {width}x{height}: {type(self.model).__name__} at x{self.scale} needs at '
                             f'least {side}x{side} pixels')

    def _auto_tiling_for_tensor(self, lq: Tensor) -> None:
        """Automatic tiling for :meth:`restore_tensor` of a one-step model: untiled when the output fits in
        :meth:`preferred_tile`, else tiles of that size (whole tensors are held regardless, so there is no budget
        to plan against; the tiles keep the networks' activations bounded and the attention fast)."""
        if self.tile is None and hasattr(self.model, 'set_tiling'):
            longest = max(lq.shape[-2:]) * self.scale
            tile, untiled_up_to = self.preferred_tile()
            factor = int(self.model._backbone.vae_downscale)
            self.model.set_tiling(None if longest <= untiled_up_to else memory_plan.latent_tiling_for(tile, factor))

    @torch.no_grad()
    def restore_tensor(self, lq: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        """``B x 3 x H x W`` float in [0, 1] -> ``B x 3 x (scale H) x (scale W)`` in [0, 1] (on the input's device).

        Args:
            ref: HeadsUp only: aligned reference faces ``B x 3 x S x S`` in [0, 1] (FFHQ template); the face
                they belong to is detected in the photo (largest face).

        Raises:
            ValueError / TypeError: a wrong shape, dtype, NaN/Inf, values outside [0, 1], an image smaller than
                :attr:`min_input_side`, or a reference for a model that takes none.
        """
        self._check_tensor(lq, 'lq')
        self._check_size(lq.shape[-2], lq.shape[-1])
        source_device = lq.device
        lq = lq.to(self.device, torch.float32)
        conditions = dict(self._restore_kwargs)
        if ref is not None:
            if not self.takes_reference:
                raise ValueError(f'{type(self.model).__name__} takes no reference face (HeadsUp does)')
            self._check_tensor(ref, 'ref')
            conditions['ref'] = ref.to(self.device, torch.float32)
        self._auto_tiling_for_tensor(lq)
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
                # The VAE posterior is sampled: a fixed seed makes the same photo restore the same way every time.
                torch.manual_seed(self.eval_seed)
                if self.upsamples_itself:
                    sr = self.model.restore(lq, **conditions)
                else:
                    size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
                    upscaled = F.interpolate(lq, size=size, mode='bicubic', align_corners=False).clamp(0, 1)
                    sr = self.model.restore(upscaled, **conditions)
        finally:
            if self.tile is None and hasattr(self.model, 'set_tiling'):
                self.model.set_tiling(None)
        return sr.float().clamp(0, 1).to(source_device)

    # ------------------------------------------------------------------ arrays and files
    def _split_array(self, rgb: np.ndarray, alpha: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Validate an input array (and alpha); ``H x W x 4`` is RGBA, ``H x W x 1`` and ``H x W`` gray."""
        rgb = np.asarray(rgb)
        if rgb.ndim == 3 and rgb.shape[2] == 4:
            if alpha is not None:
                raise ValueError('rgb has 4 channels (RGBA) and an alpha was given too: pass one of them')
            rgb, alpha = rgb[..., :3], rgb[..., 3]
        if rgb.ndim == 3 and rgb.shape[2] == 1:
            rgb = rgb[..., 0]
        if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
            raise ValueError(f'rgb must be H x W x 3, H x W x 4 (RGBA), H x W x 1 or H x W, got shape {rgb.shape}')
        rgb = unit_float_image(rgb, 'rgb')
        if alpha is not None:
            alpha = np.asarray(alpha)
            if alpha.ndim == 3 and alpha.shape[2] == 1:
                alpha = alpha[..., 0]
            if alpha.shape != rgb.shape[:2]:
                raise ValueError(f'alpha must be H x W = {rgb.shape[:2]} like the image, got shape {alpha.shape}')
            alpha = unit_float_image(alpha, 'alpha')
        return rgb, alpha

    def restore_array(self, rgb: np.ndarray, alpha: Optional[np.ndarray] = None, bit_depth: int = 8,
                      ref: Optional[np.ndarray] = None, progress: Optional[TileProgress] = None) -> RestoredImage:
        """Restore an image array: ``H x W x 3`` RGB, ``H x W x 4`` RGBA, ``H x W x 1`` or ``H x W`` gray.

        Samples are uint8 (/ 255), uint16 (/ 65535) or float in [0, 1]; anything else (other dtypes, floats
        outside [0, 1], NaN, infinity) raises instead of being clipped. ``alpha`` (``H x W``, same rules) is
        upscaled bicubically and re-attached; a gray input (2-D, or 3 equal channels) comes out as ``H' x W'``
        gray; ``bit_depth`` is passed through for :meth:`RestoredImage.save`. The result is float32 in [0, 1].

        Raises:
            TypeError / ValueError: the input breaks the rules above, or is smaller than :attr:`min_input_side`.
            MemoryBudgetError: the image does not fit the memory budget (nothing was computed).
        """
        rgb, alpha = self._split_array(rgb, alpha)
        ref_rgb = self._split_array(ref, None)[0] if ref is not None else None
        return self._restore(rgb, alpha, bit_depth, ref_rgb, in_memory=True, progress=progress)

    def restore_record(self, record: ImageRecord, ref: Optional[np.ndarray] = None,
                       progress: Optional[TileProgress] = None) -> RestoredImage:
        """Restore an image read by :func:`~portraitisr.utils.image_io.read_image` (float32 result)."""
        return self.restore_array(record.rgb, record.alpha, record.bit_depth, ref=ref, progress=progress)

    def _restore(self, rgb: np.ndarray, alpha: Optional[np.ndarray], bit_depth: int, ref: Optional[np.ndarray],
                 in_memory: bool, progress: Optional[TileProgress] = None, compare: bool = False,
                 file_bytes: int = 0,
                 on_plan: Optional[Callable[[memory_plan.TilePlan], None]] = None) -> RestoredImage:
        """Restore validated float32 arrays. ``in_memory``: float32 result; else the file's integer type, made
        band by band (the memory-light path of :meth:`restore_file`)."""
        height, width = rgb.shape[:2]
        self._check_size(height, width)
        if ref is not None and not self.takes_reference:
            raise ValueError(f'{type(self.model).__name__} takes no reference face (HeadsUp does)')
        gray = rgb.ndim == 2 or _is_gray(rgb)
        out_dtype = np.float32 if in_memory else (np.uint16 if bit_depth == 16 else np.uint8)
        conditions = {'ref': ref}
        if can_stream(self.model, conditions) and not self._restore_kwargs.get('tile'):
            plan = self.plan((height, width), file_bytes=file_bytes, bit_depth=bit_depth, gray=gray,
                             alpha=alpha is not None, compare=compare, in_memory=in_memory)
            if on_plan is not None:
                on_plan(plan)
            lq = image_to_tensor(rgb).to(self.device)
            image = self._restore_streamed(lq, plan, gray, out_dtype, progress)
            del lq
        else:
            ref_tensor = image_to_tensor(ref) if ref is not None else None
            with report_tiles(_tile_counter(progress, None)):
                sr = tensor_to_image(self.restore_tensor(image_to_tensor(rgb), ref=ref_tensor))
            if gray:
                sr = np.clip(sr @ _LUMA, 0.0, 1.0)
            image = sr if in_memory else _quantize(sr, out_dtype)
        out_alpha = None
        if alpha is not None:
            # The model sees colour only; the alpha plane is smooth, so bicubic upscaling is enough.
            out_alpha = _upscale_plane(alpha, self.scale, out_dtype)
        return RestoredImage(image, out_alpha, bit_depth)

    def _restore_streamed(self, lq: Tensor, plan: memory_plan.TilePlan, gray: bool, out_dtype,
                          progress: Optional[TileProgress]) -> np.ndarray:

        factor = int(self.model._backbone.vae_downscale)
        tiling = None if plan.tile is None else memory_plan.latent_tiling_for(plan.tile, factor, plan.group_norm)
        height, width = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        padded = (height + (-height) % factor, width + (-width) % factor)
        total = 3 if tiling is None else sum(stage_tile_counts(tiling, padded, factor,
                                                               _unet_align(self.model.inference_backbone)))
        sink = RowSink(height, width, np.float32 if out_dtype == np.float32 else np.uint16)
        with report_tiles(_tile_counter(progress, total)):
            scale, shift = restore_streamed(self.model, lq, self.scale, tiling, sink, self.eval_seed)
        return _finish_rows(sink, scale, shift, gray, out_dtype)

    def restore_file(self, path: PathLike, output: PathLike, ref: Optional[PathLike] = None,
                     compare: Optional[PathLike] = None, progress: Optional[TileProgress] = None,
                     max_pixels: Optional[int] = None,
                     on_plan: Optional[Callable[[memory_plan.TilePlan], None]] = None) -> Path:
        """Read ``path``, restore it and write ``output`` (alpha and bit depth kept).

        Args:
            ref: a reference-face image file (HeadsUp).
            compare: also write a side-by-side image here: the input upscaled (nearest neighbour, so its pixels
                stay visible) on the left, the restoration on the right.
            progress: called with ``(tiles done, tiles in all)`` as the model's tiles finish.
            max_pixels: the reader's pixel limit (None: ``read_image``'s default).
            on_plan: called with the :class:`~portraitisr.apis.memory_plan.TilePlan` before the model runs (models
                restored by :mod:`.streamed_restore`).

        Raises:
            ImageReadError: the input cannot be decoded (nothing is written).
            MemoryBudgetError: the image does not fit the memory budget (nothing was computed or written).
        """
        record = read_image(path, max_pixels=max_pixels)
        ref_rgb = read_image(ref, max_pixels=max_pixels).rgb if ref is not None else None
        restored = self._restore(record.rgb, record.alpha, record.bit_depth, ref_rgb, in_memory=False,
                                 progress=progress, compare=compare is not None,
                                 file_bytes=Path(path).stat().st_size, on_plan=on_plan)
        written = restored.save(output)
        if compare is not None:
            write_comparison(compare, record, restored)
        return written

    @staticmethod
    def output_name(path: PathLike) -> str:
        """The file name an output of ``path`` gets: the same name, PNG for formats that cannot be written."""
        path = Path(path)
        return path.stem + output_suffix(path)


def _unet_align(backbone) -> int:

    return unet_downscale(backbone.unet)


def _tile_counter(progress: Optional[TileProgress], total: Optional[int]) -> Callable[[int], None]:
    """A :func:`report_tiles` callback that forwards ``(done, total)`` to ``progress`` (``total`` grows when the
    stages were not counted ahead)."""
    state = {'done': 0, 'total': total or 0}

    def count(n: int) -> None:
        state['done'] += n
        state['total'] = max(state['total'], state['done'])
        if progress is not None:
            progress(state['done'], state['total'])
    return count


def _quantize(values: np.ndarray, dtype) -> np.ndarray:
    """Float values in [0, 1] -> ``dtype`` (uint8 / uint16 at full range, rounded; float32 as they are)."""
    if dtype == np.float32:
        return values.astype(np.float32, copy=False)
    top = 255.0 if dtype == np.uint8 else 65535.0
    return np.rint(np.clip(values, 0.0, 1.0) * top).astype(dtype)


def _finish_rows(sink: RowSink, scale: np.ndarray, shift: np.ndarray, gray: bool, dtype) -> np.ndarray:
    """Apply the colour fix ``clip(scale * x + shift, 0, 1)`` to the stored rows, convert gray results to one
    plane, and give ``dtype``; band by band, in place where the stored type is the result's."""
    height, width = sink.array.shape[:2]
    in_place = not gray and sink.array.dtype == np.dtype(dtype)
    out = sink.array if in_place else np.empty((height, width) if gray else (height, width, 3), dtype=dtype)
    for top in range(0, height, BAND_ROWS):
        bottom = min(top + BAND_ROWS, height)
        rows = np.clip(sink.float_rows(top, bottom) * scale + shift, 0.0, 1.0)
        if gray:
            rows = np.clip(rows @ _LUMA, 0.0, 1.0)
        out[top:bottom] = _quantize(rows, dtype)
    sink.array = out if in_place else None  # the stored rows are not needed any more
    return out


def _upscale_plane(plane: np.ndarray, scale: int, dtype) -> np.ndarray:
    """Bicubic x``scale`` of an ``h x w`` float plane in [0, 1] (clipped), made band by band in ``dtype``."""
    source = UpscaledImage(torch.from_numpy(np.ascontiguousarray(plane))[None, None], scale)
    height, width = source.size
    out = np.empty((height, width), dtype=dtype)
    for top in range(0, height, BAND_ROWS):
        bottom = min(top + BAND_ROWS, height)
        out[top:bottom] = _quantize(source.crop(top, bottom, 0, width)[0, 0].numpy(), dtype)
    return out


def _as_float(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    if values.dtype == np.uint16:
        return values.astype(np.float32) / 65535.0
    return values


def write_comparison(path: PathLike, record: ImageRecord, restored: RestoredImage) -> Path:
    """Input (nearest-neighbour upscaled to the output size) | output, side by side, 8-bit RGB, made band by band.

    Transparent pixels are shown over white so that both halves look as a viewer would show them.
    """
    out = restored.rgb
    height, width = out.shape[:2]
    in_h, in_w = record.rgb.shape[:2]
    # nearest neighbour as cv2.INTER_NEAREST picks it: source index floor(dst * in / out)
    rows_src = (np.arange(height) * in_h // height)
    cols_src = (np.arange(width) * in_w // width)
    picture = np.empty((height, 2 * width, 3), dtype=np.uint8)
    for top in range(0, height, BAND_ROWS):
        bottom = min(top + BAND_ROWS, height)
        left = record.rgb[rows_src[top:bottom]][:, cols_src]
        if record.alpha is not None:
            a = record.alpha[rows_src[top:bottom]][:, cols_src][..., None]
            left = left * a + (1 - a)
        right = _as_float(out[top:bottom])
        if right.ndim == 2:
            right = np.repeat(right[..., None], 3, axis=2)
        if restored.alpha is not None:
            a = _as_float(restored.alpha[top:bottom])[..., None]
            right = right * a + (1 - a)
        picture[top:bottom, :width] = _quantize(left, np.uint8)
        picture[top:bottom, width:] = _quantize(right, np.uint8)
    return write_image(path, picture, bit_depth=8)
