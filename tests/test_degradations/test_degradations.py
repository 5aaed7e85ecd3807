"""Tests of the batched degradations against their references.

(a) Exactness: kernels given their parameters, DiffJPEG, USM, Gaussian/Poisson noise given the same draws and
    ``filter2d`` are compared with BasicSR (``basicsr-fixed``), OpenCV and kornia; the per-sample resize with
    ``F.interpolate``/``cv2.resize``; whole pipelines replayed with the same parameters (noise switched off)
    with BasicSR / OpenCV run one image at a time.
(b) Statistics: 2000 seeded samples per preset against the reference pipeline run one image at a time with
    numpy/random/torch-seeded BasicSR calls (kernels as ``RealESRGANDataset``, the other steps as
    ``RealESRGANModel.feed_data`` / OSEDiff ``degrade_process`` / OSEDiff ``facesr_dataset``). Means and
    frequencies must agree within ``Z = 4`` standard errors of the difference (two-sample, or paired where
    both sides degrade the same GT crop), which a correct implementation fails with probability ~6e-5 per
    check; ranges must hold exactly.
(c) Determinism and resumable generator state.

BasicSR is a test-only reference: ``pip install --no-deps basicsr-fixed==1.4.2``; the tests that need it skip
without it, which CI (it installs it, and runs pytest with --fail-on-skip) turns into a failure.
"""
import functools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from portraitisr.degradations import (DiffJPEG, FaceDegradation, KERNEL_TYPES, PRESETS, RESIZE_MODES,
                                               RealESRGANDegradation, USMSharp, add_gaussian_noise,
                                               add_poisson_noise, build_degradation, filter2d, preset_config,
                                               resize_per_sample, sample_final_sinc, sample_mixed_kernels)
from portraitisr.degradations.kernels import bessel_j1, kernels_from_params
from portraitisr.degradations.realesrgan import zero_outside
from portraitisr.registry import DEGRADATIONS

Z = 4.0  # tolerance of the statistical comparisons, in standard errors
N_STATS = 2000  # samples per preset and per side
CROP = 96  # smallest size BasicSR runs all presets at (reflect padding needs 0.15 * 96 > 10)
REALESRGAN_PRESETS = ('realesrgan', 'osediff', 'seesr')
ALL_TYPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


def _basicsr():
    return pytest.importorskip('basicsr', reason='needs basicsr-fixed (pip install --no-deps basicsr-fixed==1.4.2)')


@functools.lru_cache(maxsize=None)
def _crops() -> torch.Tensor:
    """64 distinct 96 x 96 RGB crops of real photos (a portrait, a cup, a cat), float32 in [0, 1]."""
    import skimage.data as skdata  # the dev extra
    crops = []
    for image in (skdata.astronaut(), skdata.coffee(), skdata.chelsea()):
        img = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        h, w = img.shape[1:]
        for i in range(22):
            top, left = (i * 41) % (h - CROP), (i * 67) % (w - CROP)
            crops.append(img[:, top:top + CROP, left:left + CROP])
    return torch.stack(crops[:64]).contiguous()


def _gt_sequence(n: int) -> torch.Tensor:
    crops = _crops()
    return crops[torch.arange(n) % crops.shape[0]]


# ------------------------------------------------------------------------------------ statistics helpers
def _assert_same_mean(ours, ref, name, paired=False):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if paired:
        d = ours - ref
        diff, se = d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    else:
        diff = ours.mean() - ref.mean()
        se = math.sqrt(ours.var(ddof=1) / len(ours) + ref.var(ddof=1) / len(ref))
    assert abs(diff) <= Z * se + 1e-12, (f'{name}: ours {ours.mean():.5g} vs reference {ref.mean():.5g}, '
                                         f'|diff| {abs(diff):.3g} > {Z} SE ({se:.3g})')


def _assert_same_freq(ours, ref, categories, name):
    ours, ref = np.asarray(ours), np.asarray(ref)
    for cat in categories:
        p1, p2 = (ours == cat).mean(), (ref == cat).mean()
        p = ((ours == cat).sum() + (ref == cat).sum()) / (len(ours) + len(ref))
        se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / len(ours) + 1 / len(ref)))
        assert abs(p1 - p2) <= Z * se + 1e-12, f'{name}={cat!r}: ours {p1:.4f} vs reference {p2:.4f} (SE {se:.4f})'


