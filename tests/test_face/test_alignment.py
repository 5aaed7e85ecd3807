"""FaceAligner and detect_and_align: parity with facexlib, estimators, gradients, batching, empty input."""
from types import SimpleNamespace

import numpy as np
import pytest
import cv2
import torch

from portraitisr.face.alignment import (ARCFACE_112, FFHQ_512, FaceAligner, FaceBatch, detect_and_align,
                                         estimate_similarity_lmeds, estimate_similarity_lstsq, get_template)
from portraitisr.registry import FACE_ALIGNERS
from tests.helpers.data_files import require_test_data


# 5 points per face (left eye, right eye, nose, left mouth, right mouth), picked once with dlib's 68-point
# model (eye centres, nose tip, mouth corners) and written down; parity only needs the same points on both sides.
LANDMARKS = {
    'astronaut': [[[203.2, 101.5], [246.5, 104.2], [225.0, 127.0], [201.0, 139.0], [246.0, 141.0]],
                  [[156.5, 369.8], [187.0, 358.7], [183.0, 377.0], [164.0, 406.0], [201.0, 392.0]]],
    'grace_hopper': [[[223.7, 192.3], [305.3, 189.2], [267.0, 238.0], [233.0, 281.0], [300.0, 277.0]]],
    '00.jpg': [[[185.0, 97.7], [201.0, 98.0], [193.0, 108.0], [187.0, 113.0], [201.0, 113.0]],
               [[402.0, 88.7], [418.8, 86.7], [411.0, 98.0], [406.0, 109.0], [418.0, 108.0]],
               [[72.0, 100.5], [90.5, 101.7], [83.0, 109.0], [71.0, 117.0], [90.0, 117.0]],
               [[291.8, 100.3], [306.0, 98.0], [299.0, 109.0], [293.0, 114.0], [309.0, 111.0]]],
    '01.jpg': [[[178.0, 87.5], [200.0, 87.8], [189.0, 101.0], [181.0, 112.0], [196.0, 113.0]],
               [[106.7, 134.3], [128.8, 133.2], [118.0, 149.0], [112.0, 160.0], [127.0, 159.0]],
               [[114.5, 38.0], [134.3, 37.2], [124.0, 48.0], [118.0, 60.0], [133.0, 58.0]],
               [[46.3, 68.3], [67.5, 69.8], [54.0, 80.0], [48.0, 92.0], [62.0, 94.0]]],
    '02.png': [[[666.0, 155.0], [722.7, 149.3], [699.0, 186.0], [676.0, 215.0], [722.0, 213.0]],
               [[192.5, 105.2], [253.0, 108.3], [231.0, 132.0], [197.0, 172.0], [247.0, 175.0]],
               [[901.7, 168.2], [961.2, 159.8], [933.0, 199.0], [912.0, 228.0], [963.0, 221.0]],
               [[450.3, 150.0], [506.2, 155.3], [480.0, 192.0], [448.0, 210.0], [497.0, 214.0]]],
    '03.jpg': [[[139.7, 91.8], [181.8, 89.3], [169.0, 120.0], [141.0, 139.0], [181.0, 136.0]]],
    '04.jpg': [[[102.5, 79.2], [124.7, 78.5], [122.0, 92.0], [105.0, 105.0], [124.0, 104.0]]],
    '05.jpg': [[[95.0, 67.0], [116.7, 74.0], [104.0, 83.0], [87.0, 87.0], [109.0, 94.0]]],
    '06.png': [[[427.8, 223.5], [517.5, 211.0], [477.0, 267.0], [434.0, 309.0], [539.0, 297.0]],
               [[171.2, 270.5], [274.8, 270.2], [230.0, 311.0], [173.0, 364.0], [277.0, 362.0]]],
}
FIXTURE_NAMES = ['00.jpg', '01.jpg', '02.png', '03.jpg', '04.jpg', '05.jpg', '06.png']


def load_rgb(name: str) -> np.ndarray:
    """H x W x 3 uint8 RGB."""
    if name == 'astronaut':
        import skimage.data
        return skimage.data.astronaut()
    if name == 'grace_hopper':
        import matplotlib.cbook
        from PIL import Image
        with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
            return np.array(Image.open(f).convert('RGB'))
    path = require_test_data('portraits_lq') / 'whole' / name
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


