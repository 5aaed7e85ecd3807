"""Blur kernels of the Real-ESRGAN degradation, sampled in batches with a ``torch.Generator``.

Every kernel is defined exactly as BasicSR ``basicsr/data/degradations.py`` defines it *given the same
parameters* (tests compare against its numpy functions to 1e-10 before the float32 cast):

* grid ``arange(-k//2 + 1, k//2 + 1)`` for a ``k x k`` kernel, ``x`` along columns, ``y`` along rows;
* quadratic form ``q = [x y] Sigma^-1 [x y]^T`` with ``Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T``;
* Gaussian ``exp(-q/2)``, generalized Gaussian ``exp(-q^beta/2)``, plateau ``1/(q^beta + 1)``;
* isotropic types use ``sy = sx`` and ``theta = 0``;
* sinc (circular low-pass) ``wc J1(wc r) / (2 pi r)`` with the centre set to ``wc^2 / (4 pi)``;
* every kernel divided by its sum, then zero-padded (centred) to a common size.

The samplers draw with the ``torch.Generator`` they are given, on that generator's device, compute the
kernels there in float64 and return them as float32, like BasicSR's ``torch.FloatTensor(np_kernel)`` (the
degradation modules use a CPU generator, so a seed gives the same kernels whatever device the images are
on). Applying kernels to images is :func:`filter2d`.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Order of the integer codes in the ``*_type`` parameter tensors.
KERNEL_TYPES: Tuple[str, ...] = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso',
                                 'plateau_aniso', 'sinc')
_ANISOTROPIC = ('aniso', 'generalized_aniso', 'plateau_aniso')

# BasicSR realesrgan_dataset.py: kernel_range = [2 * v + 1 for v in range(3, 11)], padded to 21.
DEFAULT_KERNEL_SIZES: Tuple[int, ...] = tuple(range(7, 22, 2))


# ----------------------------------------------------------------------------------------- random draws
def uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``n`` float64 draws of ``U(low, high)``, computed as numpy does: ``low + (high - low) * u``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    return low + (high - low) * u


def choice(n: int, probs: Sequence[float], generator: torch.Generator) -> Tensor:
    """``n`` indices drawn with (unnormalised) weights ``probs``, the rule of ``random.choices``.

    ``random.choices`` bisects the cumulative weights with ``u * total``; so do we.
    """
    cum = torch.tensor(probs, dtype=torch.float64, device=generator.device).cumsum(0)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device) * cum[-1]
    return torch.searchsorted(cum, u, right=True).clamp_(max=len(probs) - 1)


def sample_beta(n: int, beta_range: Sequence[float], generator: torch.Generator) -> Tensor:
    """Shape parameter of generalized Gaussian / plateau kernels, BasicSR's rule.

    With probability 0.5 ``U(beta_range[0], 1)``, otherwise ``U(1, beta_range[1])`` (BasicSR
    ``random_bivariate_generalized_Gaussian``/``random_bivariate_plateau``; for ``betap_range=[1, 2]`` half
    of the plateau kernels therefore get exactly ``beta = 1``).
    """
    lower = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device) < 0.5
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    lo = torch.where(lower, torch.full_like(u, beta_range[0]), torch.ones_like(u))
    hi = torch.where(lower, torch.ones_like(u), torch.full_like(u, beta_range[1]))
    return lo + (hi - lo) * u


def _is_type(kernel_type: Tensor, names: Sequence[str]) -> Tensor:
    codes = torch.tensor([KERNEL_TYPES.index(name) for name in names], device=kernel_type.device)
    return torch.isin(kernel_type, codes)


# ------------------------------------------------------------------------------------ kernel definitions
def _grid(pad_to: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """``(x, y)`` float64 coordinates of a ``pad_to x pad_to`` grid centred at zero (BasicSR ``mesh_grid``)."""
    ax = torch.arange(-(pad_to // 2), pad_to // 2 + 1, dtype=torch.float64, device=device)
    yy, xx = torch.meshgrid(ax, ax, indexing='ij')
    return xx, yy


def _support(kernel_size: Tensor, pad_to: int) -> Tensor:
    """``(B, pad_to, pad_to)`` mask of the centred ``kernel_size x kernel_size`` square of each sample."""
    xx, yy = _grid(pad_to, kernel_size.device)
    half = (kernel_size.to(torch.float64) // 2).view(-1, 1, 1)
    return (xx.abs() <= half) & (yy.abs() <= half)


def _normalise(kernel: Tensor, support: Tensor) -> Tensor:
    kernel = torch.where(support, kernel, torch.zeros_like(kernel))
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def quadratic_form(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, pad_to: int) -> Tensor:
    """``(B, pad_to, pad_to)`` values of ``[x y] Sigma^-1 [x y]^T`` for each sample's covariance.

    ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` (BasicSR ``sigma_matrix2``), inverted in
    closed form (BasicSR uses ``np.linalg.inv``; the two agree to ~1e-16 relative).
    """
    c, s = torch.cos(theta), torch.sin(theta)
    vx, vy = sigma_x ** 2, sigma_y ** 2
    a = c * c * vx + s * s * vy  # Sigma[0, 0]
    b = c * s * vx - s * c * vy  # Sigma[0, 1] = Sigma[1, 0]
    d = s * s * vx + c * c * vy  # Sigma[1, 1]
    det = a * d - b * b
    i00, i01, i11 = (d / det).view(-1, 1, 1), (-b / det).view(-1, 1, 1), (a / det).view(-1, 1, 1)
    xx, yy = _grid(pad_to, theta.device)
    return xx * (xx * i00 + yy * i01) + yy * (xx * i01 + yy * i11)


def gaussian_kernels(kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor,
                     pad_to: int = 21) -> Tensor:
    """Rotated bivariate Gaussian kernels, ``(B, pad_to, pad_to)`` float64, each summing to 1.

    Args:
        kernel_size: ``(B,)`` odd sizes <= ``pad_to``; values outside the centred square are zero.
        sigma_x, sigma_y: ``(B,)`` standard deviations in pixels (isotropic: pass ``sigma_y = sigma_x``).
        theta: ``(B,)`` rotation in radians (isotropic: 0).
    """
    q = quadratic_form(sigma_x, sigma_y, theta, pad_to)
    return _normalise(torch.exp(-0.5 * q), _support(kernel_size, pad_to))


def generalized_gaussian_kernels(kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor,
                                 beta: Tensor, pad_to: int = 21) -> Tensor:
    """Generalized Gaussian kernels ``exp(-0.5 q^beta)``, ``(B, pad_to, pad_to)`` float64, sum 1."""
    q = quadratic_form(sigma_x, sigma_y, theta, pad_to)
    return _normalise(torch.exp(-0.5 * q.pow(beta.view(-1, 1, 1))), _support(kernel_size, pad_to))


def plateau_kernels(kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor,
                    pad_to: int = 21) -> Tensor:
    """Plateau kernels ``1 / (q^beta + 1)``, ``(B, pad_to, pad_to)`` float64, sum 1."""
    q = quadratic_form(sigma_x, sigma_y, theta, pad_to)
    return _normalise(torch.reciprocal(q.pow(beta.view(-1, 1, 1)) + 1), _support(kernel_size, pad_to))


def bessel_j1(x: Tensor) -> Tensor:
    """Bessel function of the first kind, order 1, to float64 precision (|error| < 1e-14 for |x| < 100).

    ``J1(x) = 1/(2 pi) int_0^{2 pi} cos(t - x sin t) dt``. The integrand is smooth and periodic, so the
    trapezoidal rule converges geometrically; with ``N > |x| + 40`` nodes the aliasing error
    (``~ J_{N-1}(x)``) is below float64 resolution. ``torch.special.bessel_j1`` was not used: in torch 2.15
    it differs from ``scipy.special.j1`` by up to 4.7e-7 for x in [5, 8], which is inside our range
    (``wc * r`` reaches 44 for a 21 x 21 sinc kernel).
    """
    x = x.to(torch.float64)
    n = int(2 * math.ceil(float(x.abs().max()) / 2 if x.numel() else 0) + 64)
    t = torch.arange(n, dtype=torch.float64, device=x.device) * (2 * math.pi / n)
    return torch.cos(t - x.unsqueeze(-1) * torch.sin(t)).mean(-1)


def sinc_kernels(kernel_size: Tensor, omega_c: Tensor, pad_to: int = 21) -> Tensor:
    """Circular low-pass (2D sinc) kernels, ``(B, pad_to, pad_to)`` float64, each summing to 1.

    BasicSR ``circular_lowpass_kernel(cutoff, kernel_size, pad_to)``: ``wc J1(wc r) / (2 pi r)`` with the
    centre replaced by its limit ``wc^2 / (4 pi)``.

    Args:
        kernel_size: ``(B,)`` odd sizes <= ``pad_to``.
        omega_c: ``(B,)`` cut-off frequencies in radians (pi is the Nyquist frequency).
    """
    xx, yy = _grid(pad_to, omega_c.device)
    r = torch.sqrt(xx ** 2 + yy ** 2)
    wc = omega_c.to(torch.float64).view(-1, 1, 1)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernel = wc * bessel_j1(wc * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r > 0, kernel, wc ** 2 / (4 * math.pi))
    return _normalise(kernel, _support(kernel_size, pad_to))


def pulse_kernels(n: int, pad_to: int = 21, device: Optional[torch.device] = None) -> Tensor:
    """``(n, pad_to, pad_to)`` identity kernels (BasicSR ``pulse_tensor``: convolving with it is a no-op)."""
    kernel = torch.zeros(n, pad_to, pad_to, dtype=torch.float64, device=device)
    kernel[:, pad_to // 2, pad_to // 2] = 1
    return kernel


def kernels_from_params(kernel_type: Tensor, kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor,
                        theta: Tensor, beta: Tensor, omega_c: Tensor, pad_to: int = 21) -> Tensor:
    """Builds each sample's kernel from its parameters; ``(B, pad_to, pad_to)`` float64.

    ``kernel_type`` holds indices into :data:`KERNEL_TYPES`; parameters a type does not use may be NaN.
    """
    out = torch.zeros(kernel_type.numel(), pad_to, pad_to, dtype=torch.float64, device=kernel_type.device)
    families = {
        'gaussian': (('iso', 'aniso'), lambda i: gaussian_kernels(
            kernel_size[i], sigma_x[i], sigma_y[i], theta[i], pad_to)),
        'generalized': (('generalized_iso', 'generalized_aniso'), lambda i: generalized_gaussian_kernels(
            kernel_size[i], sigma_x[i], sigma_y[i], theta[i], beta[i], pad_to)),
        'plateau': (('plateau_iso', 'plateau_aniso'), lambda i: plateau_kernels(
            kernel_size[i], sigma_x[i], sigma_y[i], theta[i], beta[i], pad_to)),
        'sinc': (('sinc', ), lambda i: sinc_kernels(kernel_size[i], omega_c[i], pad_to)),
    }
    for names, build in families.values():
        index = torch.nonzero(_is_type(kernel_type, names)).flatten()
        if index.numel():
            out[index] = build(index)
    return out


# ------------------------------------------------------------------------------------------ samplers
def sample_mixed_kernels(n: int,
                         generator: torch.Generator,
                         kernel_list: Sequence[str],
                         kernel_prob: Sequence[float],
                         sigma_range: Sequence[float],
                         betag_range: Sequence[float] = (0.5, 4),
                         betap_range: Sequence[float] = (1, 2),
                         sinc_prob: float = 0.0,
                         kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
                         pad_to: int = 21,
                         rotation_range: Sequence[float] = (-math.pi, math.pi)) -> Dict[str, Tensor]:
    """Draws ``n`` kernels as BasicSR's ``RealESRGANDataset.__getitem__`` does for ``kernel1``/``kernel2``.

    Per sample: size uniform over ``kernel_sizes``; with probability ``sinc_prob`` a sinc kernel with
    ``omega_c ~ U(pi/3, pi)`` if size < 13 else ``U(pi/5, pi)``; otherwise BasicSR ``random_mixed_kernels``:
    type from ``kernel_list`` with weights ``kernel_prob``, ``sigma_x ~ U(sigma_range)``, for anisotropic
    types ``sigma_y ~ U(sigma_range)`` and ``theta ~ U(rotation_range)`` (isotropic: ``sigma_y = sigma_x``,
    ``theta = 0``), ``beta`` by :func:`sample_beta` from ``betag_range`` (generalized) or ``betap_range``
    (plateau). BasicSR's optional multiplicative kernel noise is ``None`` in every Real-ESRGAN config and is
    not offered.

    Every sample consumes the same number of draws whatever its branch, so the stream position after a
    call depends only on ``n``. All tensors are on ``generator.device``.

    Returns:
        dict with ``kernel`` ``(n, pad_to, pad_to)`` float32 and per-sample ``type`` (index into
        :data:`KERNEL_TYPES`), ``size``, ``sigma_x``, ``sigma_y``, ``theta``, ``beta``, ``omega_c``
        (float64; NaN where the type does not use the value).
    """
    if not all(size % 2 == 1 and size <= pad_to for size in kernel_sizes):
        raise ValueError(f'kernel sizes must be odd and <= pad_to={pad_to}, got {tuple(kernel_sizes)}')
    unknown = [name for name in kernel_list if name not in KERNEL_TYPES[:-1]]
    if unknown:
        raise ValueError(f'unknown kernel types {unknown}; choose from {KERNEL_TYPES[:-1]}')
    dev = generator.device
    sizes = torch.tensor(list(kernel_sizes), dtype=torch.int64, device=dev)
    size = sizes[choice(n, [1.0] * len(sizes), generator)]
    is_sinc = torch.rand(n, generator=generator, dtype=torch.float64, device=dev) < sinc_prob
    u_omega = torch.rand(n, generator=generator, dtype=torch.float64, device=dev)
    omega_lo = torch.where(size < 13, torch.full_like(u_omega, math.pi / 3), torch.full_like(u_omega, math.pi / 5))
    omega_c = omega_lo + (math.pi - omega_lo) * u_omega

    codes = torch.tensor([KERNEL_TYPES.index(name) for name in kernel_list], device=dev)
    kernel_type = codes[choice(n, kernel_prob, generator)]
    sigma_x = uniform(n, sigma_range[0], sigma_range[1], generator)
    sigma_y = uniform(n, sigma_range[0], sigma_range[1], generator)
    theta = uniform(n, rotation_range[0], rotation_range[1], generator)
    beta_g = sample_beta(n, betag_range, generator)
    beta_p = sample_beta(n, betap_range, generator)

    aniso = _is_type(kernel_type, _ANISOTROPIC)
    sigma_y = torch.where(aniso, sigma_y, sigma_x)
    theta = torch.where(aniso, theta, torch.zeros_like(theta))
    generalized = _is_type(kernel_type, ('generalized_iso', 'generalized_aniso'))
    plateau = _is_type(kernel_type, ('plateau_iso', 'plateau_aniso'))
    nan = torch.full_like(sigma_x, float('nan'))
    beta = torch.where(generalized, beta_g, torch.where(plateau, beta_p, nan))

    kernel_type = torch.where(is_sinc, torch.full_like(kernel_type, KERNEL_TYPES.index('sinc')), kernel_type)
    params = {
        'type': kernel_type,
        'size': size,
        'sigma_x': torch.where(is_sinc, nan, sigma_x),
        'sigma_y': torch.where(is_sinc, nan, sigma_y),
        'theta': torch.where(is_sinc, nan, theta),
        'beta': torch.where(is_sinc, nan, beta),
        'omega_c': torch.where(is_sinc, omega_c, nan),
    }
    kernel = kernels_from_params(params['type'], size, params['sigma_x'], params['sigma_y'], params['theta'],
                                 params['beta'], params['omega_c'], pad_to)
    params['kernel'] = kernel.float()
    return params


def sample_final_sinc(n: int, generator: torch.Generator, prob: float,
                      kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES, pad_to: int = 21) -> Dict[str, Tensor]:
    """The final sinc filter of Real-ESRGAN: with probability ``prob`` a sinc kernel of uniform size and
    ``omega_c ~ U(pi/3, pi)``, otherwise the identity pulse (BasicSR ``realesrgan_dataset.py``).

    Returns:
        dict with ``kernel`` ``(n, pad_to, pad_to)`` float32, ``applied`` bool, ``size`` (0 for the pulse)
        and ``omega_c`` (NaN for the pulse).
    """
    dev = generator.device
    applied = torch.rand(n, generator=generator, dtype=torch.float64, device=dev) < prob
    sizes = torch.tensor(list(kernel_sizes), dtype=torch.int64, device=dev)
    size = sizes[choice(n, [1.0] * len(sizes), generator)]
    omega_c = uniform(n, math.pi / 3, math.pi, generator)
    kernel = torch.where(applied.view(-1, 1, 1), sinc_kernels(size, omega_c, pad_to),
                         pulse_kernels(n, pad_to, dev))
    return {
        'kernel': kernel.float(),
        'applied': applied,
        'size': torch.where(applied, size, torch.zeros_like(size)),
        'omega_c': torch.where(applied, omega_c, torch.full_like(omega_c, float('nan'))),
    }


# -------------------------------------------------------------------------------------- application
def reflect_index(length: Tensor, pad: int, canvas: int) -> Tensor:
    """``(B, canvas + 2 * pad)`` source indices of a reflect-101 border around each sample's valid length.

    Index ``p`` of the padded axis reads ``p - pad`` mirrored into ``[0, length - 1]`` without repeating
    the edge (``torch`` ``'reflect'``, OpenCV ``BORDER_REFLECT_101``), repeatedly if ``pad >= length``
    as OpenCV's ``borderInterpolate`` does. Positions beyond a sample's valid length read valid pixels too;
    their results are discarded by the caller.
    """
    pos = torch.arange(-pad, canvas + pad, device=length.device).unsqueeze(0)
    n = length.view(-1, 1)
    period = (2 * (n - 1)).clamp(min=1)
    idx = pos.abs() % period
    idx = torch.where(idx >= n, period - idx, idx)
    return torch.where(n > 1, idx, torch.zeros_like(idx))


def filter2d(img: Tensor, kernel: Tensor, sizes: Optional[Tensor] = None) -> Tensor:
    """Correlates each sample with its own kernel, reflect-101 border (BasicSR ``filter2D``, ``cv2.filter2D``).

    Args:
        img: ``(B, C, H, W)``.
        kernel: ``(B, k, k)`` or ``(1, k, k)`` with ``k`` odd.
        sizes: optional ``(B, 2)`` int64 valid ``(h, w)`` of each sample when ``img`` is a zero-padded canvas
            of images of different sizes (top-left aligned); the border then reflects at each sample's own
            edge, exactly as filtering the un-padded image would.

    Returns:
        ``(B, C, H, W)``, the same dtype as ``img``; outside a sample's valid area the values are undefined.
    """
    b, c, h, w = img.shape
    k = kernel.shape[-1]
    if k % 2 == 0:
        raise ValueError(f'kernel size must be odd, got {k}')
    pad = k // 2
    kernel = kernel.to(device=img.device, dtype=img.dtype)
    regular = sizes is None or bool(((sizes[:, 0] == h) & (sizes[:, 1] == w)).all())
    if regular and pad < h and pad < w:
        # the same padding as BasicSR filter2D (F.pad 'reflect'), bit-identical results
        padded = F.pad(img, (pad, pad, pad, pad), mode='reflect')
    else:
        if sizes is None:
            sizes = torch.tensor([[h, w]] * b)
        sizes = sizes.to(img.device)
        rows = reflect_index(sizes[:, 0], pad, h)  # (B, H + 2p)
        cols = reflect_index(sizes[:, 1], pad, w)  # (B, W + 2p)
        padded = torch.gather(img, 2, rows.view(b, 1, -1, 1).expand(b, c, -1, w))
        padded = torch.gather(padded, 3, cols.view(b, 1, 1, -1).expand(b, c, h + 2 * pad, -1))
    ph, pw = padded.shape[-2:]
    if kernel.shape[0] == 1:
        weight = kernel.view(1, 1, k, k)
        return F.conv2d(padded.reshape(b * c, 1, ph, pw), weight).view(b, c, h, w)
    weight = kernel.view(b, 1, k, k).repeat(1, c, 1, 1).view(b * c, 1, k, k)
    return F.conv2d(padded.reshape(1, b * c, ph, pw), weight, groups=b * c).view(b, c, h, w)
