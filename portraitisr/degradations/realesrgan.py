"""Real-ESRGAN's second-order degradation, batched in torch, every random choice drawn per sample.

Reference: BasicSR ``RealESRGANModel.feed_data`` (``basicsr/models/realesrgan_model.py``, identical in
xinntao/Real-ESRGAN) with the kernels of ``RealESRGANDataset`` (``basicsr/data/realesrgan_dataset.py``), and
OSEDiff's per-image CPU copy ``dataloaders/realesrgan.py::RealESRGAN_degradation.degrade_process``. Order:

0. optional USM sharpening of the GT; the LQ is synthesised from the (sharpened) GT;
1. blur with ``kernel1``; random resize by a scale factor (up/down/keep); Gaussian or Poisson noise;
   clamp; DiffJPEG with ``jpeg_range``;
2. blur with ``kernel2`` with probability ``second_blur_prob``; random resize to
   ``int(H / scale * s)``; Gaussian or Poisson noise;
3. with probability 0.5 each: [resize to ``H // scale`` + final sinc] -> clamp -> JPEG, or
   clamp -> JPEG -> [resize + final sinc];
4. optional resize back to the GT size (OSEDiff ``resize_bak``), then ``clamp(round(255 x), 0, 255) / 255``.

BasicSR draws the resize scales and modes, the noise type, the second-blur decision and the final order once
per *batch* (and a batch-wide gray Gaussian pattern), which is why Real-ESRGAN adds a 180-image training pair
pool; OSEDiff runs one image at a time. Here every choice is drawn per sample, so each sample has exactly the
reference's marginal distribution and samples in a batch are independent (no pool needed). Images of
different intermediate sizes live on a zero-padded canvas, top-left aligned, with their valid sizes tracked:
resizes, reflect borders, Poisson level counts and the JPEG 16-pixel grid are computed per sample exactly as
on the un-padded image. The random crop to ``gt_size`` and the pair pool of Real-ESRGAN's model are left to
the training loop.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import DEGRADATIONS
from .diffjpeg import DiffJPEG
from .kernels import DEFAULT_KERNEL_SIZES, choice, filter2d, pulse_kernels, sample_final_sinc, \
    sample_mixed_kernels, uniform
from .noise import add_gaussian_noise, add_poisson_noise, valid_mask
from .usm import USMSharp

# Order of the integer codes in ``*_mode`` parameters; BasicSR draws random.choice(['area', 'bilinear', 'bicubic']).
RESIZE_MODES: Tuple[str, ...] = ('area', 'bilinear', 'bicubic')
# Order of the codes in ``*_updown``; BasicSR random.choices(['up', 'down', 'keep'], resize_prob).
UPDOWN: Tuple[str, ...] = ('up', 'down', 'keep')
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


# ------------------------------------------------------------------------------------- ragged resize
def _axis_taps(in_len: Tensor, out_len: Tensor, mode: Tensor, scale: Optional[Tensor],
               canvas: int) -> Tuple[Tensor, Tensor]:
    """Per-sample source indices and weights of a 1-D resize, PyTorch's ``F.interpolate`` rules.

    ``align_corners=False``, no antialias. ``scale`` (a ``scale_factor``) sets the coordinate mapping as
    ``F.interpolate(scale_factor=...)`` does; otherwise it is ``in_len / out_len``. ``area`` is
    ``adaptive_avg_pool``. Coordinates are computed in float32 like PyTorch's float kernels (with its
    fused multiply-add; tests compare with ``F.interpolate``).

    Returns:
        ``index`` int64 and ``weight`` float32, both ``(B, canvas, T)``; rows ``>= out_len`` have weight 0.
    """
    b = in_len.numel()
    dst = torch.arange(canvas, dtype=torch.int64).expand(b, canvas)
    n_in, n_out = in_len.view(-1, 1), out_len.view(-1, 1)
    if scale is None:
        ratio = n_in.float() / n_out.float()
    else:
        ratio = (1.0 / scale.to(torch.float64)).float().view(-1, 1)
    # ratio * (dst + 0.5) - 0.5 rounded once to float32: the fused multiply-add PyTorch's compiled kernels use
    src = (ratio.double() * (dst.double() + 0.5) - 0.5).float()

    # bilinear: clamp at 0, identity when the length is unchanged (PyTorch's CPU kernel)
    lin = src.clamp(min=0)
    i0 = torch.minimum(lin.floor().long(), n_in - 1)
    lam1 = (lin - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    same = n_in == n_out
    i0, i1 = torch.where(same, dst, i0), torch.where(same, dst, i1)
    lam1 = torch.where(same, torch.zeros_like(lam1), lam1)
    lin_index = torch.stack([i0, i1], -1)
    lin_weight = torch.stack([1 - lam1, lam1], -1)

    # bicubic: four taps around floor(src), indices clamped to the border
    fl = src.floor()
    t = src - fl
    taps = fl.long().unsqueeze(-1) + torch.arange(-1, 3)
    cub_index = torch.minimum(taps.clamp(min=0), n_in.unsqueeze(-1) - 1)
    a = _CUBIC_A

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    cub_weight = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)

    # area: average of [floor(i * in / out), ceil((i + 1) * in / out))
    start = (dst * n_in) // n_out
    end = ((dst + 1) * n_in + n_out - 1) // n_out
    count = (end - start).clamp(min=1)
    n_area = int(count.max()) if b else 1
    offs = torch.arange(n_area)
    area_index = start.unsqueeze(-1) + offs
    area_weight = torch.where(offs < count.unsqueeze(-1), 1.0 / count.unsqueeze(-1).float(), 0.0)

    n_taps = max(4, n_area)
    index = torch.zeros(b, canvas, n_taps, dtype=torch.int64)
    weight = torch.zeros(b, canvas, n_taps, dtype=torch.float32)
    for code, (idx, wgt) in enumerate(((area_index, area_weight), (lin_index, lin_weight),
                                       (cub_index, cub_weight))):
        sel = (mode == code).view(-1, 1, 1)
        k = idx.shape[-1]
        index[..., :k] = torch.where(sel, idx, index[..., :k])
        weight[..., :k] = torch.where(sel, wgt, weight[..., :k])
    weight = torch.where((dst < n_out).unsqueeze(-1), weight, torch.zeros_like(weight))
    index = torch.minimum(index, n_in.unsqueeze(-1) - 1)  # rows past out_len read anything valid
    return index, weight


def _apply_taps(img: Tensor, index: Tensor, weight: Tensor, dim: int) -> Tensor:
    """Weighted sum of gathered rows (``dim=2``) or columns (``dim=3``) of ``img``."""
    b, c, h, w = img.shape
    index, weight = index.to(img.device), weight.to(device=img.device, dtype=img.dtype)
    out_len = index.shape[1]
    if dim == 3:
        shape, view = (b, c, h, out_len), (b, 1, 1, out_len)
    else:
        shape, view = (b, c, out_len, w), (b, 1, out_len, 1)
    out = torch.gather(img, dim, index[..., 0].view(view).expand(shape)) * weight[..., 0].view(view)
    for t in range(1, index.shape[-1]):
        out.addcmul_(torch.gather(img, dim, index[..., t].view(view).expand(shape)), weight[..., t].view(view))
    return out


def _resize_group(img: Tensor, in_sizes: Tensor, out_sizes: Tensor, modes: Tensor, scales: Optional[Tensor],
                  out_h: int, out_w: int) -> Tensor:
    col_index, col_weight = _axis_taps(in_sizes[:, 1], out_sizes[:, 1], modes, scales, out_w)
    row_index, row_weight = _axis_taps(in_sizes[:, 0], out_sizes[:, 0], modes, scales, out_h)
    # drop trailing taps that no sample uses (area needs many only when shrinking a lot)
    n_col = int((col_weight != 0).any(0).any(0).nonzero().max()) + 1 if col_weight.any() else 1
    n_row = int((row_weight != 0).any(0).any(0).nonzero().max()) + 1 if row_weight.any() else 1
    out = _apply_taps(img, col_index[..., :n_col], col_weight[..., :n_col], dim=3)
    return _apply_taps(out, row_index[..., :n_row], row_weight[..., :n_row], dim=2)


def resize_per_sample(img: Tensor, in_sizes: Tensor, out_sizes: Tensor, modes: Tensor,
                      scales: Optional[Tensor] = None) -> Tensor:
    """Resizes every sample of a canvas to its own size with its own mode, as ``F.interpolate`` would.

    Args:
        img: ``(B, C, H, W)`` canvas; sample ``b`` occupies its top-left ``in_sizes[b]``.
        in_sizes, out_sizes: ``(B, 2)`` int64 ``(h, w)``.
        modes: ``(B,)`` indices into :data:`RESIZE_MODES`.
        scales: optional ``(B,)`` float64 ``scale_factor`` of each sample (then ``out_sizes`` must be
            ``floor(in_sizes * scale)``); bilinear and bicubic then map coordinates with ``1 / scale`` as
            ``F.interpolate(scale_factor=...)`` does.

    Returns:
        ``(B, C, max out h, max out w)`` canvas, zero outside each sample's ``out_sizes``. Equal to
        ``F.interpolate`` per sample up to float32 rounding (tests: < 1e-5).
    """
    b, c, h, w = img.shape
    in_sizes, out_sizes, modes = in_sizes.cpu(), out_sizes.cpu(), modes.cpu()
    uniform_in = bool(((in_sizes[:, 0] == h) & (in_sizes[:, 1] == w)).all())
    uniform_out = bool((out_sizes == out_sizes[:1]).all())
    out_h, out_w = int(out_sizes[:, 0].max()), int(out_sizes[:, 1].max())
    out = img.new_empty(b, c, out_h, out_w)
    for code, mode in enumerate(RESIZE_MODES):  # one group per mode: each uses its own number of taps
        index = torch.nonzero(modes == code).flatten()
        if not index.numel():
            continue
        group = img.index_select(0, index.to(img.device)) if index.numel() < b else img
        if scales is None and uniform_in and uniform_out:
            # common sizes: PyTorch's own kernel
            resized = F.interpolate(group, size=(out_h, out_w), mode=mode)
        else:
            resized = _resize_group(group, in_sizes[index], out_sizes[index], modes[index],
                                    None if scales is None else scales[index], out_h, out_w)
        if index.numel() == b:
            return resized
        out.index_copy_(0, index.to(img.device), resized)
    return out


def zero_outside(img: Tensor, sizes: Tensor) -> Tensor:
    """Sets a canvas to zero outside each sample's valid ``sizes`` (before JPEG, whose 16-pixel grid and
    zero padding then act on every sample exactly as on the un-padded image)."""
    return img * valid_mask(sizes, img.shape[2], img.shape[3], img.device).to(img.dtype)


# ---------------------------------------------------------------------------------------- seeded base
class SeededDegradation(nn.Module):
    """Base of the random degradations: owns their generators and their resumable state.

    Parameters (kernels, scales, qualities, ...) are drawn on the CPU from a generator seeded with ``seed``,
    so they are the same whatever device the images are on; pixel noise is drawn on the images' device from
    a generator seeded with ``seed + 1`` (one per device, created on first use). In distributed training give
    every rank its own seed (e.g. ``seed + rank``).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._param_generator = torch.Generator().manual_seed(self.seed)
        self._noise_generators: Dict[str, torch.Generator] = {}

    @staticmethod
    def _device_key(device: torch.device) -> str:
        device = torch.device(device)
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        return str(device)

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The generator used for pixel noise on ``device``."""
        key = self._device_key(device)
        if key not in self._noise_generators:
            generator = torch.Generator(device=key)
            generator.manual_seed(self.seed + 1)
            self._noise_generators[key] = generator
        return self._noise_generators[key]

    def manual_seed(self, seed: int) -> 'SeededDegradation':
        """Re-seeds: the module then draws exactly as a new one built with ``seed`` would."""
        self.seed = int(seed)
        self._param_generator.manual_seed(self.seed)
        self._noise_generators.clear()  # re-created from seed + 1 on first use
        return self

    def get_rng_state(self) -> Dict[str, object]:
        """States of all generators, for checkpoints:
        ``{'seed': int, 'params': Tensor, 'noise': {device: Tensor}}``."""
        return {
            'seed': self.seed,
            'params': self._param_generator.get_state(),
            'noise': {key: gen.get_state() for key, gen in self._noise_generators.items()},
        }

    def set_rng_state(self, state: Dict[str, object]) -> None:
        """Restores :meth:`get_rng_state`; the following draws repeat exactly (generators of devices absent
        from ``state`` are re-created from the seed on first use, as they would have been)."""
        self.seed = int(state.get('seed', self.seed))
        self._param_generator.set_state(state['params'])
        self._noise_generators.clear()
        for key, value in state['noise'].items():
            self.noise_generator(torch.device(key)).set_state(value)

    def extra_repr(self) -> str:
        return f'seed={self.seed}'


def _draw_resize(n: int, gen: torch.Generator, probs: Sequence[float], scale_range: Sequence[float]):
    """BasicSR random resize: up ``U(1, r1)``, down ``U(r0, 1)``, keep 1; mode uniform over RESIZE_MODES."""
    updown = choice(n, probs, gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    up = 1 + (scale_range[1] - 1) * u
    down = scale_range[0] + (1 - scale_range[0]) * u
    scale = torch.where(updown == 0, up, torch.where(updown == 1, down, torch.ones_like(u)))
    mode = choice(n, [1.0] * len(RESIZE_MODES), gen)
    return updown, scale, mode


def _draw_noise(n: int, gen: torch.Generator, gaussian_prob: float, sigma_range: Sequence[float],
                poisson_range: Sequence[float], gray_prob: float) -> Dict[str, Tensor]:
    gaussian = torch.rand(n, generator=gen, dtype=torch.float64) < gaussian_prob
    sigma = uniform(n, sigma_range[0], sigma_range[1], gen)
    poisson = uniform(n, poisson_range[0], poisson_range[1], gen)
    gray = torch.rand(n, generator=gen, dtype=torch.float64) < gray_prob
    nan = torch.full_like(sigma, float('nan'))
    return {
        'gaussian': gaussian,
        'sigma': torch.where(gaussian, sigma, nan),
        'poisson_scale': torch.where(gaussian, nan, poisson),
        'gray': gray,
    }


def apply_noise(img: Tensor, sizes: Tensor, params: Dict[str, Tensor], prefix: str,
                generator: torch.Generator) -> Tensor:
    """Gaussian noise on the samples with ``{prefix}_gaussian``, Poisson noise on the others; clipped."""
    out = torch.empty_like(img)
    gaussian = params[f'{prefix}_gaussian'].cpu()
    gray = params[f'{prefix}_gray'].cpu()
    for is_gaussian in (True, False):
        index = torch.nonzero(gaussian == is_gaussian).flatten()
        if not index.numel():
            continue
        group = img.index_select(0, index.to(img.device))
        if is_gaussian:
            noisy = add_gaussian_noise(group, params[f'{prefix}_sigma'][index], gray[index], generator)
        else:
            noisy = add_poisson_noise(group, params[f'{prefix}_poisson_scale'][index], gray[index], generator,
                                      sizes=sizes[index])
        out.index_copy_(0, index.to(img.device), noisy)
    return out


# --------------------------------------------------------------------------------------- the pipeline
@DEGRADATIONS.register_module()
class RealESRGANDegradation(SeededDegradation):
    """Real-ESRGAN second-order degradation (GT -> LQ), batched on the input's device.

    Options are the keys of Real-ESRGAN's ``train_realesrgan_x4plus.yml`` (see ``presets.py``; values
    there). ``blur_kernel_size``/``blur_kernel_size2`` are the largest odd kernel size and the padded size
    (BasicSR ignores the yml key and hard-codes 7..21 padded to 21, which is the default here).

    Args:
        scale: LQ is ``H // scale``.
        resize_back: resize the LQ back to the GT size with a random mode before rounding (OSEDiff).
        use_usm: sharpen the GT (BasicSR ``USMSharp``) and synthesise the LQ from it.
        seed: seed of the generators (see :class:`SeededDegradation`).
    """

    def __init__(self,
                 resize_prob: Sequence[float] = (0.2, 0.7, 0.1),
                 resize_range: Sequence[float] = (0.15, 1.5),
                 gaussian_noise_prob: float = 0.5,
                 noise_range: Sequence[float] = (1, 30),
                 poisson_scale_range: Sequence[float] = (0.05, 3),
                 gray_noise_prob: float = 0.4,
                 jpeg_range: Sequence[float] = (30, 95),
                 second_blur_prob: float = 0.8,
                 resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
                 resize_range2: Sequence[float] = (0.3, 1.2),
                 gaussian_noise_prob2: float = 0.5,
                 noise_range2: Sequence[float] = (1, 25),
                 poisson_scale_range2: Sequence[float] = (0.05, 2.5),
                 gray_noise_prob2: float = 0.4,
                 jpeg_range2: Sequence[float] = (30, 95),
                 blur_kernel_size: int = 21,
                 kernel_list: Sequence[str] = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso',
                                               'plateau_iso', 'plateau_aniso'),
                 kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                 sinc_prob: float = 0.1,
                 blur_sigma: Sequence[float] = (0.2, 3),
                 betag_range: Sequence[float] = (0.5, 4),
                 betap_range: Sequence[float] = (1, 2),
                 blur_kernel_size2: int = 21,
                 kernel_list2: Sequence[str] = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso',
                                                'plateau_iso', 'plateau_aniso'),
                 kernel_prob2: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                 sinc_prob2: float = 0.1,
                 blur_sigma2: Sequence[float] = (0.2, 1.5),
                 betag_range2: Sequence[float] = (0.5, 4),
                 betap_range2: Sequence[float] = (1, 2),
                 final_sinc_prob: float = 0.8,
                 scale: int = 4,
                 resize_back: bool = False,
                 use_usm: bool = True,
                 seed: int = 0) -> None:
        super().__init__(seed)
        for name, size in (('blur_kernel_size', blur_kernel_size), ('blur_kernel_size2', blur_kernel_size2)):
            if size % 2 == 0 or size < 7:
                raise ValueError(f'{name} must be odd and >= 7, got {size}')
        self.opt = dict(
            resize_prob=tuple(resize_prob), resize_range=tuple(resize_range),
            gaussian_noise_prob=gaussian_noise_prob, noise_range=tuple(noise_range),
            poisson_scale_range=tuple(poisson_scale_range), gray_noise_prob=gray_noise_prob,
            jpeg_range=tuple(jpeg_range), second_blur_prob=second_blur_prob, resize_prob2=tuple(resize_prob2),
            resize_range2=tuple(resize_range2), gaussian_noise_prob2=gaussian_noise_prob2,
            noise_range2=tuple(noise_range2), poisson_scale_range2=tuple(poisson_scale_range2),
            gray_noise_prob2=gray_noise_prob2, jpeg_range2=tuple(jpeg_range2), blur_kernel_size=blur_kernel_size,
            kernel_list=tuple(kernel_list), kernel_prob=tuple(kernel_prob), sinc_prob=sinc_prob,
            blur_sigma=tuple(blur_sigma), betag_range=tuple(betag_range), betap_range=tuple(betap_range),
            blur_kernel_size2=blur_kernel_size2, kernel_list2=tuple(kernel_list2), kernel_prob2=tuple(kernel_prob2),
            sinc_prob2=sinc_prob2, blur_sigma2=tuple(blur_sigma2), betag_range2=tuple(betag_range2),
            betap_range2=tuple(betap_range2), final_sinc_prob=final_sinc_prob)
        self.scale = int(scale)
        self.resize_back = bool(resize_back)
        self.use_usm = bool(use_usm)
        self.jpeger = DiffJPEG(differentiable=False)
        self.usm_sharpener = USMSharp() if use_usm else None

    def extra_repr(self) -> str:
        return f'scale={self.scale}, resize_back={self.resize_back}, use_usm={self.use_usm}, seed={self.seed}'

    # ------------------------------------------------------------------------------------ parameters
    def sample_params(self, batch_size: int, height: int, width: int) -> Dict[str, Tensor]:
        """Draws every random choice for a batch of ``batch_size`` GT images of ``height x width``.

        Returns a dict of CPU tensors with a leading batch dimension (NaN marks values a sample does not
        use): ``kernel1``/``kernel2``/``sinc_kernel`` ``(B, K, K)`` float32; ``kernel{1,2}_{type,size,
        sigma_x,sigma_y,theta,beta,omega_c}`` (type indexes ``kernels.KERNEL_TYPES``); ``second_blur``;
        ``final_sinc``, ``final_sinc_size``, ``final_sinc_omega_c``; ``resize{1,2}_{updown,scale,mode}``
        (indices into :data:`UPDOWN` / :data:`RESIZE_MODES`) and ``resize{1,2}_size`` ``(B, 2)``;
        ``noise{1,2}_{gaussian,sigma,poisson_scale,gray}``; ``jpeg{1,2}_quality``; ``final_order``
        (0: resize + sinc then JPEG, 1: JPEG then resize + sinc), ``final_mode``, ``final_size`` ``(B, 2)``;
        ``resize_back_mode`` (-1 without ``resize_back``).
        """
        o, n, gen = self.opt, batch_size, self._param_generator
        p: Dict[str, Tensor] = {}
        for stage, suffix in ((1, ''), (2, '2')):
            max_size = o[f'blur_kernel_size{suffix}']
            kernel = sample_mixed_kernels(
                n, gen, o[f'kernel_list{suffix}'], o[f'kernel_prob{suffix}'], o[f'blur_sigma{suffix}'],
                o[f'betag_range{suffix}'], o[f'betap_range{suffix}'], o[f'sinc_prob{suffix}'],
                kernel_sizes=tuple(range(7, max_size + 1, 2)), pad_to=max_size)
            p[f'kernel{stage}'] = kernel.pop('kernel')
            p.update({f'kernel{stage}_{key}': value for key, value in kernel.items()})
        sinc = sample_final_sinc(n, gen, o['final_sinc_prob'], DEFAULT_KERNEL_SIZES, pad_to=21)
        p['sinc_kernel'] = sinc['kernel']
        p['final_sinc'], p['final_sinc_size'], p['final_sinc_omega_c'] = sinc['applied'], sinc['size'], sinc['omega_c']

        gt_size = torch.tensor([[height, width]], dtype=torch.float64)
        for stage, suffix in ((1, ''), (2, '2')):
            updown, scale, mode = _draw_resize(n, gen, o[f'resize_prob{suffix}'], o[f'resize_range{suffix}'])
            if stage == 1:  # F.interpolate(scale_factor=s): floor(H * s)
                size = (gt_size * scale.view(-1, 1)).floor()
            else:  # size=(int(H / scale * s), int(W / scale * s))
                size = (gt_size / self.scale * scale.view(-1, 1)).floor()
            p[f'resize{stage}_updown'], p[f'resize{stage}_scale'], p[f'resize{stage}_mode'] = updown, scale, mode
            p[f'resize{stage}_size'] = size.long().clamp(min=1)
            noise = _draw_noise(n, gen, o[f'gaussian_noise_prob{suffix}'], o[f'noise_range{suffix}'],
                                o[f'poisson_scale_range{suffix}'], o[f'gray_noise_prob{suffix}'])
            p.update({f'noise{stage}_{key}': value for key, value in noise.items()})
            if stage == 1:
                p['jpeg1_quality'] = uniform(n, *o['jpeg_range'], gen).float()
            else:
                p['second_blur'] = torch.rand(n, generator=gen, dtype=torch.float64) < o['second_blur_prob']
        p['final_order'] = (torch.rand(n, generator=gen, dtype=torch.float64) >= 0.5).long()
        p['final_mode'] = choice(n, [1.0] * len(RESIZE_MODES), gen)
        p['final_size'] = torch.tensor([[height // self.scale, width // self.scale]]).expand(n, 2).clone()
        p['jpeg2_quality'] = uniform(n, *o['jpeg_range2'], gen).float()
        back_mode = choice(n, [1.0] * len(RESIZE_MODES), gen)
        p['resize_back_mode'] = back_mode if self.resize_back else torch.full_like(back_mode, -1)
        return p

    # --------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(self, gt: Tensor, params: Optional[Dict[str, Tensor]] = None) -> Dict[str, object]:
        """Degrades a batch.

        Args:
            gt: ``(B, 3, H, W)`` RGB in [0, 1], on any device.
            params: optional output of :meth:`sample_params` (e.g. to replay a batch); drawn when ``None``.

        Returns:
            dict with ``lq`` ``(B, 3, H // scale, W // scale)`` (``(B, 3, H, W)`` with ``resize_back``) in
            [0, 1] on 8-bit levels; ``gt`` ``(B, 3, H, W)``, the USM-sharpened GT with ``use_usm`` else the
            input; ``params``, the per-sample choices (see :meth:`sample_params`). Same dtype and device
            as ``gt``.
        """
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f'expected a (B, 3, H, W) batch, got shape {tuple(gt.shape)}')
        b, _, h, w = gt.shape
        if params is None:
            params = self.sample_params(b, h, w)
        noise_gen = self.noise_generator(gt.device)
        x = gt.float()
        target = self.usm_sharpener(x) if self.use_usm else x

        # ----- first degradation
        sizes = torch.tensor([[h, w]]).expand(b, 2)
        out = filter2d(target, params['kernel1'])
        out = resize_per_sample(out, sizes, params['resize1_size'], params['resize1_mode'], params['resize1_scale'])
        sizes = params['resize1_size']
        out = apply_noise(out, sizes, params, 'noise1', noise_gen)
        out = self.jpeger(zero_outside(torch.clamp(out, 0, 1), sizes), params['jpeg1_quality'].to(gt.device))

        # ----- second degradation
        kernel2 = params['kernel2']
        pulse = pulse_kernels(b, kernel2.shape[-1]).to(kernel2.dtype)
        kernel2 = torch.where(params['second_blur'].view(-1, 1, 1), kernel2, pulse)
        out = filter2d(out, kernel2, sizes)
        out = resize_per_sample(out, sizes, params['resize2_size'], params['resize2_mode'])
        sizes = params['resize2_size']
        out = apply_noise(out, sizes, params, 'noise2', noise_gen)

        # ----- final: [resize + sinc] and JPEG, in a random order per sample
        final_size = params['final_size']
        lq = out.new_empty(b, 3, int(final_size[0, 0]), int(final_size[0, 1]))
        for order in (0, 1):
            index = torch.nonzero(params['final_order'] == order).flatten()
            if not index.numel():
                continue
            sub = out.index_select(0, index.to(out.device))
            sub_sizes, quality = sizes[index], params['jpeg2_quality'][index].to(out.device)
            if order == 1:
                sub = self.jpeger(zero_outside(torch.clamp(sub, 0, 1), sub_sizes), quality)
            sub = resize_per_sample(sub, sub_sizes, final_size[index], params['final_mode'][index])
            sub = filter2d(sub, params['sinc_kernel'][index])
            if order == 0:
                sub = self.jpeger(torch.clamp(sub, 0, 1), quality)
            lq.index_copy_(0, index.to(out.device), sub)

        if self.resize_back:
            lq = resize_per_sample(lq, final_size, torch.tensor([[h, w]]).expand(b, 2), params['resize_back_mode'])
        lq = torch.clamp((lq * 255.0).round(), 0, 255) / 255.
        return {'lq': lq.to(gt.dtype), 'gt': target.to(gt.dtype), 'params': params}


__all__ = ['RealESRGANDegradation', 'SeededDegradation', 'resize_per_sample', 'zero_outside', 'apply_noise',
           'RESIZE_MODES', 'UPDOWN']
