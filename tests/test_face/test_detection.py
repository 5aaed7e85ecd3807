"""Face detectors: dlib (real models from PyPI) on real photos, RetinaFace layout/maths, shared options, bad input."""
import math

import cv2
import numpy as np
import pytest
import torch

from portraitisr.weights import WeightsNotFoundError
from portraitisr.face.detection import (BaseFaceDetector, DlibFaceDetector, FaceDetections, RetinaFaceDetector,
                                        build_default_face_detector, decode_boxes, decode_landmarks, prior_boxes)
from portraitisr.registry import FACE_DETECTORS
from tests.helpers.data_files import require_test_data


# ------------------------------------------------------------------------------------------------ helpers
def _astronaut() -> np.ndarray:
    from skimage import data
    return data.astronaut()


def _grace() -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image
    with Image.open(cbook.get_sample_data('grace_hopper.jpg')) as im:
        return np.asarray(im.convert('RGB'))


@pytest.fixture(scope='module')
def hog():
    return DlibFaceDetector('hog', upsample_times=1)


@pytest.fixture(scope='module')
def hog0():
    return DlibFaceDetector('hog', upsample_times=0)


@pytest.fixture(scope='module')
def mmod():
    return DlibFaceDetector('mmod', upsample_times=1)


def _check_well_formed(dets: FaceDetections) -> None:
    n = len(dets)
    assert dets.boxes.shape == (n, 4) and dets.boxes.dtype == np.float32
    assert dets.scores.shape == (n, ) and dets.scores.dtype == np.float32
    assert dets.landmarks.shape == (n, 5, 2) and dets.landmarks.dtype == np.float32
    assert np.all(np.diff(dets.scores) <= 0), 'faces must be sorted by score, highest first'


def _check_face_geometry(dets: FaceDetections) -> None:
    for box, lm in zip(dets.boxes, dets.landmarks):
        x1, y1, x2, y2 = box
        assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2)), (box, lm)
        assert lm[0, 0] < lm[1, 0], 'left eye (image left) first'
        assert lm[3, 0] < lm[4, 0], 'left mouth corner (image left) first'
        assert min(lm[3, 1], lm[4, 1]) > max(lm[0, 1], lm[1, 1]), 'mouth below the eyes'
        assert lm[0, 1] < lm[2, 1] < lm[3, 1], 'nose between eyes and mouth'


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _two_face_canvas():
    """600 x 1000 canvas: astronaut (face ~90 px, left) and Grace Hopper at 0.35 (face ~65 px, nearer the centre)."""
    canvas = np.full((600, 1000, 3), 128, np.uint8)
    canvas[:512, :512] = _astronaut()
    grace = cv2.resize(_grace(), (180, 210), interpolation=cv2.INTER_AREA)
    canvas[150:360, 600:780] = grace
    return canvas


# ------------------------------------------------------------------------------------------------ dlib, real photos
@pytest.mark.parametrize('which', ['hog', 'mmod'])
@pytest.mark.parametrize('photo', ['astronaut', 'grace_hopper'])
def test_dlib_finds_the_one_face(which, photo, hog, mmod):
    detector = {'hog': hog, 'mmod': mmod}[which]
    image = {'astronaut': _astronaut, 'grace_hopper': _grace}[photo]()
    dets = detector.detect(image)
    assert isinstance(dets, list) and len(dets) == 1
    dets = dets[0]
    _check_well_formed(dets)
    assert len(dets) == 1, f'{which} on {photo}: {dets.boxes}'
    _check_face_geometry(dets)
    eye_dist = dets.eye_distances()[0]
    assert 0.25 < eye_dist / (dets.boxes[0, 2] - dets.boxes[0, 0]) < 0.6


def test_dlib_hog_and_mmod_agree_on_fixture_photos(hog, mmod):
    from portraitisr.utils.image_io import list_images, read_image

    counts = {}
    for path in list_images(require_test_data('portraits_lq') / 'whole'):
        record = read_image(path)
        a, b = hog.detect(record.rgb)[0], mmod.detect(record.rgb)[0]
        counts[path.name] = (len(a), len(b))
        for first, second, names in ((a, b, 'HOG->MMOD'), (b, a, 'MMOD->HOG')):
            for box in first.boxes:
                best = max((_iou(box, other) for other in second.boxes), default=0.0)
                assert best > 0.3, f'{path.name}: a face found by {names.split("->")[0]} at {box} is missed by ' \
                                   f'{names.split("->")[1]} (best IoU {best:.2f})'
        assert len(a) >= 1
    print('faces per image (HOG, MMOD, upsample 1):', counts)


