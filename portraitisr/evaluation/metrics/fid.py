"""FID through pyiqa's clean-fid re-implementation (pyiqa is optional and non-commercial; imported lazily).

FID is a *set* metric: the Frechet distance between Gaussians fitted to the 2048-d pool3 Inception features of
two image sets (or of one set and stored statistics ``mu``/``sigma``). It has no per-image value, so :class:`FID`
is a plain :class:`mmengine.evaluator.BaseMetric`: ``process`` stores the features of each prediction (and of its
ground truth), ``compute_metrics`` fits the Gaussians and returns one number. The tools use
:func:`fid_between_folders` (OSEDiff: ``fid_metric(gt_dir, sr_dir)``) and :func:`fid_against_stats` (e.g. clean-fid's
``ffhq_clean_trainval70k_512.npz``).

The Inception is pyiqa's port of the TF FID network, ``pt_inception-2015-12-05-6726825d.pth``, resolved by
:func:`~portraitisr.weights.resolve_file` (offline first; a missing file raises
:class:`WeightsNotFoundError` before any network access). pyiqa's ``inception`` module would fetch it from its URL
and unpickle it freely; while the network is built, that module's loader is replaced by ours
(``weights_only=True``), then restored.

Modes (pyiqa / clean-fid): ``'clean'`` (default, as pyiqa and OSEDiff): PIL bicubic resize of each float channel
to 299, then ``(x - 128) / 128``; ``'legacy_pytorch'``: bilinear ``F.interpolate`` (pytorch-fid);
``'legacy_tensorflow'``: TF1-style bilinear. Folders go through pyiqa's own ``get_folder_features``; tensors in
the runner go through the same resize steps (written here), on 8-bit-quantized images, as if saved as PNG.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from torch import Tensor

from portraitisr.weights import WeightSpec, resolve_file
from portraitisr.registry import METRICS
from .pyiqa_metrics import WeightFile, import_pyiqa, load_checkpoint_into, pyiqa_url, resolve_weight

__all__ = ['FID', 'INCEPTION_WEIGHTS', 'FID_MODES', 'fid_between_folders', 'fid_against_stats', 'frechet_distance',
           'load_fid_stats', 'gaussian_of']

INCEPTION_WEIGHTS = WeightFile('pt_inception-2015-12-05-6726825d.pth',
                               pyiqa_url('pt_inception-2015-12-05-6726825d.pth'))
FID_MODES = ('clean', 'legacy_pytorch', 'legacy_tensorflow')
_PYIQA_STATS = ('ffhq_clean_trainval70k_512.npz', 'ffhq_clean_trainval70k_512_kid.npz')
_CLEANFID_STATS_URL = 'https://www.cs.cmu.edu/~clean-fid/stats/{}'


@contextlib.contextmanager
def _inception_loader(path: Path) -> Iterator[None]:
    """While pyiqa builds its FID Inception, load ``path`` safely instead of downloading pyiqa's URL."""
    from pyiqa.archs import inception as inception_module

    original = inception_module.load_pretrained_network

    def load_pretrained_network(net: torch.nn.Module, model_path: str, strict: bool = True,
                                weight_keys: Optional[str] = None) -> None:
        load_checkpoint_into(net, path, strict=strict, key=weight_keys)

    inception_module.load_pretrained_network = load_pretrained_network
    try:
        yield
    finally:
        inception_module.load_pretrained_network = original


