"""Seam score: how much extra edge a face paste-back leaves along its boundary (no reference needed).

A blending restorer (general SR for the whole photo + a face expert pasted back through a soft mask) can leave a
visible seam where the pasted face meets the background: a colour/brightness step or a texture change that follows
the paste boundary. This metric measures the step directly, on the curve where it would be:

* the boundary ``Gamma`` is the 0.5 level set of the paste mask ``m`` (a soft alpha in [0, 1]);
* the normal ``n`` is the gradient direction of the Gaussian-smoothed mask (``normal_sigma``);
* ``D_n = |dI/dn|`` is the magnitude of the image derivative along ``n``, taken with Gaussian derivatives at
  scale ``sigma``, in 8-bit units per pixel, averaged over the R, G and B channels;
* ``S = med(D_n on the band |s| <= w) - (med(D_n on |s - d| <= w) + med(D_n on |s + d| <= w)) / 2`` where ``s`` is
  the signed distance to ``Gamma`` (inside positive), ``w`` the band half-width and ``d`` the offset; ``med`` is the
  median over the band's pixels (``statistic='mean'`` uses the mean).

A natural image pasted seamlessly has, on average, as many edges on the curve as beside it, so ``S`` is 0 on
average and scatters around 0 image by image; a seam adds edge energy on the curve only, so ``S > 0``. ``S`` is not
clipped at 0 (a negative value means the boundary is smoother than its surroundings, e.g. a blurred blend band;
clipping would also bias dataset means of seamless pastes upwards). See ``docs/seam_score.md``.

:class:`SeamScore` takes the mask from ``metainfo['paste_mask']`` when the restorer gives it, otherwise it rebuilds
facexlib's paste-back mask from the face landmarks, so methods that do not paste (e.g. HeadsUp) are measured on the
same curve as the ones that do.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from kornia.filters import filter2d_separable
from scipy import ndimage
from torch import Tensor

from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, METRICS
from .base_metric import ImageMetric
from .face_region import find_landmarks

__all__ = ['seam_score', 'gaussian_derivative_kernels', 'signed_distance', 'SeamScore']


def gaussian_derivative_kernels(sigma: float, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """1-D Gaussian ``g`` (sums to 1) and derivative kernel ``k`` for *correlation*, both ``1 x K``, ``K = 2r+1``,
    ``r = ceil(4 sigma)``.

    ``k(t) = t g(t) / sum(t^2 g(t))``: correlating with ``k`` equals convolving with ``-g'`` up to the
    normalisation, which makes a unit ramp give exactly 1 (``sum(t k(t)) = 1``), so derivatives come out in the
    image's units per pixel.
    """
    radius = max(1, int(math.ceil(4 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-t * t / (2 * sigma * sigma))
    g = g / g.sum()
    k = t * g
    k = k / (t * k).sum()
    return g[None].to(dtype=dtype, device=device), k[None].to(dtype=dtype, device=device)


def _gradient(x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Gaussian-derivative gradient ``(d/dx, d/dy)`` of ``B x C x H x W`` (reflect border)."""
    g, k = gaussian_derivative_kernels(sigma, x.dtype, x.device)
    return filter2d_separable(x, k, g, border_type='reflect'), filter2d_separable(x, g, k, border_type='reflect')


def signed_distance(mask: Tensor, level: float = 0.5) -> Tensor:
    """Signed euclidean distance (pixels) of every pixel to the ``level`` set of ``B x 1 x H x W`` masks.

    Positive inside (``mask >= level``), negative outside. Pixel centres on either side of the curve adjacent to it
    get +-0.5 (the curve is taken half-way between the last inside and the first outside pixel). The image border
    is not a boundary. A mask that is entirely inside or outside gives ``+-inf``.
    """
    out = np.empty(mask.shape, dtype=np.float64)
    inside_all = (mask.detach().cpu().double() >= level).numpy()
    for b in range(mask.shape[0]):
        inside = inside_all[b, 0]
        if inside.all() or not inside.any():
            out[b, 0] = np.inf if inside.all() else -np.inf
            continue
        # distance_transform_edt: distance of each nonzero pixel to the nearest zero pixel
        out[b, 0] = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5,
                             -(ndimage.distance_transform_edt(~inside) - 0.5))
    return torch.from_numpy(out).to(mask.device)