def test_dlib_landmark_order_matches_68_point_mapping():
    from portraitisr.face.detection import landmarks68_to_5
    pts = np.zeros((68, 2), np.float32)
    pts[36:42] = [10, 20]
    pts[42:48] = [30, 20]
    pts[30] = [20, 30]
    pts[48] = [12, 40]
    pts[54] = [28, 40]
    np.testing.assert_array_equal(landmarks68_to_5(pts), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])


# ------------------------------------------------------------------------------------------------ options
def test_options_largest_center_eye_dist(hog):
    canvas = _two_face_canvas()
    all_faces = hog.detect(canvas)[0]
    assert len(all_faces) == 2
    areas = (all_faces.boxes[:, 2] - all_faces.boxes[:, 0]) * (all_faces.boxes[:, 3] - all_faces.boxes[:, 1])
    big, small = int(np.argmax(areas)), int(np.argmin(areas))
    assert all_faces.boxes[big, 0] < 500 < all_faces.boxes[small, 0]  # astronaut left, Grace right

    def run(**options):
        return DlibFaceDetector('hog', upsample_times=1, **options).detect(canvas)[0]

    largest = run(only_keep_largest=True)
    np.testing.assert_allclose(largest.boxes, all_faces.boxes[[big]])
    center = run(only_center_face=True)  # Grace's box centre (~x 690) is nearer x=500 than the astronaut's (~x 220)
    np.testing.assert_allclose(center.boxes, all_faces.boxes[[small]])
    both = run(only_keep_largest=True, only_center_face=True)  # largest wins
    np.testing.assert_allclose(both.boxes, all_faces.boxes[[big]])
    eyes = all_faces.eye_distances()
    cut = float(eyes.mean())
    assert eyes.min() < cut < eyes.max()
    kept = run(eye_dist_threshold=cut)
    assert len(kept) == 1 and kept.eye_distances()[0] >= cut
    assert len(run(eye_dist_threshold=float(eyes.max()) + 1)) == 0


def test_resize_maps_back_to_input_pixels(hog0):
    big = _astronaut()
    small = cv2.resize(big, (160, 160), interpolation=cv2.INTER_AREA)  # face ~28 px: too small for HOG without help
    assert len(hog0.detect(small)[0]) == 0
    up = DlibFaceDetector('hog', upsample_times=0, resize=512).detect(small)[0]
    ref = hog0.detect(big)[0]
    assert len(up) == 1
    np.testing.assert_allclose(up.boxes * (512 / 160), ref.boxes, atol=12)
    _check_face_geometry(up)
    assert up.boxes[0, 2] <= 160 and up.landmarks.max() <= 160  # in the 160-pixel input's coordinates
    # Shrinking (resize below the short side) maps back too.
    down = DlibFaceDetector('hog', upsample_times=1, resize=384).detect(_grace())[0]
    full = DlibFaceDetector('hog', upsample_times=1).detect(_grace())[0]
    assert len(down) == len(full) == 1 and _iou(down.boxes[0], full.boxes[0]) > 0.7


# ------------------------------------------------------------------------------------------------ inputs
def test_no_face_and_tiny_images_give_empty_results(hog):
    for image in (np.full((200, 300, 3), 90, np.uint8), np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8),
                  np.zeros((5, 400, 3), np.uint8)):
        dets = hog.detect(image)[0]
        assert len(dets) == 0
        assert dets.boxes.shape == (0, 4) and dets.scores.shape == (0, ) and dets.landmarks.shape == (0, 5, 2)
        assert dets.to_facexlib().shape == (0, 15)