def build_fid_inception(weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None) -> Any:
    """pyiqa's FID network (``pyiqa.archs.fid_arch.FID``, 2048-d pool3 features) with resolved weights, on CPU."""
    import_pyiqa()
    path = resolve_weight(weights, INCEPTION_WEIGHTS, allow_download)
    from pyiqa.archs.fid_arch import FID as PyiqaFID

    with _inception_loader(path):
        net = PyiqaFID(dims=2048)
    return net.eval().requires_grad_(False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of two Gaussians (``mu`` ``(D,)``, ``sigma`` ``(D, D)``), pyiqa's (clean-fid's) formula."""
    import_pyiqa()
    from pyiqa.archs.fid_arch import frechet_distance as pyiqa_frechet_distance

    return float(pyiqa_frechet_distance(mu1, sigma1, mu2, sigma2))


def gaussian_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``N x D`` features (as pyiqa: ``np.cov(rowvar=False)``)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f'FID needs at least 2 images, got features of shape {features.shape}')
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _stats_spec(stats: WeightSpec) -> dict:
    if isinstance(stats, (str, os.PathLike)):
        text = os.fspath(stats)
        if not os.path.exists(text) and os.sep not in text and '/' not in text and text.endswith('.npz'):
            url = pyiqa_url(text) if text in _PYIQA_STATS else _CLEANFID_STATS_URL.format(text)
            return {'filename': text, 'url': url}
        return {'path': text}
    return dict(stats)


def load_fid_stats(stats: WeightSpec, allow_download: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (D,), sigma (D, D))`` from an ``.npz`` with keys ``mu`` and ``sigma`` (clean-fid's layout).

    ``stats`` is a path, or a clean-fid statistics file name such as ``'ffhq_clean_trainval70k_512.npz'`` looked up
    in the caches (and downloaded from pyiqa's / clean-fid's URL only when allowed).
    """
    path = resolve_file(_stats_spec(stats), allow_download=allow_download)
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data['mu'], dtype=np.float64), np.asarray(data['sigma'], dtype=np.float64)


def _check_mode(mode: str) -> str:
    if mode not in FID_MODES:
        raise ValueError(f'FID mode must be one of {FID_MODES}, got {mode!r}')
    return mode


