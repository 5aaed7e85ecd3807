"""Reference warping (IDFSR section 3.2, appendix E.1): parity with scikit-image's PiecewiseAffineTransform + warp
and with cv2.warpAffine on real photos, batching, gradients, and the registered plug-in.

Measured interpolation error (CPU):
* piecewise affine, float64 images: at most 1.2e-13 from ``skimage.transform.warp`` (both bilinear with edge
  padding; the sampling positions agree to rounding); float32 images: at most 3.5e-5 (the sampling grid is float32,
  i.e. ~3e-5 px at 512 px). Asserted: 1e-10 and 1e-4.
* affine, float32 images: at most 7.1e-5 from ``cv2.warpAffine(INTER_LINEAR)``; uint8 images: every pixel within one
  level after rounding (rounding of the two bilinear implementations). Asserted: 2e-4, and 1 level.
"""
import cv2
import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import PiecewiseAffineTransform, warp

from portraitisr.models.conditioning import (ReferenceWarper, affine_warp, border_anchors, estimate_affine_lstsq,
                                             piecewise_affine_warp)
from portraitisr.registry import MODELS

# 5-point landmarks of the package photos (the sample manifest's values)
LANDMARKS = {
    'astronaut': [[203.17, 101.5], [246.5, 104.17], [225.0, 127.0], [201.0, 139.0], [246.0, 141.0]],
    'grace_hopper': [[223.67, 192.33], [305.33, 189.17], [267.0, 238.0], [233.0, 281.0], [300.0, 277.0]],
}


def _photo(name: str) -> np.ndarray:
    if name == 'grace_hopper':
        from portraitisr.datasets import load_sample_image
        return np.round(load_sample_image('sample://grace_hopper') * 255).astype(np.uint8)
    return getattr(data, name)()


def _target(points: np.ndarray, seed: int, angle: float = 0.2, scale: float = 1.3) -> np.ndarray:
    """Where the reference landmarks should land: a rotated, scaled, shifted and jittered copy."""
    rng = np.random.default_rng(seed)
    centre = points.mean(0)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ rot.T + centre + rng.uniform(-20, 20, 2) + rng.normal(0, 2, points.shape)


def _tensor(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None].to(dtype)


def _skimage(image: np.ndarray, src: np.ndarray, dst: np.ndarray, shape) -> np.ndarray:
    """Appendix E.1 of IDFSR, verbatim in its calls: estimate(dst, src), then warp(..., mode='edge')."""
    tform = PiecewiseAffineTransform()
    tform.estimate(dst, src)
    out = warp(image, tform, output_shape=shape, mode='edge')
    return out if out.ndim == 3 else out[..., None]


@pytest.mark.filterwarnings('ignore::FutureWarning')  # skimage 0.26 deprecates estimate(); the paper calls it
@pytest.mark.parametrize('name, anchors', [('astronaut', 'none'), ('astronaut', 'border'),
                                           ('grace_hopper', 'border'), ('camera', 'border')])
def test_piecewise_affine_equals_skimage_on_real_photos(name, anchors):
    image = _photo(name)
    h, w = image.shape[:2]
    src = np.array(LANDMARKS.get(name, LANDMARKS['astronaut']))
    dst = _target(src, seed=len(name))
    out_shape = (h - 40, w - 24)  # a different output size: the frames differ
    s, d = src, dst
    if anchors == 'border':
        s = np.concatenate([src, border_anchors(h, w).numpy()])
        d = np.concatenate([dst, border_anchors(*out_shape).numpy()])
    expected = _skimage(image, s, d, out_shape)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        ours = piecewise_affine_warp(_tensor(image, dtype), torch.from_numpy(src).to(dtype)[None],
                                     torch.from_numpy(dst).to(dtype)[None], out_shape, anchors=anchors)
        error = np.abs(ours[0].permute(1, 2, 0).double().numpy() - expected)
        assert error.max() < tolerance, (dtype, error.max())
    if anchors == 'none':
        # outside the landmark mesh scikit-image samples (-1, -1), i.e. the corner pixel with edge padding
        outside = np.all(expected == expected[0, 0], axis=-1)
        assert outside.mean() > 0.9


