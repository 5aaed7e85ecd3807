"""Face-region PSNR: where the face is, what it counts, and how it relates to whole-image PSNR."""
import torch

from portraitisr.evaluation.metrics import FacePSNR, psnr
from portraitisr.face.alignment.templates import get_template


def _landmarks(scale=0.5, offset=32.0):
    points, _ = get_template('ffhq512', 128)
    return torch.tensor(points) * scale + offset


def _smooth_image():
    low = torch.rand(1, 3, 8, 8) * 0.8 + 0.1
    return torch.nn.functional.interpolate(low, size=(128, 128), mode='bilinear', align_corners=False)[0]


def _score(metric, pred, gt, landmarks):
    metric.results.clear()
    metric.process(None, [dict(pred=pred, gt=gt, metainfo=dict(face_landmarks=landmarks))])
    return metric.compute_metrics(metric.results)


def test_face_psnr_sees_only_the_face_region():
    metric = FacePSNR(quantize=False)
    gt = torch.rand(3, 128, 128)
    pred = gt.clone()
    pred[:, :16] = torch.rand(3, 16, 128)  # damage outside the face crop ([32, 96) here)
    assert _score(metric, pred, gt, _landmarks())['FacePSNR'] > 100
    # a constant error on a smooth image (resampling cannot average it away): the same PSNR everywhere
    gt = _smooth_image()
    shifted = gt + 0.03
    face = _score(metric, shifted, gt, _landmarks())['FacePSNR']
    assert abs(face - float(psnr(shifted[None], gt[None]))) < 0.01


def test_face_near_the_border_counts_only_pixels_inside_the_image():
    metric = FacePSNR(quantize=False)
    gt = _smooth_image()
    pred = gt + 0.03
    outside = _landmarks(offset=-20.0)  # the crop sticks out of the image: its grey fill must not count
    face = _score(metric, pred, gt, outside)['FacePSNR']
    assert abs(face - float(psnr(pred[None], gt[None]))) < 0.01


def test_samples_without_faces_are_skipped():
    metric = FacePSNR()
    metric.process(None, [dict(pred=torch.rand(3, 64, 64), gt=torch.rand(3, 64, 64), metainfo={})])
    assert metric.compute_metrics(metric.results)['FacePSNR_faces'] == 0
