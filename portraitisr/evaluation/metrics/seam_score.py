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

The geometry (:func:`seam_score`) lives in :mod:`portraitisr.utils.seam_geometry`, shared with the latent
tiling of the backbones.
:class:`SeamScore` takes the mask from ``metainfo['paste_mask']`` when the restorer gives it, otherwise it rebuilds
facexlib's paste-back mask from the face landmarks, so methods that do not paste (e.g. HeadsUp) are measured on the
same curve as the ones that do.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, METRICS
from portraitisr.utils.seam_geometry import gaussian_derivative_kernels, seam_score, signed_distance
from .base_metric import ImageMetric
from .face_region import find_landmarks

__all__ = ['seam_score', 'gaussian_derivative_kernels', 'signed_distance', 'SeamScore']


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