def test_piecewise_affine_is_batched_and_maps_landmarks_onto_targets():
    images = torch.cat([_tensor(_photo('astronaut')), _tensor(_photo('grace_hopper')[:512])])
    src = torch.tensor([LANDMARKS['astronaut'], LANDMARKS['grace_hopper']], dtype=torch.float64)
    dst = torch.from_numpy(np.stack([_target(s.numpy(), seed=i) for i, s in enumerate(src)]))
    batch = piecewise_affine_warp(images, src, dst, (300, 280), anchors='border')
    for i in range(2):
        single = piecewise_affine_warp(images[i:i + 1], src[i:i + 1], dst[i:i + 1], (300, 280), anchors='border')
        assert torch.equal(batch[i], single[0])
    # a bright dot at each reference landmark ends up at the target landmark
    dots = torch.zeros(1, 1, 512, 512, dtype=torch.float64)
    for x, y in src[0].round().long().tolist():
        dots[0, 0, y, x] = 1
    moved = piecewise_affine_warp(dots, src[:1].round(), dst[:1].round(), (512, 512), anchors='border')
    for x, y in dst[0].round().long().tolist():
        assert moved[0, 0, y, x] > 0.999, (x, y)


def test_affine_warp_equals_cv2_warp_affine():
    image = _photo('astronaut')
    src = np.array(LANDMARKS['astronaut'])
    dst = _target(src, seed=0)
    matrix = estimate_affine_lstsq(torch.from_numpy(src)[None], torch.from_numpy(dst)[None])[0]
    design = np.c_[src, np.ones(5)]
    assert np.abs(matrix.numpy() - np.linalg.lstsq(design, dst, rcond=None)[0].T).max() < 1e-9
    for border, mode in ((cv2.BORDER_CONSTANT, 'zeros'), (cv2.BORDER_REPLICATE, 'border')):
        ours = affine_warp(_tensor(image, torch.float32), matrix[None].float(), (480, 500), mode)[0]
        ours = ours.permute(1, 2, 0).numpy()
        floats = cv2.warpAffine(image.astype(np.float32) / 255, matrix.numpy(), (500, 480), flags=cv2.INTER_LINEAR,
                                borderMode=border)
        assert np.abs(ours - floats).max() < 2e-4
        levels = cv2.warpAffine(image, matrix.numpy(), (500, 480), flags=cv2.INTER_LINEAR, borderMode=border)
        assert np.abs(np.round(ours * 255) - levels.astype(np.float64)).max() <= 1


def test_gradients_flow_to_the_image_and_the_landmarks():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 9, 10, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([[[2.2, 2.1], [7.7, 2.4], [4.5, 4.2], [2.9, 6.6], [7.1, 6.8]]], dtype=torch.float64,
                       requires_grad=True)
    dst = (src.detach() + torch.tensor([0.6, -0.4], dtype=torch.float64)).requires_grad_(True)
    for anchors in ('none', 'border'):
        assert torch.autograd.gradcheck(
            lambda img: piecewise_affine_warp(img, src.detach(), dst.detach(), (8, 9), anchors=anchors), (image, ),
            fast_mode=True)
    # w.r.t. the landmarks inside the mesh (with border anchors the frame pixels sample exactly at integer positions,
    # where bilinear interpolation has a kink and finite differences do not apply)
    assert torch.autograd.gradcheck(
        lambda s, d: piecewise_affine_warp(image.detach(), s, d, (8, 9), anchors='none'), (src, dst), fast_mode=True)
    matrix = estimate_affine_lstsq(src, dst)
    assert torch.autograd.gradcheck(lambda img: affine_warp(img, matrix.detach(), (8, 9), 'border'), (image, ),
                                    fast_mode=True)
    warped = ReferenceWarper()(image, src, dst)
    warped.sum().backward()
    assert image.grad.abs().sum() > 0


def test_warper_plug_in_is_registered_and_checks_its_options():
    warper = MODELS.build(dict(type='ReferenceWarper', transform='similarity', padding_mode='zeros'))
    image = _tensor(_photo('astronaut'), torch.float32)
    src = torch.tensor([LANDMARKS['astronaut']], dtype=torch.float64)  # float64 solves: exact matrices
    dst = src * 0.5 + 40
    out = warper(image, src, dst, (256, 256))
    assert out.shape == (1, 3, 256, 256)
    # the targets are an exact similarity of the landmarks: the warp is that similarity
    known = affine_warp(image, torch.tensor([[[0.5, 0, 40], [0, 0.5, 40]]]), (256, 256), 'zeros')
    assert (out - known).abs().max() < 1e-4
    affine = MODELS.build(dict(type='ReferenceWarper', transform='affine'))(image, src, dst, (256, 256))
    inside = (slice(None), slice(None), slice(45, 250), slice(45, 250))  # where the image lands: borders differ
    assert torch.allclose(out[inside], affine[inside], atol=1e-4)
    with pytest.raises(ValueError, match="transform must be 'piecewise_affine', 'affine' or 'similarity'"):
        ReferenceWarper(transform='tps')
    with pytest.raises(ValueError, match='points must be B x K x 2'):
        piecewise_affine_warp(image, torch.zeros(1, 5, 3), torch.zeros(1, 5, 3))