def seam_score(image: Tensor, mask: Tensor, sigma: float = 1.5, offset: Optional[float] = None,
               band_width: float = 1.0, normal_sigma: Optional[float] = None, channels: str = 'rgb',
               statistic: str = 'median') -> Tensor:
    """Excess normal-derivative magnitude on the paste boundary over parallel bands beside it.

    Args:
        image: ``B x C x H x W`` (C = 3 RGB, or 1) in [0, 1]; derivatives are taken in 8-bit units (x 255).
        mask: ``B x 1 x H x W`` paste alpha in [0, 1]; the boundary is its 0.5 level set.
        sigma: scale (pixels) of the Gaussian derivative.
        offset: ``d``, distance (pixels) of the two reference bands from the boundary, inside and outside;
            default ``4 sigma`` (outside the derivative's main lobe: a hard seam barely reaches the reference
            bands).
        band_width: ``w``, half-width (pixels) of each band: pixels with ``|s - c| <= w`` belong to the band
            centred at signed distance ``c``.
        normal_sigma: scale of the Gaussian that smooths the mask before taking its gradient direction as the
            normal; default ``max(2 sigma, d)`` so the direction is defined across all three bands.
        channels: ``'rgb'`` (mean of the per-channel magnitudes: catches chroma-only seams) or ``'luma'``
            (BT.601 ``0.299 R + 0.587 G + 0.114 B``, ITU-R BT.601 luma weights).
        statistic: how a band is summarised: ``'median'`` (default) or ``'mean'`` of ``|dI/dn|`` over its pixels.
            Natural edges crossing the curve are sparse and strong (heavy-tailed), a seam shifts every boundary
            pixel: the median keeps the seam and drops most of the content scatter (on the astronaut face ellipse
            of the tests the seamless value is 0.17 with the median and 0.84 with the mean, while a hard 8-level
            seam adds 1.34 and 0.61).

    Returns:
        ``B`` float64 scores in 8-bit levels per pixel; NaN for an image whose mask has no boundary or a band with
        no pixel (e.g. a mask thinner than ``d``). Pixels within ``ceil(4 sigma)`` of the image border are left out
        of every band (the reflected border would add or hide edges).
    """
    if image.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f'image must be B x C x H x W and mask B x 1 x H x W, got {tuple(image.shape)} and '
                         f'{tuple(mask.shape)}')
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f'image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in batch or size')
    if statistic not in ('mean', 'median'):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    if channels not in ('rgb', 'luma'):
        raise ValueError(f"channels must be 'rgb' or 'luma', got {channels!r}")
    d = 4.0 * sigma if offset is None else float(offset)
    if d <= 2 * band_width:
        raise ValueError(f'offset ({d}) must exceed twice the band half-width ({band_width}): the bands would overlap')
    normal_sigma = max(2.0 * sigma, d) if normal_sigma is None else float(normal_sigma)

    x = image.detach().double() * 255.0
    if channels == 'luma':
        if x.shape[1] == 3:
            x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    m = mask.detach().double().to(x.device)

    mx, my = _gradient(m, normal_sigma)
    norm = torch.sqrt(mx * mx + my * my)
    nx, ny = mx / norm.clamp_min(1e-300), my / norm.clamp_min(1e-300)
    ix, iy = _gradient(x, sigma)
    dn = (ix * nx + iy * ny).abs().mean(1, keepdim=True)  # B x 1 x H x W, |dI/dn| in 8-bit levels per pixel

    s = signed_distance(m).to(x.device)
    valid = norm > 0
    border = int(math.ceil(4 * sigma))
    if border > 0:
        inner = torch.zeros_like(valid)
        inner[..., border:-border, border:-border] = True
        valid &= inner

    def band_mean(centre: float) -> Tensor:
        band = ((s - centre).abs() <= band_width) & valid
        if statistic == 'median':
            # nanmedian of an all-NaN row is NaN: an empty band gives NaN, as for the mean
            return torch.where(band, dn, torch.full_like(dn, float('nan'))).flatten(1).nanmedian(1).values
        count = band.flatten(1).sum(1)
        total = (dn * band).flatten(1).sum(1)
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float('nan')))

    return band_mean(0.0) - 0.5 * (band_mean(d) + band_mean(-d))