def test_gray_rgba_16bit_float_and_tensor_inputs_agree(hog):
    rgb = _grace()
    ref = hog.detect(rgb)[0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1, ), 7, np.uint8)], axis=2)
    as16 = rgb.astype(np.uint16) * 257
    as_float = rgb.astype(np.float32) / 255
    tensor = torch.from_numpy(as_float).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    results = hog.detect([gray, gray[..., None], rgba, as16, as_float])
    results += hog.detect(tensor)
    results += hog.detect(np.stack([rgb, rgb]))  # B x H x W x 3 array
    assert len(results) == 9
    for dets in results[2:]:  # RGBA, 16 bit, float and the tensor batch are the same pixels
        np.testing.assert_allclose(dets.boxes, ref.boxes)
        np.testing.assert_allclose(dets.landmarks, ref.landmarks)
    for dets in results[:2]:  # gray: the same face
        assert len(dets) == 1 and _iou(dets.boxes[0], ref.boxes[0]) > 0.7


def test_bad_values_raise_clear_errors(hog):
    image = _astronaut().astype(np.float32) / 255
    image[10, 10, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        hog.detect(image)
    with pytest.raises(ValueError, match='NaN'):
        hog.detect(torch.from_numpy(image).permute(2, 0, 1)[None])
    with pytest.raises(ValueError, match='infinite'):
        hog.detect(np.full((20, 20, 3), np.inf, np.float32))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        hog.detect(_astronaut().astype(np.float32))  # floats in 0..255
    with pytest.raises(ValueError, match='shape'):
        hog.detect(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match='empty'):
        hog.detect(np.zeros((0, 10, 3), np.uint8))


def test_very_wide_image(hog0):
    face = _astronaut()
    wide = np.full((512, 10000, 3), 128, np.uint8)
    wide[:, 7000:7512] = face
    ref = hog0.detect(face)[0]
    dets = hog0.detect(wide)[0]  # 5 Mpx: over tile_size**2, so tiled
    assert len(dets) == 1
    # HOG works on an 8-pixel cell grid, which the tile offset shifts: same face, boxes within a cell.
    np.testing.assert_allclose(dets.boxes, ref.boxes + [7000, 0, 7000, 0], atol=8)
    assert _iou(dets.boxes[0], ref.boxes[0] + [7000, 0, 7000, 0]) > 0.8
    _check_face_geometry(dets)


def test_tiling_merges_faces_across_tile_edges():
    face = _astronaut()
    canvas = np.full((700, 3000, 3), 128, np.uint8)
    canvas[100:612, 300:812] = face  # face at x 479..567: across the inner edges of the first tiles
    canvas[150:662, 2000:2512] = face
    # The reference is the untiled detector on the same canvas: HOG's boxes depend on where the face sits on its
    # 8-pixel cell grid, so the face detected alone at (0, 0) is not the reference (its box is 88 px, here 104).
    untiled = DlibFaceDetector('hog', upsample_times=0, tile_size=4096).detect(canvas)[0]
    tiled = DlibFaceDetector('hog', upsample_times=0, tile_size=512, tile_overlap=128)
    dets = tiled.detect(canvas)[0]
    assert len(untiled) == 2 and len(dets) == 2, dets.boxes  # each face once: cut copies dropped, duplicates merged
    for found, reference in zip(dets.boxes[np.argsort(dets.boxes[:, 0])],
                                untiled.boxes[np.argsort(untiled.boxes[:, 0])]):
        assert _iou(found, reference) > 0.9, (found, reference)
    _check_face_geometry(dets)


class _SquareDetector(BaseFaceDetector):
    """A fake backend: every white (255) blob of at least ``min_side`` pixels in the image it is given is a face."""

    def __init__(self, min_side=12, **kwargs):
        super().__init__(conf_threshold=0.0, **kwargs)
        self.min_side = min_side
        self.calls = []

    def _detect_batch(self, images):
        out = []
        for image in images:
            self.calls.append(image.shape[:2])
            mask = (image[..., 0] == 255).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:] if min(w, h) >= self.min_side]
            boxes = np.array(boxes, np.float32).reshape(-1, 4)
            cx, cy, bw = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, boxes[:, 2] - boxes[:, 0]
            lm = np.stack([np.stack([cx - bw / 4, cy - bw / 8], 1), np.stack([cx + bw / 4, cy - bw / 8], 1),
                           np.stack([cx, cy], 1), np.stack([cx - bw / 5, cy + bw / 4], 1),
                           np.stack([cx + bw / 5, cy + bw / 4], 1)], 1)
            out.append(FaceDetections(boxes, bw / 1000, lm))
        return out