def to_tensor(rgb: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(dtype) / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x 3 x h x w in [0, 1] -> N x h x w x 3 uint8 (rounded)."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def close_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a.astype(np.int32) - b.astype(np.int32)) <= 1).mean())


@pytest.fixture()
def facexlib_helper(monkeypatch):
    """A factory of facexlib FaceRestoreHelpers whose detector and ParseNet are never built (no downloads)."""
    import facexlib.utils.face_restoration_helper as frh  # the dev extra
    monkeypatch.setattr(frh, 'init_detection_model', lambda *args, **kwargs: None)
    monkeypatch.setattr(frh, 'init_parsing_model', lambda *args, **kwargs: None)

    def make(upscale_factor, use_parse=False):
        return frh.FaceRestoreHelper(upscale_factor, face_size=512, crop_ratio=(1, 1), use_parse=use_parse,
                                     device=torch.device('cpu'))
    return make


def parity_case(make_helper, rgb, landmarks, upscale, parse_mask=None):
    """Crop and paste with facexlib and with FaceAligner from the same landmarks; returns the two fractions."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    helper = make_helper(upscale, use_parse=parse_mask is not None)
    if parse_mask is not None:  # ParseNet stand-in: class 1 (kept) inside parse_mask, class 0 (background) outside
        logits = torch.from_numpy(np.stack([1 - parse_mask, parse_mask] + [parse_mask * 0 - 1] * 17))[None]
        helper.face_parse = lambda x: (logits,)
    helper.read_image(bgr)
    helper.all_landmarks_5 = [lm for lm in landmarks]
    helper.align_warp_face()

    aligner = FaceAligner('ffhq512', estimator='lmeds')
    matrices = aligner.estimate(torch.from_numpy(landmarks))
    np.testing.assert_allclose(matrices.numpy(), np.stack(helper.affine_matrices), rtol=0, atol=1e-9)
    index = torch.zeros(len(landmarks), dtype=torch.long)
    ours = aligner.align(to_tensor(rgb), matrices, index)
    crop_fraction = close_fraction(to_uint8(ours), np.stack(helper.cropped_faces)[..., ::-1])

    # "Restored" faces: the inverted crops, so that every pasted pixel differs strongly from the background.
    restored = [255 - face for face in helper.cropped_faces]
    for face in restored:
        helper.add_restored_face(face)
    helper.get_inverse_affine()
    size = (int(bgr.shape[1] * upscale), int(bgr.shape[0] * upscale))
    upsampled = cv2.resize(bgr, size, interpolation=cv2.INTER_LANCZOS4)
    expected = helper.paste_faces_to_input_image(upsample_img=upsampled)[..., ::-1]
    faces = torch.cat([to_tensor(face[..., ::-1]) for face in restored])
    mask = None if parse_mask is None else torch.from_numpy(parse_mask)[None, None].expand(len(restored), 1, -1, -1)
    pasted = aligner.paste(to_tensor(upsampled[..., ::-1]), faces, matrices, index, upscale_factor=upscale, mask=mask)
    paste_fraction = close_fraction(to_uint8(pasted)[0], expected)
    return crop_fraction, paste_fraction


@pytest.mark.parametrize('name', ['astronaut', 'grace_hopper'] + FIXTURE_NAMES)
def test_parity_with_facexlib(name, facexlib_helper):
    rgb = load_rgb(name)
    landmarks = np.array(LANDMARKS[name], dtype=np.float64)
    for upscale in (1, 2):
        crop, paste = parity_case(facexlib_helper, rgb, landmarks, upscale)
        print(f'\n{name} x{upscale}: crops within 1/255: {100 * crop:.4f}%, paste-back: {100 * paste:.4f}%')
        assert crop >= 0.99 and paste >= 0.99, (name, upscale, crop, paste)


def test_border_fill_matches_facexlib(facexlib_helper):
    """A face cut by the image corner: the crop's grey fill is facexlib's BGR (135, 133, 132), i.e. our RGB default."""
    rgb = load_rgb('grace_hopper')
    landmarks = np.array(LANDMARKS['grace_hopper'], dtype=np.float64) - [200, 170]
    assert FaceAligner().validity_mask(to_tensor(rgb), landmarks).mean() < 0.8
    for upscale in (1, 2):
        crop, paste = parity_case(facexlib_helper, rgb, landmarks, upscale)
        print(f'\ncorner face x{upscale}: crops within 1/255: {100 * crop:.4f}%, paste-back: {100 * paste:.4f}%')
        assert crop >= 0.99 and paste >= 0.99


def test_parse_mask_paste_matches_facexlib_use_parse(facexlib_helper):
    rgb = load_rgb('astronaut')
    yy, xx = np.mgrid[:512, :512]
    parse_mask = (((xx - 256) / 170) ** 2 + ((yy - 290) / 220) ** 2 < 1).astype(np.float32)
    for upscale in (1, 2):
        crop, paste = parity_case(facexlib_helper, rgb, np.array(LANDMARKS['astronaut'][:1]), upscale, parse_mask)
        print(f'\nuse_parse x{upscale}: paste-back within 1/255: {100 * paste:.4f}%')
        assert crop >= 0.99 and paste >= 0.99


def random_faces(n, rng, noise=0.0, template=FFHQ_512):
    """Landmarks: random similarity transforms of ``template`` (image -> template is the inverse) plus noise."""
    out = []
    for _ in range(n):
        angle = rng.uniform(-0.6, 0.6)
        scale = rng.uniform(0.2, 1.5)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        out.append(template @ rot.T + rng.uniform(0, 400, size=2) + rng.normal(0, noise, size=(5, 2)))
    return np.stack(out)


def test_lmeds_equals_cv2():
    rng = np.random.default_rng(0)
    landmarks = random_faces(40, rng, noise=3.0)
    landmarks[::5, 3] += 40  # a gross outlier in every fifth face
    for dtype in (np.float64, np.float32):
        src = landmarks.astype(dtype)
        ours = estimate_similarity_lmeds(src, FFHQ_512)
        for i in range(len(src)):
            expected = cv2.estimateAffinePartial2D(src[i], FFHQ_512, method=cv2.LMEDS)[0]
            np.testing.assert_allclose(ours[i], expected, rtol=0, atol=1e-6)
    aligner = FaceAligner(estimator='lmeds')
    assert torch.allclose(aligner.estimate(torch.from_numpy(landmarks)), torch.from_numpy(ours.astype(np.float64)),
                          atol=1e-6)


def test_lstsq_equals_lmeds_when_all_points_kept():
    rng = np.random.default_rng(1)
    exact = random_faces(20, rng)
    lmeds = estimate_similarity_lmeds(exact, FFHQ_512)
    lstsq = estimate_similarity_lstsq(torch.from_numpy(exact), torch.from_numpy(FFHQ_512)).numpy()
    # The closed form is exact on noise-free points (float64) ...
    np.testing.assert_allclose(exact @ lstsq[:, :, :2].transpose(0, 2, 1) + lstsq[:, None, :, 2],
                               np.broadcast_to(FFHQ_512, exact.shape), rtol=0, atol=1e-9)
    # ... and OpenCV solves in float32: equal to float32 precision, crop corners within 1e-3 px.
    np.testing.assert_allclose(lstsq[:, :, :2], lmeds[:, :, :2], rtol=0, atol=1e-6)
    corners = np.array([[0, 0, 1], [511, 0, 1], [0, 511, 1], [511, 511, 1]], dtype=np.float64).T

    def image_corners(matrix):
        return np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2] @ corners

    for a, b in zip(lmeds, lstsq):
        assert np.abs(image_corners(a) - image_corners(b)).max() < 1e-3

    # With noise, where LMEDS keeps all five points, both are the least-squares solution.
    noisy = random_faces(60, rng, noise=1.0)
    lstsq = estimate_similarity_lstsq(torch.from_numpy(noisy), torch.from_numpy(FFHQ_512)).numpy()
    compared = 0
    for i, src in enumerate(noisy):
        matrix, inliers = cv2.estimateAffinePartial2D(src, FFHQ_512, method=cv2.LMEDS)
        if inliers.sum() < 5:
            continue
        compared += 1
        assert np.abs(image_corners(matrix) - image_corners(lstsq[i])).max() < 1e-3
    assert compared >= 30


def test_lstsq_gradcheck():
    rng = np.random.default_rng(2)
    src = torch.from_numpy(random_faces(2, rng, noise=2.0) / 100).requires_grad_()
    dst = torch.from_numpy(FFHQ_512 / 100).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, d: estimate_similarity_lstsq(s, d), (src, dst))
    assert estimate_similarity_lstsq(src, dst).dtype == torch.float64


def small_aligner(estimator='lmeds', border_mode='constant'):
    """An aligner onto a 10 x 10 crop (the FFHQ template scaled down) for gradchecks."""
    return FaceAligner(FFHQ_512, output_size=10, template_size=512, estimator=estimator, border_mode=border_mode)


def test_align_gradcheck_wrt_image():
    torch.manual_seed(0)
    aligner = small_aligner()
    landmarks = torch.from_numpy(FFHQ_512 / 512 * 10 * 1.3 + np.array([1.7, 0.9]))[None]
    image = torch.rand(1, 3, 16, 15, dtype=torch.float64, requires_grad=True)
    matrices = aligner.estimate(landmarks)
    assert torch.autograd.gradcheck(lambda x: aligner.align(x, matrices), (image,))
    # Border fill: a translation that moves the crop half outside the image.
    shifted = matrices.clone()
    shifted[:, :, 2] += 6
    assert torch.autograd.gradcheck(lambda x: aligner.align(x, shifted), (image,))


def test_align_gradcheck_wrt_landmarks_lstsq():
    aligner = small_aligner('lstsq')
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((1, 3, 16, 15)))
    landmarks = torch.from_numpy(FFHQ_512 / 512 * 10 * 1.3 + np.array([1.7, 0.9]) + rng.normal(0, 0.2, (5, 2)))
    landmarks = landmarks[None].requires_grad_()
    assert torch.autograd.gradcheck(lambda lm: aligner.align(image, lm), (landmarks,), atol=1e-5)


def test_paste_gradcheck_wrt_face_and_background():
    aligner = small_aligner()
    rng = np.random.default_rng(5)
    matrices = aligner.estimate(torch.from_numpy(FFHQ_512 / 512 * 10 * 1.3 + np.array([3.2, 2.4]))[None])
    face = torch.from_numpy(rng.random((1, 3, 10, 10))).requires_grad_()
    background = torch.from_numpy(rng.random((1, 3, 20, 19))).requires_grad_()
    parse = torch.from_numpy(rng.random((1, 1, 10, 10))).requires_grad_()
    for upscale in (1, 2):
        bg = background if upscale == 1 else background.repeat_interleave(2, -1).repeat_interleave(2, -2)
        assert torch.autograd.gradcheck(lambda f, b: aligner.paste(b, f, matrices, upscale_factor=upscale),
                                        (face, bg), fast_mode=True)
    # Parse-mask path (blurred at 512 x 512, too slow for a numerical gradcheck): gradients reach face and mask.
    aligner.paste(background, face, matrices, mask=parse).sum().backward()
    assert face.grad.abs().sum() > 0 and parse.grad.abs().sum() > 0


def test_templates_and_crop_ratio():
    points, size = get_template('ffhq512', 256)
    np.testing.assert_allclose(points, FFHQ_512 / 2)
    assert size == (256, 256)
    points, size = get_template('ffhq512', 512, crop_ratio=(1.5, 1.25))
    assert size == (768, 640)
    np.testing.assert_allclose(points, FFHQ_512 + [512 * 0.25 / 2, 512 * 0.5 / 2])
    assert FaceAligner('ffhq512', 512, crop_ratio=(1.5, 1)).crop_size == (768, 512)
    np.testing.assert_allclose(get_template('arcface112')[0], ARCFACE_112)
    assert get_template('arcface112', 224)[1] == (224, 224)
    with pytest.raises(KeyError):
        get_template('nope')
    assert isinstance(FACE_ALIGNERS.build(dict(type='FaceAligner', template='arcface112')), FaceAligner)


def test_arcface_template_alignment_puts_landmarks_on_template():
    """Blobs drawn at landmarks that are a similarity of the ArcFace template land on the template points."""
    angle, scale = 0.3, 2.6
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (ARCFACE_112 - ARCFACE_112.mean(0)) @ rot.T + 200
    yy, xx = np.mgrid[:400, :400]
    image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2)) for x, y in landmarks)
    image = torch.from_numpy(image)[None, None].expand(1, 3, -1, -1).float()

    for estimator in ('lmeds', 'lstsq'):
        aligner = FaceAligner('arcface112', estimator=estimator, border_value=(0, 0, 0))
        matrices = aligner.estimate(torch.from_numpy(landmarks)[None])
        mapped = landmarks @ matrices[0, :, :2].numpy().T + matrices[0, :, 2].numpy()
        np.testing.assert_allclose(mapped, ARCFACE_112, atol=1e-4)
        crop = aligner.align(image, matrices)[0, 0].numpy().astype(np.float64)
        assert crop.shape == (112, 112)
        cy, cx = np.mgrid[:112, :112]
        for x, y in ARCFACE_112:
            window = (np.abs(cx - x) < 5) & (np.abs(cy - y) < 5)
            weights = crop * window
            centroid = np.array([(weights * cx).sum(), (weights * cy).sum()]) / weights.sum()
            assert np.abs(centroid - [x, y]).max() < 0.5, (estimator, centroid, (x, y))


def test_batched_over_faces_of_several_images():
    torch.manual_seed(0)
    rgb = [load_rgb('astronaut'), load_rgb('grace_hopper')[:512]]
    images = torch.cat([to_tensor(x) for x in rgb])
    landmarks = torch.tensor(LANDMARKS['astronaut'] + LANDMARKS['grace_hopper'], dtype=torch.float64)
    index = torch.tensor([0, 0, 1])
    aligner = FaceAligner('ffhq512', output_size=128)
    matrices = aligner.estimate(landmarks)
    faces = aligner.align(images, matrices, index)
    assert faces.shape == (3, 3, 128, 128)
    for i in range(3):
        single = aligner.align(images[index[i]:index[i] + 1], matrices[i:i + 1])
        assert torch.allclose(faces[i:i + 1], single, atol=1e-6)
    assert torch.allclose(aligner.align(images, landmarks, index), faces, atol=1e-6)
    with pytest.raises(ValueError):
        aligner.align(images, matrices)  # 3 faces, 2 images, no image_index

    # Paste several faces into several images: equals pasting them one by one.
    restored = 1 - faces
    pasted = aligner.paste(images, restored, matrices, index)
    assert pasted.shape == images.shape
    expected = images.clone()
    for i in range(3):
        b = int(index[i])
        expected[b:b + 1] = aligner.paste(expected[b:b + 1], restored[i:i + 1], matrices[i:i + 1])
    assert torch.allclose(pasted, expected, atol=1e-6)
    assert (pasted - images).abs().amax() > 0.5

    # The exposed soft square mask is what paste blends with: 1 in the face centre, 0 far away.
    soft = aligner.square_mask(matrices, images.shape[-2:])
    assert soft.shape == (3, 1, 512, 512)
    center = matrices.new_tensor([64.0, 64.0, 1.0])
    inv = torch.linalg.inv(torch.cat([matrices, matrices.new_tensor([[[0, 0, 1]]]).expand(3, 1, 3)], 1))
    for i in range(3):
        x, y = (inv[i] @ center)[:2].round().long().tolist()
        assert soft[i, 0, y, x] > 0.99
    assert soft[:, :, 0, -1].abs().max() < 1e-6


def test_empty_input():
    aligner = FaceAligner()
    images = torch.rand(2, 3, 64, 64)
    empty = torch.zeros(0, 5, 2)
    assert aligner.estimate(empty).shape == (0, 2, 3)
    assert aligner.align(images, empty, torch.zeros(0, dtype=torch.long)).shape == (0, 3, 512, 512)
    assert torch.equal(aligner.paste(images, torch.zeros(0, 3, 512, 512), torch.zeros(0, 2, 3), []), images)
    assert aligner.square_mask(torch.zeros(0, 2, 3), (64, 64)).shape == (0, 1, 64, 64)


def test_gradients_reach_image_face_background_and_landmarks():
    rgb = load_rgb('astronaut')
    image = to_tensor(rgb).requires_grad_()
    aligner = FaceAligner(output_size=128, estimator='lstsq')
    landmarks = torch.tensor(LANDMARKS['astronaut'][:1], dtype=torch.float32, requires_grad=True)
    faces = aligner.align(image, landmarks)
    restored = (faces * 0.9).detach().requires_grad_()
    background = image.detach().clone().requires_grad_()
    out = aligner.paste(background, restored, aligner.estimate(landmarks), upscale_factor=1)
    (faces.square().mean() + out.square().mean()).backward()
    for tensor in (image, landmarks, restored, background):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    # Far from the face the output is the background itself.
    assert torch.allclose(background.grad[0, :, 500, 5], 2 * background[0, :, 500, 5].detach() / out.numel())


def test_paste_keeps_extra_channels_and_parse_mask_bounds():
    aligner = FaceAligner(output_size=64)
    background = torch.rand(1, 4, 100, 120)
    landmarks = torch.from_numpy(FFHQ_512 / 8 * 1.2 + [20, 10])[None]
    matrices = aligner.estimate(landmarks)
    faces = torch.rand(1, 3, 64, 64)
    out = aligner.paste(background, faces, matrices)
    assert out.shape == background.shape and torch.equal(out[:, 3], background[:, 3])
    zero = aligner.paste(background, faces, matrices, mask=torch.zeros(1, 1, 64, 64))
    assert torch.allclose(zero, background, atol=1e-6)
    ones = aligner.paste(background, faces, matrices, mask=torch.ones(1, 1, 64, 64))
    assert not torch.allclose(ones, background)


class FakeDetections(SimpleNamespace):
    pass


class FakeDetector:
    """Returns fixed detections per image, in the FaceDetections layout (numpy boxes, scores, landmarks)."""

    def __init__(self, per_image):
        self.per_image = per_image
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        assert isinstance(images, torch.Tensor) and images.dim() == 4
        out = []
        for landmarks, scores in self.per_image[:images.shape[0]]:
            landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
            boxes = np.concatenate([landmarks.min(1) - 20, landmarks.max(1) + 20], 1)
            out.append(FakeDetections(boxes=boxes, scores=np.asarray(scores, dtype=np.float32), landmarks=landmarks))
        return out


def test_detect_and_align_with_fake_detector():
    images = torch.cat([to_tensor(load_rgb('astronaut')), to_tensor(load_rgb('grace_hopper')[:512])])
    corner = (np.array(LANDMARKS['grace_hopper'][0]) - [200, 170]).tolist()  # a face cut by the image corner
    detector = FakeDetector([(LANDMARKS['astronaut'], [0.6, 0.99]),
                             (LANDMARKS['grace_hopper'] + [corner], [0.98, 0.9])])
    aligner = FaceAligner(output_size=256)
    batch = detect_and_align(images, detector, aligner)
    assert isinstance(batch, FaceBatch) and len(batch) == 4
    assert batch.faces.shape == (4, 3, 256, 256) and batch.masks.shape == (4, 1, 256, 256)
    assert batch.matrices.shape == (4, 2, 3) and batch.landmarks.shape == (4, 5, 2)
    assert batch.boxes.shape == (4, 4) and batch.scores.shape == (4,)
    assert batch.image_index.tolist() == [0, 0, 1, 1] and batch.image_index.dtype == torch.long
    landmarks = torch.tensor(LANDMARKS['astronaut'] + LANDMARKS['grace_hopper'] + [corner], dtype=torch.float64)
    expected = aligner.align(images, aligner.estimate(landmarks), [0, 0, 1, 1])
    assert torch.allclose(batch.faces, expected, atol=1e-6)
    # Validity masks: 1 where the crop sees the image, 0 in the border fill (grey, facexlib's colour).
    assert batch.masks[:3].amin() == 1
    outside = batch.masks[3, 0] == 0
    assert 0.1 < outside.float().mean() < 0.9 and batch.masks[3].amax() == 1
    fill = torch.tensor([132, 133, 135]) / 255
    assert torch.allclose(batch.faces[3][:, outside].T, fill.expand(int(outside.sum()), 3), atol=1e-5)

    top = detect_and_align(images, detector, aligner, max_faces=1)
    assert top.image_index.tolist() == [0, 1]
    assert torch.allclose(top.landmarks[0], batch.landmarks[1]) and top.scores[0] == pytest.approx(0.99)
    assert torch.allclose(top.landmarks[1], batch.landmarks[2])

    moved = batch.to(torch.float64)
    assert moved.faces.dtype == torch.float64 and moved.image_index.dtype == torch.long

    none = detect_and_align(images, FakeDetector([(np.zeros((0, 5, 2)), []), (np.zeros((0, 5, 2)), [])]), aligner)
    assert len(none) == 0
    assert none.faces.shape == (0, 3, 256, 256) and none.masks.shape == (0, 1, 256, 256)
    assert none.matrices.shape == (0, 2, 3) and none.landmarks.shape == (0, 5, 2)
    assert none.boxes.shape == (0, 4) and none.scores.shape == (0,) and none.image_index.shape == (0,)
