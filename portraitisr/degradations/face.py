"""First-order blind face degradation (CodeFormer / OSEDiff-face), batched in torch, per-sample parameters.

References (orders of operations checked in the code):

* OSEDiff ``dataloaders/facesr_dataset.py::CodeformerTxtDataset.__getitem__`` with
  ``dataloaders/params_codeformer.yml``: blur with ``random_mixed_kernels(['iso', 'aniso'], [0.5, 0.5], 41,
  sigma [1, 15], sigma [1, 15], [-pi, pi])`` via ``cv2.filter2D`` (reflect-101 border) -> ``cv2.resize`` to
  ``(int(w // s), int(h // s))``, ``s ~ U(1, 30)``, ``INTER_LINEAR`` -> Gaussian noise, ``sigma ~ U(0, 20)/255``,
  colour, clipped -> OpenCV JPEG with ``int(U(30, 100))`` -> ``cv2.resize`` back to ``(w, h)``,
  ``INTER_LINEAR``. No final rounding.
* CodeFormer ``basicsr/data/ffhq_blind_dataset.py::FFHQBlindDataset.__getitem__``: the same steps (down-sizes
  from the configured ``gt_size``, equal to the input size for 512 FFHQ) followed by
  ``clip(round(255 x), 0, 255) / 255`` (``round_output=True``); its stage-2 yml uses downsample [4, 30] and
  JPEG [30, 80] (preset ``codeformer_stage2``).

GT augmentation (flip, OSEDiff's rotation) belongs to the dataset, not here.
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from portraitisr.registry import DEGRADATIONS
from .diffjpeg import DiffJPEG
from .kernels import filter2d, sample_mixed_kernels, uniform
from .noise import add_gaussian_noise
from .realesrgan import RESIZE_MODES, SeededDegradation, resize_per_sample, zero_outside

JPEG_BACKENDS = ('opencv', 'diffjpeg')


def opencv_jpeg(img: Tensor, quality: Tensor, sizes: Optional[Tensor] = None) -> Tensor:
    """Real JPEG round trip through OpenCV's libjpeg (what the face references call), one sample at a time.

    Each sample is rounded to uint8 (``cv2.imencode`` converts float input the same way), encoded at its
    integer ``quality`` with OpenCV's defaults (4:2:0, standard tables) in BGR order, decoded, and divided
    by 255. Runs on the CPU; the result returns to ``img``'s device.

    Args:
        img: ``(B, 3, H, W)`` RGB in [0, 1] (a canvas if ``sizes`` is given).
        quality: ``(B,)`` integer qualities in [0, 100].
        sizes: optional ``(B, 2)`` valid sizes of a zero-padded canvas.

    Returns:
        ``(B, 3, H, W)`` on 8-bit levels (zero outside the valid sizes).
    """
    import cv2  # OpenCV is only needed for this backend

    b, _, h, w = img.shape
    sizes = torch.tensor([[h, w]]).expand(b, 2) if sizes is None else sizes.cpu()
    pixels = torch.clamp((img.detach().float() * 255.).round(), 0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    out = np.zeros((b, h, w, 3), dtype=np.float32)
    for i in range(b):
        vh, vw = int(sizes[i, 0]), int(sizes[i, 1])
        bgr = np.ascontiguousarray(pixels[i, :vh, :vw, ::-1])
        ok, encoded = cv2.imencode('.jpg', bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality[i])])
        if not ok:
            raise RuntimeError('cv2.imencode failed')
        out[i, :vh, :vw] = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] / 255.
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=img.device, dtype=img.dtype)


@DEGRADATIONS.register_module()
class FaceDegradation(SeededDegradation):
    """Blur -> down-size -> Gaussian noise -> JPEG -> up-size back, for aligned faces (GT -> LQ, same size).

    Defaults are OSEDiff's ``params_codeformer.yml``.

    Args:
        blur_kernel_size: kernel size (fixed, odd).
        kernel_list, kernel_prob: kernel types (``iso``/``aniso`` in the references) and their weights.
        blur_sigma: range of ``sigma_x`` (and ``sigma_y`` for anisotropic kernels), pixels.
        downsample_range: range of the down-sizing factor ``s``; LQ size ``(int(h // s), int(w // s))``.
        noise_range: Gaussian sigma range in 8-bit units, or ``None`` for no noise.
        jpeg_range: JPEG quality range (the drawn value is truncated to an integer), or ``None``.
        round_output: quantise the LQ to 8-bit levels at the end (CodeFormer does, OSEDiff does not).
        jpeg_backend: ``'opencv'`` (real libjpeg, exact to the references, CPU per sample) or
            ``'diffjpeg'`` (:class:`DiffJPEG`, batched on the device, approximate).
        seed: seed of the generators (see :class:`SeededDegradation`).
    """

    def __init__(self,
                 blur_kernel_size: int = 41,
                 kernel_list: Sequence[str] = ('iso', 'aniso'),
                 kernel_prob: Sequence[float] = (0.5, 0.5),
                 blur_sigma: Sequence[float] = (1, 15),
                 downsample_range: Sequence[float] = (1, 30),
                 noise_range: Optional[Sequence[float]] = (0, 20),
                 jpeg_range: Optional[Sequence[float]] = (30, 100),
                 round_output: bool = False,
                 jpeg_backend: str = 'opencv',
                 seed: int = 0) -> None:
        super().__init__(seed)
        if blur_kernel_size % 2 == 0:
            raise ValueError(f'blur_kernel_size must be odd, got {blur_kernel_size}')
        if jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f'jpeg_backend must be one of {JPEG_BACKENDS}, got {jpeg_backend!r}')
        self.blur_kernel_size = int(blur_kernel_size)
        self.kernel_list, self.kernel_prob = tuple(kernel_list), tuple(kernel_prob)
        self.blur_sigma, self.downsample_range = tuple(blur_sigma), tuple(downsample_range)
        self.noise_range = None if noise_range is None else tuple(noise_range)
        self.jpeg_range = None if jpeg_range is None else tuple(jpeg_range)
        self.round_output = bool(round_output)
        self.jpeg_backend = jpeg_backend
        self.jpeger = DiffJPEG(differentiable=False) if jpeg_backend == 'diffjpeg' else None

    def extra_repr(self) -> str:
        return f'jpeg_backend={self.jpeg_backend!r}, round_output={self.round_output}, seed={self.seed}'

    def sample_params(self, batch_size: int, height: int, width: int) -> Dict[str, Tensor]:
        """Draws every random choice for a batch of ``height x width`` GT images.

        Returns a dict of CPU tensors: ``kernel`` ``(B, K, K)`` float32 and ``kernel_{type,size,sigma_x,
        sigma_y,theta}``; ``downsample_scale`` float64 and ``lq_size`` ``(B, 2)``; ``noise_sigma`` (8-bit
        units, NaN without noise); ``jpeg_quality`` int64 (-1 without JPEG).
        """
        n, gen, k = batch_size, self._param_generator, self.blur_kernel_size
        kernel = sample_mixed_kernels(n, gen, self.kernel_list, self.kernel_prob, self.blur_sigma,
                                      kernel_sizes=(k, ), pad_to=k)
        p = {'kernel': kernel.pop('kernel')}
        p.update({f'kernel_{key}': kernel[key] for key in ('type', 'size', 'sigma_x', 'sigma_y', 'theta')})
        scale = uniform(n, self.downsample_range[0], self.downsample_range[1], gen)
        p['downsample_scale'] = scale
        # Python float floor division, as ``int(w // scale)`` in the references
        p['lq_size'] = torch.tensor([[max(1, int(height // s)), max(1, int(width // s))] for s in scale.tolist()],
                                    dtype=torch.int64).view(n, 2)
        sigma = uniform(n, *(self.noise_range or (0, 0)), gen)
        p['noise_sigma'] = sigma if self.noise_range is not None else torch.full_like(sigma, float('nan'))
        quality = uniform(n, *(self.jpeg_range or (0, 0)), gen).floor().long()  # int(np.random.uniform(...))
        p['jpeg_quality'] = quality if self.jpeg_range is not None else torch.full_like(quality, -1)
        return p

    @torch.no_grad()
    def forward(self, gt: Tensor, params: Optional[Dict[str, Tensor]] = None) -> Dict[str, object]:
        """Degrades a batch of faces.

        Args:
            gt: ``(B, 3, H, W)`` RGB in [0, 1], on any device.
            params: optional output of :meth:`sample_params`; drawn when ``None``.

        Returns:
            dict with ``lq`` ``(B, 3, H, W)`` in [0, 1] (8-bit levels with ``round_output``), ``gt`` (the
            input) and ``params``. Same dtype and device as ``gt``.
        """
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f'expected a (B, 3, H, W) batch, got shape {tuple(gt.shape)}')
        b, _, h, w = gt.shape
        if params is None:
            params = self.sample_params(b, h, w)
        x = gt.float()
        full = torch.tensor([[h, w]]).expand(b, 2)
        bilinear = torch.full((b, ), RESIZE_MODES.index('bilinear'))
        sizes = params['lq_size']

        out = filter2d(x, params['kernel'])
        out = resize_per_sample(out, full, sizes, bilinear)  # cv2.INTER_LINEAR
        if self.noise_range is not None:
            out = add_gaussian_noise(out, params['noise_sigma'], torch.zeros(b, dtype=torch.bool),
                                     self.noise_generator(gt.device))
        if self.jpeg_range is not None:
            quality = params['jpeg_quality']
            if self.jpeg_backend == 'opencv':
                out = opencv_jpeg(out, quality, sizes)
            else:
                out = self.jpeger(zero_outside(torch.clamp(out, 0, 1), sizes), quality.to(out.device, torch.float32))
        out = resize_per_sample(out, sizes, full, bilinear)
        if self.round_output:
            out = torch.clamp((out * 255.0).round(), 0, 255) / 255.
        return {'lq': out.to(gt.dtype), 'gt': gt, 'params': params}