def test_tiling_logic_with_a_fake_backend():
    """Faces up to the overlap come from the tiles (full resolution, cut copies dropped, duplicates merged); a face
    larger than a tile comes from the shrunk whole-image pass; memory stays at tile size."""
    canvas = np.zeros((600, 3000, 3), np.uint8)
    small = [(500, 100, 40), (1010, 300, 60), (2960, 550, 40)]  # (x, y, side); x 1010 crosses tile edges
    for x, y, side in small:
        canvas[y:y + side, x:x + side] = 255
    canvas[50:550, 1500:2100] = 255  # 600 x 500: larger than a 400 tile
    det = _SquareDetector(tile_size=400, tile_overlap=80)
    dets = det.detect(canvas)[0]
    assert max(h * w for h, w in det.calls) <= 400 * 400  # bounded: no pass sees more pixels than a tile
    assert len(dets) == 4, dets.boxes
    boxes = dets.boxes[np.argsort(dets.boxes[:, 0])]
    for box, (x, y, side) in zip(boxes[[0, 1, 3]], small):
        np.testing.assert_allclose(box, [x, y, x + side, y + side])  # exact: found at full resolution
    np.testing.assert_allclose(boxes[2], [1500, 50, 2100, 550], atol=6)  # from the shrunk pass
    # Without tiling (a big tile size) the same faces, in one call.
    plain = _SquareDetector(tile_size=4096, tile_overlap=80)
    ref = plain.detect(canvas)[0]
    assert len(plain.calls) == 1 and len(ref) == 4


# ------------------------------------------------------------------------------------------------ RetinaFace
def _bn(prefix):
    return [f'{prefix}.{name}' for name in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')]


def _conv_bn(prefix):  # facexlib conv_bn / conv_bn_no_relu / conv_bn1X1: Sequential(conv, bn[, act])
    return [f'{prefix}.0.weight', *_bn(f'{prefix}.1')]


def _conv_dw(prefix):  # facexlib conv_dw: Sequential(dw conv, bn, act, pw conv, bn, act)
    return [f'{prefix}.0.weight', *_bn(f'{prefix}.1'), f'{prefix}.3.weight', *_bn(f'{prefix}.4')]


def facexlib_retinaface_keys(network):
    """The state-dict keys of facexlib 0.3.0 ``RetinaFace`` (facexlib/detection/retinaface.py, retinaface_net.py).

    body: IntermediateLayerGetter over torchvision resnet50 (return layer2..4: conv1, bn1, layer1..4 kept) or
    MobileNetV1 (stage1..3 kept, avg/fc dropped); fpn: output1..3 (conv_bn1X1), merge1..2 (conv_bn); ssh1..3:
    conv3X3, conv5X5_1, conv5X5_2, conv7X7_2, conv7x7_3; heads: ModuleList of 3 x ``conv1x1``.
    """
    keys = []
    if network == 'resnet50':
        keys += ['body.conv1.weight', *_bn('body.bn1')]
        for layer, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
            for block in range(blocks):
                prefix = f'body.layer{layer}.{block}'
                for i in (1, 2, 3):
                    keys += [f'{prefix}.conv{i}.weight', *_bn(f'{prefix}.bn{i}')]
                if block == 0:
                    keys += [f'{prefix}.downsample.0.weight', *_bn(f'{prefix}.downsample.1')]
    else:
        keys += _conv_bn('body.stage1.0')
        keys += [k for i in range(1, 6) for k in _conv_dw(f'body.stage1.{i}')]
        keys += [k for i in range(6) for k in _conv_dw(f'body.stage2.{i}')]
        keys += [k for i in range(2) for k in _conv_dw(f'body.stage3.{i}')]
    for name in ('output1', 'output2', 'output3', 'merge1', 'merge2'):
        keys += _conv_bn(f'fpn.{name}')
    for ssh in ('ssh1', 'ssh2', 'ssh3'):
        for name in ('conv3X3', 'conv5X5_1', 'conv5X5_2', 'conv7X7_2', 'conv7x7_3'):
            keys += _conv_bn(f'{ssh}.{name}')
    for head in ('ClassHead', 'BboxHead', 'LandmarkHead'):
        keys += [f'{head}.{i}.conv1x1.{p}' for i in range(3) for p in ('weight', 'bias')]
    return keys


@pytest.mark.parametrize('network,channels,body_key,body_shape', [
    ('resnet50', 256, 'fpn.output1.0.weight', (256, 512, 1, 1)),
    ('mobilenet0.25', 64, 'body.stage1.0.0.weight', (8, 3, 3, 3)),
])
def test_retinaface_facexlib_layout_loads_strictly(tmp_path, network, channels, body_key, body_shape):
    source = RetinaFaceDetector(network, pretrained=False)
    state = source.state_dict()
    expected = facexlib_retinaface_keys(network)
    assert len(expected) == len(set(expected))
    assert set(state) == set(expected)
    assert tuple(state[body_key].shape) == body_shape
    assert tuple(state['ClassHead.0.conv1x1.weight'].shape) == (4, channels, 1, 1)  # 2 anchors x 2 classes
    assert tuple(state['BboxHead.2.conv1x1.weight'].shape) == (8, channels, 1, 1)
    assert tuple(state['LandmarkHead.1.conv1x1.weight'].shape) == (20, channels, 1, 1)

    # A file with exactly facexlib's keys, and one with DataParallel's 'module.' prefix, both load strictly.
    plain, prefixed = tmp_path / 'plain.pth', tmp_path / 'prefixed.pth'
    torch.save({k: state[k] for k in expected}, plain)
    torch.save({f'module.{k}': v for k, v in state.items()}, prefixed)
    for path in (plain, prefixed):
        loaded = RetinaFaceDetector(network, weights=str(path))
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state[key]), key
    # A wrong file is refused by the strict load.
    torch.save({k: v for k, v in list(state.items())[1:]}, tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match='Missing key'):
        RetinaFaceDetector(network, weights=str(tmp_path / 'partial.pth'))