def _as_mask(value, size: tuple[int, int]) -> Tensor:
    """``metainfo['paste_mask']`` (``H x W``, ``1 x H x W`` or ``H x W x 1``; float [0, 1] or uint8) ->
    ``1 x 1 x H x W`` float64."""
    if isinstance(value, np.ndarray):
        scale = 255.0 if value.dtype == np.uint8 else 1.0
        value = torch.from_numpy(np.ascontiguousarray(value).astype(np.float64) / scale)
    else:
        value = torch.as_tensor(value)
        value = value.double() / 255.0 if value.dtype == torch.uint8 else value.double()
    value = value.squeeze()
    if value.dim() != 2:
        raise ValueError(f'paste_mask must be one H x W alpha map, got shape {tuple(value.shape)}')
    if tuple(value.shape) != tuple(size):
        value = torch.nn.functional.interpolate(value[None, None], size=size, mode='bilinear',
                                                align_corners=False)[0, 0]
    return value[None, None]


@METRICS.register_module()
class SeamScore(ImageMetric):
    """Seam score of the prediction along the face paste boundary (lower is better, 0 = no seam).

    The mask is ``sample['metainfo']['paste_mask']`` when present (a blending restorer's real paste alpha), else
    facexlib's paste-back mask rebuilt from the face landmarks (``faces_landmarks`` / ``face_landmarks``): the face
    footprint of the FFHQ-512 template, eroded and feathered as ``paste_faces_to_input_image`` does
    (:meth:`FaceAligner.square_mask`; the union over faces). Without either, a configured ``detector`` finds the
    faces on the prediction (scored images, e.g. in ``tools/eval_folders.py``, carry no metainfo); images with no
    face are skipped.

    Args:
        sigma / offset / band_width / normal_sigma / channels / statistic: see :func:`seam_score`.
        aligner: ``FACE_ALIGNERS`` config of the paste geometry (default: FFHQ template at 512, facexlib's).
        detector: optional ``FACE_DETECTORS`` config, used when a sample has neither a paste mask nor landmarks.
        quantize / prefix: as :class:`ImageMetric`.
    """

    metric_name = 'SeamScore'
    lower_better = True
    needs_gt = False

    def __init__(self, sigma: float = 1.5, offset: Optional[float] = None, band_width: float = 1.0,
                 normal_sigma: Optional[float] = None, channels: str = 'rgb', statistic: str = 'median',
                 aligner: Optional[dict] = None, detector: Optional[dict] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        self.kwargs = dict(sigma=sigma, offset=offset, band_width=band_width, normal_sigma=normal_sigma,
                           channels=channels, statistic=statistic)
        self.aligner = FACE_ALIGNERS.build(aligner or dict(type='FaceAligner', template='ffhq512'))
        self.detector = FACE_DETECTORS.build(detector) if detector is not None else None

    def paste_mask(self, size: Sequence[int], landmarks: np.ndarray) -> Tensor:
        """``1 x 1 x H x W`` union of facexlib paste masks of the ``N x 5 x 2`` faces in an ``H x W`` image."""
        matrices = self.aligner.estimate(torch.as_tensor(landmarks, dtype=torch.float64))
        soft = self.aligner.square_mask(matrices, tuple(size))
        return soft.amax(0, keepdim=True).clamp(0, 1)

    def mask_for(self, sample: Optional[dict], size: Sequence[int],
                 image: Optional[Tensor] = None) -> Optional[Tensor]:
        """The sample's paste mask (``1 x 1 x H x W``), or None when it has neither a mask nor a face (faces
        are looked for on ``image`` when a detector is configured)."""
        metainfo = (sample or {}).get('metainfo', sample or {})
        if metainfo.get('paste_mask') is not None:
            return _as_mask(metainfo['paste_mask'], tuple(size))
        landmarks = find_landmarks(metainfo, image, self.detector)
        if landmarks is None:
            return None
        return self.paste_mask(size, landmarks)

    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        if pred.shape[0] != 1:
            raise ValueError('SeamScore scores one image at a time (its mask comes from that sample)')
        mask = self.mask_for(sample, pred.shape[-2:], pred)
        if mask is None:
            return pred.new_zeros(0, dtype=torch.float64)
        value = seam_score(pred, mask.to(pred.device), **self.kwargs)
        return value[torch.isfinite(value)]