def _gradient_energy(x: torch.Tensor) -> np.ndarray:
    """Mean absolute finite difference per image: sensitive to every blur, resize and noise step (dropping
    the final sinc filter moves it by 11 SE at N = 2000, where mean/std/PSNR barely move)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3))
    return (dx + dy).double().numpy()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return (10 * torch.log10(1 / mse)).numpy()


# ================================================================================ (a) exactness
def test_bessel_j1_matches_scipy():
    import scipy.special as special
    x = torch.linspace(0, 60, 20001, dtype=torch.float64)
    assert np.abs(bessel_j1(x).numpy() - special.j1(x.numpy())).max() < 1e-13


def _basicsr_kernel(bdeg, name, size, sx, sy, theta, beta, omega, pad_to):
    iso = not name.endswith('aniso')
    if name in ('iso', 'aniso'):
        kernel = bdeg.bivariate_Gaussian(size, sx, sy, theta, isotropic=iso)
    elif name.startswith('generalized'):
        kernel = bdeg.bivariate_generalized_Gaussian(size, sx, sy, theta, beta, isotropic=iso)
    elif name.startswith('plateau'):
        kernel = bdeg.bivariate_plateau(size, sx, sy, theta, beta, isotropic=iso)
    else:
        kernel = bdeg.circular_lowpass_kernel(omega, size, pad_to=False)
    pad = (pad_to - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def test_kernels_match_basicsr_given_parameters():
    _basicsr()
    from basicsr.data import degradations as bdeg
    gen = torch.Generator().manual_seed(0)
    p = sample_mixed_kernels(600, gen, ALL_TYPES, [1] * 6, (0.2, 3), (0.5, 4), (1, 2), sinc_prob=0.2)
    assert set(p['type'].tolist()) == set(range(len(KERNEL_TYPES)))
    exact = kernels_from_params(p['type'], p['size'], p['sigma_x'], p['sigma_y'], p['theta'], p['beta'],
                                p['omega_c'], 21)
    worst = 0.0
    for i in range(600):
        ref = _basicsr_kernel(bdeg, KERNEL_TYPES[p['type'][i]], int(p['size'][i]), *[
            float(p[key][i]) for key in ('sigma_x', 'sigma_y', 'theta', 'beta', 'omega_c')], pad_to=21)
        worst = max(worst, np.abs(exact[i].numpy() - ref).max())
        # the float32 kernels the pipeline uses equal BasicSR's torch.FloatTensor(kernel)
        assert np.abs(p['kernel'][i].numpy() - ref.astype(np.float32)).max() <= 1e-8
    assert worst < 1e-10, worst

    sinc = sample_final_sinc(200, gen, prob=0.8)
    for i in range(200):
        if sinc['applied'][i]:
            ref = bdeg.circular_lowpass_kernel(float(sinc['omega_c'][i]), int(sinc['size'][i]), pad_to=21)
        else:
            ref = np.zeros((21, 21))
            ref[10, 10] = 1
        assert np.abs(sinc['kernel'][i].numpy() - ref).max() < 1e-7

    # the 41 x 41 face kernels (one size, iso/aniso)
    face = sample_mixed_kernels(50, gen, ('iso', 'aniso'), (0.5, 0.5), (1, 15), kernel_sizes=(41, ), pad_to=41)
    for i in range(50):
        ref = _basicsr_kernel(bdeg, KERNEL_TYPES[face['type'][i]], 41, float(face['sigma_x'][i]),
                              float(face['sigma_y'][i]), float(face['theta'][i]), None, None, pad_to=41)
        assert np.abs(face['kernel'][i].numpy() - ref).max() < 1e-8


def test_kernel_sampling_rules():
    gen = torch.Generator().manual_seed(1)
    p = sample_mixed_kernels(4000, gen, ALL_TYPES, (0.45, 0.25, 0.12, 0.03, 0.12, 0.03), (0.2, 3), (0.5, 4),
                             (1, 2), sinc_prob=0.1)
    iso = torch.isin(p['type'], torch.tensor([0, 2, 4]))
    assert torch.equal(p['sigma_x'][iso], p['sigma_y'][iso]) and bool((p['theta'][iso] == 0).all())
    sinc = p['type'] == KERNEL_TYPES.index('sinc')
    assert bool((p['omega_c'][sinc & (p['size'] < 13)] >= math.pi / 3).all())
    assert bool((p['omega_c'][sinc] >= math.pi / 5).all() and (p['omega_c'][sinc] <= math.pi).all())
    plateau = torch.isin(p['type'], torch.tensor([4, 5]))
    # beta rule: half U(lo, 1), half U(1, hi); for betap_range [1, 2] the lower half is exactly 1
    assert abs((p['beta'][plateau] == 1).double().mean().item() - 0.5) < 0.1
    generalized = torch.isin(p['type'], torch.tensor([2, 3]))
    assert abs((p['beta'][generalized] < 1).double().mean().item() - 0.5) < 0.1
    assert set(p['size'].tolist()) == set(range(7, 22, 2))
    assert torch.allclose(p['kernel'].sum((1, 2)), torch.ones(4000), atol=1e-5)
    # a call consumes the same number of draws whatever branches the samples take
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample_mixed_kernels(64, g1, ALL_TYPES, [1] * 6, (0.2, 3), sinc_prob=0.0)
    sample_mixed_kernels(64, g2, ('iso', ), [1], (0.2, 3), sinc_prob=1.0)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_filter2d_matches_basicsr_kornia_and_opencv():
    import cv2
    torch.manual_seed(0)
    img = torch.rand(4, 3, 40, 36)
    kernel = torch.rand(4, 21, 21)
    kernel /= kernel.sum((1, 2), keepdim=True)
    ours = filter2d(img, kernel)
    import kornia
    assert torch.equal(ours, kornia.filters.filter2d(img, kernel, border_type='reflect'))
    try:
        from basicsr.utils.img_process_util import filter2D
    except ImportError:
        filter2D = None
    if filter2D is not None:
        assert torch.equal(ours, filter2D(img, kernel))
        assert torch.equal(filter2d(img, kernel[:1]), filter2D(img, kernel[:1]))
    # canvas of different sizes (one smaller than the padding): reflect-101 at each sample's own edge
    sizes = torch.tensor([[40, 36], [17, 30], [9, 7], [33, 12]])
    canvas = filter2d(zero_outside(img, sizes), kernel, sizes)
    for i, (h, w) in enumerate(sizes.tolist()):
        ref = cv2.filter2D(img[i, :, :h, :w].permute(1, 2, 0).numpy(), -1, kernel[i].double().numpy(),
                           borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(canvas[i, :, :h, :w].permute(1, 2, 0).numpy() - ref).max() < 1e-5


def test_resize_per_sample_matches_interpolate_and_opencv():
    import cv2
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    worst = 0.0
    for trial in range(40):
        b = 6
        in_sizes = torch.tensor(rng.integers(12, 61, size=(b, 2)))
        img = zero_outside(torch.rand(b, 3, 60, 60), in_sizes)
        modes = torch.tensor(rng.integers(0, 3, size=b))
        if trial % 2:
            scales = torch.tensor(rng.uniform(0.15, 1.5, size=b), dtype=torch.float64)
            scales[0] = 1.0
            out_sizes = (in_sizes.double() * scales.view(-1, 1)).floor().long()
        else:
            scales, out_sizes = None, torch.tensor(rng.integers(1, 90, size=(b, 2)))
        out = resize_per_sample(img, in_sizes, out_sizes, modes, scales)
        for i in range(b):
            (h, w), (oh, ow) = in_sizes[i].tolist(), out_sizes[i].tolist()
            src, mode = img[i:i + 1, :, :h, :w].contiguous(), RESIZE_MODES[modes[i]]
            if scales is None:
                ref = F.interpolate(src, size=(oh, ow), mode=mode)
            else:
                ref = F.interpolate(src, scale_factor=float(scales[i]), mode=mode)
            assert ref.shape[-2:] == (oh, ow)
            worst = max(worst, (out[i:i + 1, :, :oh, :ow] - ref).abs().max().item())
            assert out[i, :, oh:].abs().max().item() == 0 if oh < out.shape[2] else True
            assert out[i, :, :, ow:].abs().max().item() == 0 if ow < out.shape[3] else True
    assert worst < 1e-5, worst  # measured 3e-6 (PyTorch's own CPU kernels differ by as much between paths)

    # bilinear is OpenCV's INTER_LINEAR (the face pipeline's cv2.resize)
    img = torch.rand(1, 3, 96, 96)
    for size in ((3, 3), (17, 17), (40, 23), (96, 96), (130, 97)):
        ours = resize_per_sample(img, torch.tensor([[96, 96]]), torch.tensor([size]), torch.tensor([1]))
        ref = cv2.resize(img[0].permute(1, 2, 0).numpy(), size[::-1], interpolation=cv2.INTER_LINEAR)
        assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5


def test_diffjpeg_matches_basicsr_and_keeps_quality():
    _basicsr()
    from basicsr.utils import DiffJPEG as BasicSRDiffJPEG
    torch.manual_seed(0)
    img = _crops()[:4, :, :70, :45].contiguous()  # needs padding to 80 x 48
    quality = torch.tensor([20., 49.5, 71.3, 95.])
    before = quality.clone()
    for differentiable in (False, True):
        ours = DiffJPEG(differentiable)(img, quality)
        ref = BasicSRDiffJPEG(differentiable)(img, quality.clone())
        assert torch.equal(ours, ref)
    assert torch.equal(quality, before)  # BasicSR overwrites it with the factors; we must not
    x = img.clone().requires_grad_(True)
    DiffJPEG(differentiable=True)(x, quality).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(DiffJPEG()(img, 37), BasicSRDiffJPEG(False)(img, 37))
    # a zero-padded canvas compresses each sample exactly as the un-padded image (16-pixel grid at 0, 0)
    sizes = torch.tensor([[70, 45], [33, 20], [9, 44], [64, 31]])
    canvas = DiffJPEG()(zero_outside(img, sizes), quality)
    for i, (h, w) in enumerate(sizes.tolist()):
        single = DiffJPEG()(img[i:i + 1, :, :h, :w].contiguous(), quality[i:i + 1])
        assert (canvas[i:i + 1, :, :h, :w] - single).abs().max() < 1e-6


def test_usm_matches_basicsr():
    _basicsr()
    import cv2
    from basicsr.utils import USMSharp as BasicSRUSMSharp
    from portraitisr.degradations.usm import opencv_gaussian_kernel
    for ksize in (1, 3, 5, 7, 9, 11, 51):
        assert np.abs(opencv_gaussian_kernel(ksize).numpy() - cv2.getGaussianKernel(ksize, 0)[:, 0]).max() < 1e-15
    img = _crops()[:3]
    ours = USMSharp()(img)
    assert torch.equal(ours, BasicSRUSMSharp()(img))
    assert not torch.equal(ours, img) and ours.min() >= 0 and ours.max() <= 1


def test_noise_matches_basicsr_given_the_same_draws():
    _basicsr()
    from basicsr.data import degradations as bdeg
    img = _crops()[:3, :, :64, :48].contiguous()  # 64 * 48 is a multiple of 16: randn prefixes coincide
    sigma, scale = torch.tensor([3., 17., 29.]), torch.tensor([0.1, 1.0, 2.9])
    colour, gray = torch.zeros(3, dtype=torch.bool), torch.ones(1, dtype=torch.bool)

    torch.manual_seed(7)
    ref = bdeg.add_gaussian_noise_pt(img, sigma=sigma, gray_noise=colour.float(), clip=True, rounds=False)
    assert torch.equal(add_gaussian_noise(img, sigma, colour, torch.Generator().manual_seed(7)), ref)
    torch.manual_seed(8)
    ref = bdeg.add_gaussian_noise_pt(img[:1], sigma=sigma[:1], gray_noise=gray.float(), clip=True, rounds=False)
    ours = add_gaussian_noise(img[:1], sigma[:1], gray, torch.Generator().manual_seed(8))
    assert torch.equal(ours, ref)

    torch.manual_seed(9)
    ref = bdeg.add_poisson_noise_pt(img, scale=scale, gray_noise=colour.float(), clip=True, rounds=False)
    assert torch.equal(add_poisson_noise(img, scale, colour, torch.Generator().manual_seed(9)), ref)
    torch.manual_seed(10)
    ref = bdeg.add_poisson_noise_pt(img[:1], scale=scale[:1], gray_noise=gray.float(), clip=True, rounds=False)
    assert torch.equal(add_poisson_noise(img[:1], scale[:1], gray, torch.Generator().manual_seed(10)), ref)


def test_noise_per_sample_gray_and_canvas_levels():
    gen = torch.Generator().manual_seed(0)
    img = torch.full((4, 3, 16, 16), 0.5)
    gray = torch.tensor([True, False, True, False])
    out = add_gaussian_noise(img, torch.full((4, ), 20.), gray, gen, clip=False)
    noise = out - img
    assert torch.equal(noise[0, 0], noise[0, 1]) and torch.equal(noise[0, 0], noise[0, 2])
    assert not torch.equal(noise[1, 0], noise[1, 1])
    assert not torch.equal(noise[0, 0], noise[2, 0])  # every gray sample draws its own pattern
    assert abs(noise.std().item() * 255 - 20) < 2
    # Poisson on a canvas counts the levels of the valid area only: one level -> vals = 1 -> integer noise
    # (counting the zero padding too would give two levels, vals = 2 and half-integer noise)
    sizes = torch.tensor([[8, 8]] * 4)
    canvas = zero_outside(torch.full((4, 3, 16, 16), 128 / 255), sizes)
    out = add_poisson_noise(canvas, torch.ones(4), torch.zeros(4, dtype=torch.bool), gen, clip=False,
                            sizes=sizes)
    counts = out[:, :, :8, :8]  # image + Poisson(image * 1) / 1 - image
    assert (counts - counts.round()).abs().max() < 1e-5 and counts.std() > 0.3


@torch.no_grad()
def _replay_basicsr(deg, gts, p):
    """BasicSR's steps on one image at a time with our drawn parameters (noise ranges are (0, 0))."""
    from basicsr.data import degradations as bdeg
    from basicsr.utils import DiffJPEG as BasicSRDiffJPEG
    from basicsr.utils import USMSharp as BasicSRUSMSharp
    from basicsr.utils.img_process_util import filter2D
    jpeger, usm, lqs = BasicSRDiffJPEG(differentiable=False), BasicSRUSMSharp(), []
    for i in range(gts.shape[0]):
        gt = usm(gts[i:i + 1]) if deg.use_usm else gts[i:i + 1]
        h, w, s = gt.shape[2], gt.shape[3], deg.scale
        out = filter2D(gt, p['kernel1'][i:i + 1])
        out = F.interpolate(out, scale_factor=float(p['resize1_scale'][i]), mode=RESIZE_MODES[p['resize1_mode'][i]])
        out = bdeg.random_add_gaussian_noise_pt(out, sigma_range=(0, 0), clip=True, rounds=False, gray_prob=0.4)
        out = jpeger(torch.clamp(out, 0, 1), quality=p['jpeg1_quality'][i:i + 1].clone())
        if p['second_blur'][i]:
            out = filter2D(out, p['kernel2'][i:i + 1])
        scale2 = float(p['resize2_scale'][i])
        out = F.interpolate(out, size=(int(h / s * scale2), int(w / s * scale2)),
                            mode=RESIZE_MODES[p['resize2_mode'][i]])
        out = bdeg.random_add_gaussian_noise_pt(out, sigma_range=(0, 0), clip=True, rounds=False, gray_prob=0.4)
        mode, quality = RESIZE_MODES[p['final_mode'][i]], p['jpeg2_quality'][i:i + 1].clone()
        if p['final_order'][i] == 0:
            out = filter2D(F.interpolate(out, size=(h // s, w // s), mode=mode), p['sinc_kernel'][i:i + 1])
            out = jpeger(torch.clamp(out, 0, 1), quality=quality)
        else:
            out = jpeger(torch.clamp(out, 0, 1), quality=quality)
            out = filter2D(F.interpolate(out, size=(h // s, w // s), mode=mode), p['sinc_kernel'][i:i + 1])
        if deg.resize_back:
            out = F.interpolate(out, size=(h, w), mode=RESIZE_MODES[p['resize_back_mode'][i]])
        lqs.append(torch.clamp((out * 255.0).round(), 0, 255) / 255.)
    return torch.cat(lqs)


@pytest.mark.parametrize('preset', REALESRGAN_PRESETS)
def test_pipeline_replays_basicsr_with_the_same_parameters(preset):
    _basicsr()
    gts = _crops()[:48]
    quiet = dict(gaussian_noise_prob=1.0, noise_range=(0, 0), gaussian_noise_prob2=1.0, noise_range2=(0, 0))
    deg = build_degradation(preset, seed=11, **quiet)
    out = deg(gts)
    ref = _replay_basicsr(deg, gts, out['params'])
    diff = (out['lq'] - ref).abs()
    # float32 rounding (ragged resize) can flip an 8-bit rounding or a JPEG quantisation step;
    # measured: >= 99.998 % identical pixels, max 1 level
    assert (diff == 0).double().mean() > 0.999
    assert diff.max() <= 3 / 255 + 1e-6
    if deg.use_usm:
        assert torch.equal(out['gt'], USMSharp()(gts))


@pytest.mark.parametrize('preset', ('codeformer_face', 'codeformer_stage2'))
def test_face_pipeline_replays_opencv_with_the_same_parameters(preset):
    import cv2
    gts = _crops()[:48]
    deg = build_degradation(preset, seed=3, noise_range=(0, 0))
    out = deg(gts)
    p, lqs = out['params'], []
    for i in range(gts.shape[0]):
        img = np.ascontiguousarray(gts[i].permute(1, 2, 0).numpy()[..., ::-1])  # BGR like the references
        h, w = img.shape[:2]
        lq = cv2.filter2D(img, -1, p['kernel'][i].double().numpy())
        scale = float(p['downsample_scale'][i])
        lq = cv2.resize(lq, (int(w // scale), int(h // scale)), interpolation=cv2.INTER_LINEAR)
        _, encoded = cv2.imencode('.jpg', np.clip(lq, 0, 1) * 255., [int(cv2.IMWRITE_JPEG_QUALITY),
                                                                     int(p['jpeg_quality'][i])])
        lq = cv2.resize(np.float32(cv2.imdecode(encoded, 1)) / 255., (w, h), interpolation=cv2.INTER_LINEAR)
        if deg.round_output:
            lq = np.clip((lq * 255.0).round(), 0, 255) / 255.
        lqs.append(torch.from_numpy(np.ascontiguousarray(lq[..., ::-1])).permute(2, 0, 1).float())
    diff = (out['lq'] - torch.stack(lqs)).abs()
    if deg.round_output:  # half-level values of the bilinear up-size can round either way
        assert (diff == 0).double().mean() > 0.99 and diff.max() <= 1 / 255 + 1e-6
    else:  # measured 4e-7
        assert diff.max() < 1e-5


# ================================================================================ (b) statistics
class _Recorder:
    """Records the parameters BasicSR draws inside its own functions (wrappers around module globals)."""

    def __init__(self, monkeypatch, bdeg):
        self.kernels, self.noise = [], []
        for name in ('bivariate_Gaussian', 'bivariate_generalized_Gaussian', 'bivariate_plateau'):
            monkeypatch.setattr(bdeg, name, self._kernel_wrapper(name, getattr(bdeg, name)))
        for name in ('generate_gaussian_noise_pt', 'generate_poisson_noise_pt', 'generate_gaussian_noise'):
            monkeypatch.setattr(bdeg, name, self._noise_wrapper(name, getattr(bdeg, name)))

    def _kernel_wrapper(self, name, fn):
        family = {'bivariate_Gaussian': '', 'bivariate_generalized_Gaussian': 'generalized_',
                  'bivariate_plateau': 'plateau_'}[name]

        def wrapper(kernel_size, sig_x, sig_y, theta, *args, isotropic=True, **kwargs):
            kind = family + ('iso' if isotropic else 'aniso')
            beta = args[0] if args else kwargs.get('beta', float('nan'))
            self.kernels.append((kind, kernel_size, sig_x, sig_y if not isotropic else sig_x, beta))
            return fn(kernel_size, sig_x, sig_y, theta, *args, isotropic=isotropic, **kwargs)

        return wrapper

    def _noise_wrapper(self, name, fn):
        def wrapper(img, *args, **kwargs):
            value = args[0] if args else next(iter(kwargs.values()))
            gray = args[1] if len(args) > 1 else kwargs.get('gray_noise', 0)
            self.noise.append((name, float(value), float(gray)))
            return fn(img, *args, **kwargs)

        return wrapper


@torch.no_grad()  # BasicSR's DiffJPEG holds its tables as nn.Parameters
def _reference_realesrgan(cfg, gts, seed):
    """One image at a time: kernels as RealESRGANDataset, the rest as RealESRGANModel.feed_data (OSEDiff's
    degrade_process with resize_bak); every step a BasicSR call. Returns LQs and the drawn parameters."""
    from basicsr.data import degradations as bdeg
    from basicsr.utils import DiffJPEG as BasicSRDiffJPEG
    from basicsr.utils.img_process_util import filter2D
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    jpeger = BasicSRDiffJPEG(differentiable=False)
    kernel_range = [2 * v + 1 for v in range(3, 11)]
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    records = {k: [] for k in ('sinc1', 'sinc2', 'final_sinc', 'updown1', 'scale1', 'updown2', 'scale2', 'jpeg1',
                               'jpeg2', 'second_blur', 'order', 'mode1', 'mode2', 'size1', 'size2', 'omega1')}
    with pytest.MonkeyPatch.context() as mp:
        rec = _Recorder(mp, bdeg)

        def kernel(suffix):
            size = random.choice(kernel_range)
            if np.random.uniform() < cfg['sinc_prob' + suffix]:
                omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
                k = bdeg.circular_lowpass_kernel(omega, size, pad_to=False)
                records['sinc' + (suffix or '1')].append((size, omega))
            else:
                k = bdeg.random_mixed_kernels(list(cfg['kernel_list' + suffix]), list(cfg['kernel_prob' + suffix]),
                                              size, cfg['blur_sigma' + suffix], cfg['blur_sigma' + suffix],
                                              [-math.pi, math.pi], cfg['betag_range' + suffix],
                                              cfg['betap_range' + suffix], noise_range=None)
                records['sinc' + (suffix or '1')].append(None)
            pad = (21 - size) // 2
            return torch.FloatTensor(np.pad(k, ((pad, pad), (pad, pad))))[None]

        def resize_draw(stage, suffix):
            updown = random.choices(['up', 'down', 'keep'], cfg['resize_prob' + suffix])[0]
            if updown == 'up':
                s = np.random.uniform(1, cfg['resize_range' + suffix][1])
            elif updown == 'down':
                s = np.random.uniform(cfg['resize_range' + suffix][0], 1)
            else:
                s = 1
            mode = random.choice(['area', 'bilinear', 'bicubic'])
            records[f'updown{stage}'].append(updown)
            records[f'scale{stage}'].append(s)
            records[f'mode{stage}'].append(mode)
            return s, mode

        def noise(out, suffix):
            if np.random.uniform() < cfg['gaussian_noise_prob' + suffix]:
                return bdeg.random_add_gaussian_noise_pt(out, sigma_range=cfg['noise_range' + suffix], clip=True,
                                                         rounds=False, gray_prob=cfg['gray_noise_prob' + suffix])
            return bdeg.random_add_poisson_noise_pt(out, scale_range=cfg['poisson_scale_range' + suffix],
                                                    gray_prob=cfg['gray_noise_prob' + suffix], clip=True,
                                                    rounds=False)

        def jpeg(out, key, quality_range):
            quality = out.new_zeros(out.size(0)).uniform_(*quality_range)
            records[key].append(float(quality))  # before DiffJPEG overwrites it in place
            return jpeger(torch.clamp(out, 0, 1), quality=quality)

        lqs, scale = [], cfg['scale']
        for i in range(gts.shape[0]):
            kernel1, kernel2 = kernel(''), kernel('2')
            if np.random.uniform() < cfg['final_sinc_prob']:
                size = random.choice(kernel_range)
                sinc = torch.FloatTensor(bdeg.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size,
                                                                      pad_to=21))[None]
                records['final_sinc'].append(size)
            else:
                sinc = pulse[None]
                records['final_sinc'].append(0)
            gt = gts[i:i + 1]
            h, w = gt.shape[2:]
            out = filter2D(gt, kernel1)
            s, mode = resize_draw(1, '')
            out = F.interpolate(out, scale_factor=s, mode=mode)
            records['size1'].append(out.shape[2])
            out = jpeg(noise(out, ''), 'jpeg1', cfg['jpeg_range'])
            blur2 = np.random.uniform() < cfg['second_blur_prob']
            records['second_blur'].append(blur2)
            if blur2:
                out = filter2D(out, kernel2)
            s, mode = resize_draw(2, '2')
            out = F.interpolate(out, size=(int(h / scale * s), int(w / scale * s)), mode=mode)
            records['size2'].append(out.shape[2])
            out = noise(out, '2')
            order = 0 if np.random.uniform() < 0.5 else 1
            records['order'].append(order)
            if order == 0:
                mode = random.choice(['area', 'bilinear', 'bicubic'])
                out = filter2D(F.interpolate(out, size=(h // scale, w // scale), mode=mode), sinc)
                out = jpeg(out, 'jpeg2', cfg['jpeg_range2'])
            else:
                out = jpeg(out, 'jpeg2', cfg['jpeg_range2'])
                mode = random.choice(['area', 'bilinear', 'bicubic'])
                out = filter2D(F.interpolate(out, size=(h // scale, w // scale), mode=mode), sinc)
            if cfg['resize_back']:
                out = F.interpolate(out, size=(h, w), mode=random.choice(['area', 'bilinear', 'bicubic']))
            lqs.append(torch.clamp((out * 255.0).round(), 0, 255) / 255.)
    records['kernels'], records['noise'] = rec.kernels, rec.noise
    return torch.cat(lqs), records


@functools.lru_cache(maxsize=None)
@torch.no_grad()
def _realesrgan_runs(preset):
    """Ours (batches of 125) and the reference on the same 2000 GT crops (USM applied beforehand, once per
    distinct crop on each side: it is deterministic and checked for equality above)."""
    cfg = preset_config(preset)
    gts = _gt_sequence(N_STATS)
    if cfg['use_usm']:
        ours_gt = USMSharp()(_crops())[torch.arange(N_STATS) % 64]
        from basicsr.utils import USMSharp as BasicSRUSMSharp
        ref_gt = BasicSRUSMSharp()(_crops())[torch.arange(N_STATS) % 64]
    else:
        ours_gt = ref_gt = gts
    deg = build_degradation(preset, seed=2024, use_usm=False)
    outs = [deg(ours_gt[i:i + 125]) for i in range(0, N_STATS, 125)]
    lq = torch.cat([o['lq'] for o in outs])
    params = {k: torch.cat([o['params'][k] for o in outs]) for k in outs[0]['params']}
    ref_lq, ref = _reference_realesrgan(cfg, ref_gt, seed=2024)
    return cfg, ours_gt, lq, params, ref_lq, ref


def _ref_kernel_params(ref, stage):
    """Per-sample kernel type, size, sigma_x and beta of the reference's kernel ``stage`` (1 or 2)."""
    mixed = iter(ref['kernels'])
    out = {st: {'type': [], 'size': [], 'sigma_x': [], 'beta': []} for st in (1, 2)}
    for s1, s2 in zip(ref['sinc1'], ref['sinc2']):
        for st, sinc in ((1, s1), (2, s2)):
            if sinc is None:
                kind, size, sx, _, beta = next(mixed)
                out[st]['sigma_x'].append(sx)
            else:
                kind, size, beta = 'sinc', sinc[0], float('nan')
            out[st]['type'].append(kind)
            out[st]['size'].append(size)
            out[st]['beta'].append(beta)
    return {key: np.array(value) for key, value in out[stage].items()}


@pytest.mark.parametrize('preset', REALESRGAN_PRESETS)
def test_kernel_statistics_match_reference(preset):
    _basicsr()
    cfg, _, _, p, _, ref = _realesrgan_runs(preset)
    for stage, suffix in ((1, ''), (2, '2')):
        ref_k = _ref_kernel_params(ref, stage)
        ours_types = np.array([KERNEL_TYPES[t] for t in p[f'kernel{stage}_type'].tolist()])
        _assert_same_freq(ours_types, ref_k['type'], KERNEL_TYPES, f'kernel{stage} type')
        _assert_same_mean(p[f'kernel{stage}_size'].numpy(), ref_k['size'], f'kernel{stage} size')
        sigma = p[f'kernel{stage}_sigma_x'].numpy()
        sigma = sigma[~np.isnan(sigma)]
        _assert_same_mean(sigma, ref_k['sigma_x'], f'kernel{stage} sigma_x')
        beta = p[f'kernel{stage}_beta'].numpy()
        for family in ('generalized', 'plateau'):
            ours_sel = np.char.startswith(ours_types, family)
            ref_sel = np.char.startswith(ref_k['type'], family)
            _assert_same_mean(beta[ours_sel], ref_k['beta'][ref_sel], f'kernel{stage} {family} beta')
        lo, hi = cfg['blur_sigma' + suffix]
        assert lo <= sigma.min() and sigma.max() <= hi
        assert sigma.min() < lo + 0.05 * (hi - lo) and sigma.max() > hi - 0.05 * (hi - lo)
    final = np.array(ref['final_sinc'])
    _assert_same_freq(p['final_sinc'].numpy(), final > 0, (True, False), 'final sinc')
    _assert_same_mean(p['final_sinc_size'][p['final_sinc']].numpy(), final[final > 0], 'final sinc size')


@pytest.mark.parametrize('preset', REALESRGAN_PRESETS)
def test_resize_noise_jpeg_statistics_match_reference(preset):
    _basicsr()
    cfg, _, _, p, _, ref = _realesrgan_runs(preset)
    for stage, suffix in ((1, ''), (2, '2')):
        _assert_same_freq([('up', 'down', 'keep')[u] for u in p[f'resize{stage}_updown'].tolist()],
                          ref[f'updown{stage}'], ('up', 'down', 'keep'), f'resize{stage}')
        _assert_same_mean(p[f'resize{stage}_scale'].numpy(), ref[f'scale{stage}'], f'resize{stage} scale')
        _assert_same_freq([RESIZE_MODES[m] for m in p[f'resize{stage}_mode'].tolist()], ref[f'mode{stage}'],
                          RESIZE_MODES, f'resize{stage} mode')
        _assert_same_mean(p[f'resize{stage}_size'][:, 0].numpy(), ref[f'size{stage}'], f'resize{stage} size')
        quality = p[f'jpeg{stage}_quality'].numpy()
        _assert_same_mean(quality, ref[f'jpeg{stage}'], f'jpeg{stage} quality')
        lo, hi = cfg['jpeg_range' + suffix]
        assert lo <= quality.min() and quality.max() <= hi
    # the reference noise calls come in pipeline order: stage 1, stage 2, stage 1, ...
    stages = {1: ref['noise'][0::2], 2: ref['noise'][1::2]}
    for stage, suffix in ((1, ''), (2, '2')):
        gaussian = [r for r in stages[stage] if r[0] == 'generate_gaussian_noise_pt']
        poisson = [r for r in stages[stage] if r[0] == 'generate_poisson_noise_pt']
        _assert_same_freq(p[f'noise{stage}_gaussian'].numpy(),
                          np.array([r[0] == 'generate_gaussian_noise_pt' for r in stages[stage]]), (True, False),
                          f'noise{stage} gaussian')
        ours_sigma = p[f'noise{stage}_sigma'][p[f'noise{stage}_gaussian']].numpy()
        _assert_same_mean(ours_sigma, [r[1] for r in gaussian], f'noise{stage} sigma')
        lo, hi = cfg['noise_range' + suffix]
        assert lo <= ours_sigma.min() and ours_sigma.max() <= hi
        ours_scale = p[f'noise{stage}_poisson_scale'][~p[f'noise{stage}_gaussian']].numpy()
        _assert_same_mean(ours_scale, [r[1] for r in poisson], f'noise{stage} poisson scale')
        _assert_same_freq(p[f'noise{stage}_gray'].numpy(), np.array([r[2] > 0 for r in stages[stage]]),
                          (True, False), f'noise{stage} gray')
    _assert_same_freq(p['second_blur'].numpy(), np.array(ref['second_blur']), (True, False), 'second blur')
    _assert_same_freq(p['final_order'].numpy(), np.array(ref['order']), (0, 1), 'final order')


@pytest.mark.parametrize('preset', REALESRGAN_PRESETS)
def test_lq_statistics_match_reference(preset):
    _basicsr()
    cfg, gts, lq, _, ref_lq, _ = _realesrgan_runs(preset)
    expected = (CROP, CROP) if cfg['resize_back'] else (CROP // 4, CROP // 4)
    assert lq.shape == ref_lq.shape == (N_STATS, 3) + expected
    assert torch.equal(lq, (lq * 255).round() / 255) and lq.min() >= 0 and lq.max() <= 1
    _assert_same_mean(lq.mean((1, 2, 3)).numpy(), ref_lq.mean((1, 2, 3)).numpy(), 'LQ mean', paired=True)
    _assert_same_mean(lq.std((1, 2, 3)).numpy(), ref_lq.std((1, 2, 3)).numpy(), 'LQ std', paired=True)
    _assert_same_mean(_gradient_energy(lq), _gradient_energy(ref_lq), 'LQ gradient energy', paired=True)
    target = gts if cfg['resize_back'] else F.interpolate(gts, size=expected, mode='area')
    _assert_same_mean(_psnr(lq, target), _psnr(ref_lq, target), 'PSNR(LQ, GT)', paired=True)


def _reference_face(cfg, gts, seed):
    """OSEDiff facesr_dataset.py (+ CodeFormer's final rounding when configured) with BasicSR/OpenCV calls."""
    import cv2
    from basicsr.data import degradations as bdeg
    np.random.seed(seed)
    random.seed(seed)
    lqs, records = [], {'scale': [], 'jpeg': []}
    with pytest.MonkeyPatch.context() as mp:
        rec = _Recorder(mp, bdeg)
        for i in range(gts.shape[0]):
            img = np.ascontiguousarray(gts[i].permute(1, 2, 0).numpy()[..., ::-1])  # BGR
            h, w = img.shape[:2]
            kernel = bdeg.random_mixed_kernels(list(cfg['kernel_list']), list(cfg['kernel_prob']),
                                               cfg['blur_kernel_size'], cfg['blur_sigma'], cfg['blur_sigma'],
                                               [-math.pi, math.pi], noise_range=None)
            lq = cv2.filter2D(img, -1, kernel)
            scale = np.random.uniform(*cfg['downsample_range'])
            records['scale'].append(scale)
            lq = cv2.resize(lq, (int(w // scale), int(h // scale)), interpolation=cv2.INTER_LINEAR)
            lq = bdeg.random_add_gaussian_noise(lq, cfg['noise_range'])
            quality = int(np.random.uniform(*cfg['jpeg_range']))  # OSEDiff random_add_jpg_compression
            records['jpeg'].append(quality)
            lq = bdeg.add_jpg_compression(lq, quality)
            lq = cv2.resize(lq, (w, h), interpolation=cv2.INTER_LINEAR)
            if cfg['round_output']:
                lq = np.clip((lq * 255.0).round(), 0, 255) / 255.
            lqs.append(torch.from_numpy(np.ascontiguousarray(lq[..., ::-1])).permute(2, 0, 1).float())
    records['kernels'], records['noise'] = rec.kernels, rec.noise
    return torch.stack(lqs), records


@pytest.mark.parametrize('preset', ('codeformer_face', 'codeformer_stage2'))
def test_face_statistics_match_reference(preset):
    _basicsr()
    import cv2  # noqa: F401
    cfg = preset_config(preset)
    gts = _gt_sequence(N_STATS)
    deg = build_degradation(preset, seed=77)
    outs = [deg(gts[i:i + 125]) for i in range(0, N_STATS, 125)]
    lq = torch.cat([o['lq'] for o in outs])
    p = {k: torch.cat([o['params'][k] for o in outs]) for k in outs[0]['params']}
    ref_lq, ref = _reference_face(cfg, gts, seed=77)

    ref_types = [k[0] for k in ref['kernels']]
    _assert_same_freq([KERNEL_TYPES[t] for t in p['kernel_type'].tolist()], ref_types, ('iso', 'aniso'), 'type')
    assert set(p['kernel_size'].tolist()) == {41}
    _assert_same_mean(p['kernel_sigma_x'].numpy(), [k[2] for k in ref['kernels']], 'sigma_x')
    _assert_same_mean(p['kernel_sigma_y'].numpy(), [k[3] for k in ref['kernels']], 'sigma_y')
    _assert_same_mean(p['downsample_scale'].numpy(), ref['scale'], 'downsample scale')
    _assert_same_mean(p['noise_sigma'].numpy(), [r[1] for r in ref['noise']], 'noise sigma')
    _assert_same_mean(p['jpeg_quality'].numpy(), ref['jpeg'], 'JPEG quality')
    q_lo, q_hi = cfg['jpeg_range']
    assert p['jpeg_quality'].min() >= q_lo and p['jpeg_quality'].max() < q_hi
    assert p['downsample_scale'].min() >= cfg['downsample_range'][0]
    assert lq.shape == ref_lq.shape == gts.shape
    _assert_same_mean(lq.mean((1, 2, 3)).numpy(), ref_lq.mean((1, 2, 3)).numpy(), 'LQ mean', paired=True)
    _assert_same_mean(lq.std((1, 2, 3)).numpy(), ref_lq.std((1, 2, 3)).numpy(), 'LQ std', paired=True)
    _assert_same_mean(_gradient_energy(lq), _gradient_energy(ref_lq), 'LQ gradient energy', paired=True)
    _assert_same_mean(_psnr(lq, gts), _psnr(ref_lq, gts), 'PSNR(LQ, GT)', paired=True)
    if cfg['round_output']:
        assert torch.equal(lq, (lq * 255).round() / 255)


# ============================================================================ (c) determinism, API
def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():
        return torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
    return torch.equal(a, b)


@pytest.mark.parametrize('preset', tuple(PRESETS))
def test_same_seed_same_output_different_seed_different(preset):
    gts = _crops()[:6]
    a, b = build_degradation(preset, seed=5)(gts), build_degradation(preset, seed=5)(gts)
    c = build_degradation(preset, seed=6)(gts)
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
    assert all(_same(a['params'][k], b['params'][k]) for k in a['params'])
    assert not torch.equal(a['lq'], c['lq'])
    assert not all(_same(a['params'][k], c['params'][k]) for k in a['params'])
    assert a['lq'].dtype == gts.dtype and a['lq'].device == gts.device
    assert a['lq'].min() >= 0 and a['lq'].max() <= 1


@pytest.mark.parametrize('preset', ('osediff', 'codeformer_face'))
def test_rng_state_resumes_exactly(preset):
    gts = _crops()[:4]
    deg = build_degradation(preset, seed=1)
    deg(gts)
    state = deg.get_rng_state()
    second = deg(gts)
    resumed = build_degradation(preset, seed=123)
    resumed.set_rng_state(state)
    assert torch.equal(resumed(gts)['lq'], second['lq'])
    # manual_seed(s) behaves as a fresh module with seed s; set_rng_state undoes it (evaluation re-seeding)
    fresh = build_degradation(preset, seed=42)(gts)
    saved = deg.get_rng_state()
    assert torch.equal(deg.manual_seed(42)(gts)['lq'], fresh['lq'])
    deg.set_rng_state(saved)
    assert deg.seed == 1 and torch.equal(deg(gts)['lq'], resumed(gts)['lq'])


def test_params_replay_and_dtypes():
    gts = _crops()[:4]
    quiet = dict(gaussian_noise_prob=1.0, noise_range=(0, 0), gaussian_noise_prob2=1.0, noise_range2=(0, 0))
    deg = build_degradation('osediff', seed=9, **quiet)
    params = deg.sample_params(4, CROP, CROP)
    # parameters are drawn on the CPU whatever the images' device, so a seed gives the same parameters anywhere
    assert all(v.device.type == 'cpu' for v in params.values())
    first, again = deg(gts, params=params), deg(gts, params=params)
    assert torch.equal(first['lq'], again['lq']) and first['params'] is params
    out64 = build_degradation('osediff', seed=9)(gts.double())
    assert out64['lq'].dtype == torch.float64 and out64['lq'].shape == gts.shape
    face = build_degradation('codeformer_face', seed=9)(gts.double())
    assert face['lq'].dtype == torch.float64
    with pytest.raises(ValueError, match='B, 3, H, W'):
        deg(gts[:, :1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu_parameters_and_statistics():
    gts = _gt_sequence(256)
    cpu = build_degradation('osediff', seed=4)(gts)
    gpu = build_degradation('osediff', seed=4)(gts.cuda())
    assert gpu['lq'].is_cuda
    assert all(_same(value, gpu['params'][key]) for key, value in cpu['params'].items())
    _assert_same_mean(gpu['lq'].cpu().mean((1, 2, 3)).numpy(), cpu['lq'].mean((1, 2, 3)).numpy(), 'LQ mean',
                      paired=True)


def test_registry_and_presets():
    assert {'RealESRGANDegradation', 'FaceDegradation'} <= set(DEGRADATIONS.registered_names())
    deg = DEGRADATIONS.build(dict(type='RealESRGANDegradation', scale=2, use_usm=False, seed=0))
    assert isinstance(deg, RealESRGANDegradation) and deg(_crops()[:2])['lq'].shape[-1] == CROP // 2
    assert isinstance(build_degradation('codeformer_face'), FaceDegradation)
    assert build_degradation({'preset': 'osediff', 'seed': 3}).seed == 3
    with pytest.raises(KeyError, match='realesrgan'):
        build_degradation('real-esrgan')
    # the presets carry the values of the reference ymls
    osediff, seesr = preset_config('osediff'), preset_config('seesr')
    assert not osediff['use_usm'] and osediff['resize_back'] and osediff['scale'] == 4
    assert osediff['noise_range'] == (1, 30) and seesr['noise_range'] == (1, 15)
    assert seesr['jpeg_range2'] == (60, 100) and seesr['second_blur_prob'] == 0.5
    face = preset_config('codeformer_face')
    assert (face['blur_kernel_size'], face['blur_sigma'], face['downsample_range'], face['noise_range'],
            face['jpeg_range']) == (41, (1, 15), (1, 30), (0, 20), (30, 100))