def test_retinaface_missing_weights_raise(tmp_path, monkeypatch):
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('PORTRAITISR_ALLOW_DOWNLOAD', '0')
    import portraitisr.weights.places as places
    monkeypatch.setattr(places, 'file_cache_dirs', lambda: [])
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torch' / 'hub'))
    with pytest.raises(WeightsNotFoundError, match='detection_mobilenet0.25_Final.pth'):
        RetinaFaceDetector('mobilenet0.25')
    # The default detector never downloads: without RetinaFace weights it falls back to dlib.
    default = build_default_face_detector(eye_dist_threshold=5)
    assert isinstance(default, DlibFaceDetector) and default.eye_dist_threshold == 5
    # With the file in PORTRAITISR_HOME it is RetinaFace-ResNet50 at facexlib's 0.97 threshold.
    (tmp_path / 'home').mkdir()
    torch.save(RetinaFaceDetector('resnet50', pretrained=False).state_dict(),
               tmp_path / 'home' / 'detection_Resnet50_Final.pth')
    default = build_default_face_detector()
    assert isinstance(default, RetinaFaceDetector) and default.network == 'resnet50'
    assert default.conf_threshold == 0.97


def test_prior_boxes_by_hand():
    h, w = 16, 32
    priors = prior_boxes(h, w)
    # level maps: ceil(16/8) x ceil(32/8) = 2 x 4, 1 x 2, 1 x 1; two sizes each
    assert priors.shape == ((2 * 4 + 1 * 2 + 1 * 1) * 2, 4)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 32, 4 / 16, 16 / 32, 16 / 16]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 32, 4 / 16, 32 / 32, 32 / 16]))
    torch.testing.assert_close(priors[2], torch.tensor([12 / 32, 4 / 16, 16 / 32, 16 / 16]))  # next column
    torch.testing.assert_close(priors[8], torch.tensor([4 / 32, 12 / 16, 16 / 32, 16 / 16]))  # second row
    torch.testing.assert_close(priors[16], torch.tensor([8 / 32, 8 / 16, 64 / 32, 64 / 16]))  # level 2
    torch.testing.assert_close(priors[-1], torch.tensor([16 / 32, 16 / 16, 512 / 32, 512 / 16]))  # level 3