@METRICS.register_module()
class FID(BaseMetric):
    """Frechet Inception Distance (lower is better) of the predictions against their ground truths or stored
    statistics; a set metric (one value per test set, meaningful for hundreds of images or more).

    In the runner, ``process`` takes data samples with ``pred`` (and ``gt``): ``3 x H x W`` RGB in [0, 1].

    Args:
        mode: ``'clean'`` (default, pyiqa's and OSEDiff's), ``'legacy_pytorch'`` or ``'legacy_tensorflow'``.
        stats: ``.npz`` statistics (``mu``, ``sigma``) to compare the predictions with instead of the ground
            truths (a path or a clean-fid file name, see :func:`load_fid_stats`).
        weights: the Inception weights (default ``pt_inception-2015-12-05-6726825d.pth``).
        allow_download: ``None`` reads ``PORTRAITISR_ALLOW_DOWNLOAD``.
        batch_size, num_workers: for folders (pyiqa's defaults 8 and 4).
        device: where the Inception runs (default: CUDA when available, as pyiqa).
        quantize: round predictions to 8-bit levels first (as if saved as PNG).
    """

    metric_name = 'FID'
    lower_better = True
    needs_gt = True
    default_prefix = ''

    def __init__(self, mode: str = 'clean', stats: Optional[WeightSpec] = None,
                 weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None, batch_size: int = 8,
                 num_workers: int = 4, device: Optional[Union[str, torch.device]] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.mode = _check_mode(mode)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.quantize = quantize
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        # Statistics first: a missing file fails before the Inception is built.
        self.stats = load_fid_stats(stats, allow_download) if stats is not None else None
        self.net = build_fid_inception(weights, allow_download).to(self.device)
        self.needs_gt = stats is None

    # ---------------------------------------------------------------------------------------------- features
    def _resize(self, images: Tensor) -> Tensor:
        """``B x 3 x H x W`` float in [0, 255] (8-bit levels) -> ``B x 3 x 299 x 299`` as pyiqa's ResizeDataset."""
        size = tuple(self.net.test_img_size)
        if self.mode == 'clean':
            from PIL import Image

            out = np.empty((images.shape[0], 3) + size, dtype=np.float32)
            array = images.detach().cpu().numpy().astype(np.float32)
            for b in range(array.shape[0]):
                for c in range(3):
                    channel = Image.fromarray(array[b, c], mode='F').resize(size[::-1], resample=Image.BICUBIC)
                    out[b, c] = np.asarray(channel).clip(0, 255)
            return torch.from_numpy(out)
        images = images.float().clamp(0, 255)
        if self.mode == 'legacy_tensorflow':
            from pyiqa.archs.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
            return interpolate_bilinear_2d_like_tensorflow1x(images, size=size, align_corners=False)
        return torch.nn.functional.interpolate(images, size=size, mode='bilinear', align_corners=False)

    @torch.no_grad()
    def features_of_images(self, images: Tensor) -> np.ndarray:
        """Pool3 features ``B x 2048`` (float32) of ``B x 3 x H x W`` RGB images in [0, 1]."""
        levels = torch.round(images.float().clamp(0, 1) * 255) if self.quantize else images.float() * 255
        batch = self._resize(levels).to(self.device)
        if self.mode == 'legacy_pytorch':
            feats = self.net.model(batch / 255, False, True)[0]
        else:
            feats = self.net.model((batch - 128) / 128, False, False)[0]
        return feats.reshape(feats.shape[0], -1).cpu().numpy()

    def features_of_folder(self, folder: Union[str, os.PathLike]) -> np.ndarray:
        """Pool3 features ``N x 2048`` of the images in ``folder`` (pyiqa's ``get_folder_features``)."""
        from pyiqa.archs.fid_arch import get_folder_features

        if not Path(folder).is_dir():
            raise FileNotFoundError(f'FID: {folder} is not a folder')
        return get_folder_features(os.fspath(folder), self.net.model, num_workers=self.num_workers,
                                   batch_size=self.batch_size, test_img_size=self.net.test_img_size,
                                   device=self.device, mode=self.mode, verbose=False)

    # ---------------------------------------------------------------------------------------------- distances
    def between_folders(self, dir1: Union[str, os.PathLike], dir2: Union[str, os.PathLike]) -> float:
        """FID between two folders of images (symmetric)."""
        return frechet_distance(*gaussian_of(self.features_of_folder(dir1)),
                                *gaussian_of(self.features_of_folder(dir2)))

    def against_stats(self, folder: Union[str, os.PathLike], stats: Optional[WeightSpec] = None,
                      allow_download: Optional[bool] = None) -> float:
        """FID of a folder against stored statistics (``stats``, else the ones given at construction)."""
        if stats is not None:
            mu, sigma = load_fid_stats(stats, allow_download)
        elif self.stats is not None:
            mu, sigma = self.stats
        else:
            raise ValueError('FID.against_stats: no statistics given (stats= here or at construction)')
        return frechet_distance(*gaussian_of(self.features_of_folder(folder)), mu, sigma)

    # ---------------------------------------------------------------------------------------------- runner
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(('pred', self.features_of_images(sample['pred'][None])[0]))
            if self.needs_gt:
                gt = sample.get('gt')
                if gt is None:
                    raise KeyError('FID against ground truth needs `gt` in the data samples (or give stats=)')
                self.results.append(('gt', self.features_of_images(gt[None])[0]))

    def compute_metrics(self, results: list) -> dict:
        preds = np.stack([f for kind, f in results if kind == 'pred']) if results else np.empty((0, 2048))
        if preds.shape[0] < 2:
            return {self.metric_name: float('nan')}
        if self.stats is not None:
            mu2, sigma2 = self.stats
        else:
            mu2, sigma2 = gaussian_of(np.stack([f for kind, f in results if kind == 'gt']))
        return {self.metric_name: frechet_distance(*gaussian_of(preds), mu2, sigma2)}


def fid_between_folders(dir1: Union[str, os.PathLike], dir2: Union[str, os.PathLike], *, mode: str = 'clean',
                        weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                        batch_size: int = 8, num_workers: int = 4,
                        device: Optional[Union[str, torch.device]] = None) -> float:
    """FID between the images of two folders (OSEDiff: ``fid_metric(gt_dir, sr_dir)``, clean mode)."""
    metric = FID(mode=mode, weights=weights, allow_download=allow_download, batch_size=batch_size,
                 num_workers=num_workers, device=device)
    return metric.between_folders(dir1, dir2)


def fid_against_stats(folder: Union[str, os.PathLike], stats_path: WeightSpec, *, mode: str = 'clean',
                      weights: Optional[WeightSpec] = None, allow_download: Optional[bool] = None,
                      batch_size: int = 8, num_workers: int = 4,
                      device: Optional[Union[str, torch.device]] = None) -> float:
    """FID of a folder against stored statistics (e.g. ``'ffhq_clean_trainval70k_512.npz'``, ``mu``/``sigma``).

    The statistics must come from the same feature network and mode (clean-fid's clean-mode statistics were made
    with NVIDIA's TorchScript Inception; pyiqa's port may differ slightly from it).
    """
    metric = FID(mode=mode, stats=stats_path, weights=weights, allow_download=allow_download,
                 batch_size=batch_size, num_workers=num_workers, device=device)
    return metric.against_stats(folder)