def test_decode_by_hand():
    prior = torch.tensor([[0.5, 0.25, 0.2, 0.4]])
    loc = torch.tensor([[1.0, -2.0, 0.0, math.log(2) / 0.2]])
    # centre: 0.5 + 1*0.1*0.2 = 0.52, 0.25 - 2*0.1*0.4 = 0.17; size: 0.2, 0.4*2 = 0.8
    torch.testing.assert_close(decode_boxes(loc, prior), torch.tensor([[0.42, -0.23, 0.62, 0.57]]))
    pre = torch.arange(10, dtype=torch.float32)[None]
    expected = torch.tensor([[[0.5 + 0.1 * 0.2 * (2 * i), 0.25 + 0.1 * 0.4 * (2 * i + 1)] for i in range(5)]])
    torch.testing.assert_close(decode_landmarks(pre, prior), expected)


def test_retinaface_pipeline_by_hand(monkeypatch):
    """Controlled network outputs: one confident prior, loc 0 -> the prior box in pixels; mean/BGR input order."""
    det = RetinaFaceDetector('mobilenet0.25', pretrained=False, conf_threshold=0.5)
    h, w = 64, 96
    priors = prior_boxes(h, w)
    index = 5
    seen = {}

    def fake(x):
        seen['x'] = x
        p = len(priors)
        scores = torch.zeros(x.shape[0], p)
        scores[:, index] = 0.9
        scores[:, index + 1] = 0.8  # same centre, larger box: IoU 0.25 < 0.4, survives NMS
        return torch.zeros(x.shape[0], p, 4), scores, torch.zeros(x.shape[0], p, 10)

    monkeypatch.setattr(det, 'forward_raw', fake)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 200  # red
    dets = det.detect(image)[0]
    x = seen['x'][0]
    assert torch.allclose(x[0], torch.tensor(0 - 104.0)) and torch.allclose(x[2], torch.tensor(200 - 123.0))
    cx, cy, pw, ph = priors[index].tolist()
    expected = [(cx - pw / 2) * w, (cy - ph / 2) * h, (cx + pw / 2) * w, (cy + ph / 2) * h]
    assert len(dets) == 2
    np.testing.assert_allclose(dets.boxes[0], expected, rtol=1e-5)
    np.testing.assert_allclose(dets.scores, [0.9, 0.8])
    np.testing.assert_allclose(dets.landmarks[0], np.tile([[cx * w, cy * h]], (5, 1)), rtol=1e-5)


def test_retinaface_runs_batched_and_well_formed():
    det = RetinaFaceDetector('mobilenet0.25', pretrained=False, conf_threshold=0.5)
    det.train()  # a frozen tool: stays in eval mode, no gradients
    assert not det.training and not any(m.training for m in det.modules())
    assert not any(p.requires_grad for p in det.parameters())
    batch = torch.rand(2, 3, 96, 128)
    results = det.detect(batch)
    assert len(results) == 2
    for dets in results:
        _check_well_formed(dets)
        assert np.all(dets.scores > 0.5)
    single = det.detect(batch[1])[0]
    np.testing.assert_allclose(single.scores, results[1].scores, rtol=1e-5)
    # float input, wide image, tiled (small tile size to keep it fast)
    tiled = RetinaFaceDetector('mobilenet0.25', pretrained=False, conf_threshold=0.5, tile_size=256,
                               tile_overlap=64)
    _check_well_formed(tiled.detect(np.random.default_rng(0).random((100, 700, 3), dtype=np.float32))[0])


# ------------------------------------------------------------------------------------------------ registry
def test_registry_builds_detectors():
    det = FACE_DETECTORS.build(dict(type='DlibFaceDetector', model='hog', only_keep_largest=True))
    assert isinstance(det, BaseFaceDetector) and det.only_keep_largest
    det = FACE_DETECTORS.build(dict(type='RetinaFaceDetector', network='mobile0.25', pretrained=False))
    assert det.network == 'mobilenet0.25'
    with pytest.raises(ValueError, match="'hog' or 'mmod'"):
        DlibFaceDetector('cnn')
