"""IDFSR's data (identity folders, per-identity fine-tuning / test halves, references, landmarks in the aligned
frame) and its section-4.4 metrics (IDS and face-verification accuracy) on real photos."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from portraitisr.datasets import IdentityFaceDataset, load_sample_image
from portraitisr.evaluation.metrics import IDS, FaceVerificationAccuracy
from portraitisr.face.alignment import FaceAligner
from portraitisr.face.alignment.templates import FFHQ_512
from portraitisr.models.conditioning import ReferenceWarper

ASTRONAUT = np.array([[203.17, 101.5], [246.5, 104.17], [225.0, 127.0], [201.0, 139.0], [246.0, 141.0]])
GRACE = np.array([[223.67, 192.33], [305.33, 189.17], [267.0, 238.0], [233.0, 281.0], [300.0, 277.0]])


def _save(array: np.ndarray, path) -> None:
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope='module')
def identity_root(tmp_path_factory):
    """CelebRef-HQ-like: FFHQ-aligned 128 px faces, one folder per identity (astronaut x3, grace x2)."""
    root = tmp_path_factory.mktemp('celebref')
    aligner = FaceAligner(output_size=128)
    for name, image, landmarks, count in (('astronaut', 'sample://astronaut', ASTRONAUT, 3),
                                          ('grace', 'sample://grace_hopper', GRACE, 2)):
        (root / name).mkdir()
        rgb = torch.from_numpy(load_sample_image(image)).permute(2, 0, 1)[None]
        for i in range(count):
            shifted = landmarks + [3.0 * i, -2.0 * i]  # slightly different crops of the same photo
            face = aligner.align(rgb, torch.from_numpy(shifted)[None])[0].permute(1, 2, 0).numpy()
            _save(face, root / name / f'{i:02d}.png')
    (root / 'test_ids.txt').write_text('astronaut\n')
    return root


def test_identity_folders_splits_and_references(identity_root):
    full = IdentityFaceDataset(data_root=str(identity_root), size=64, scale=8, aligned=True, ref_choice='next')
    assert len(full) == 5 and full.metainfo['num_identities'] == 2
    item = full[0]
    assert item['gt'].shape == (3, 64, 64) and item['lq'].shape == (3, 8, 8) and item['ref'].shape == (3, 64, 64)
    info = item['metainfo']
    assert info['identity'] == 'astronaut' and info['ref_path'].endswith('astronaut/01.png')
    # aligned 128 px crops: the FFHQ template at 128 (the aligner's scaling), resized to 64 (pixel centres)
    expected = (FFHQ_512 * 128 / 512 + 0.5) * 64 / 128 - 0.5
    assert np.allclose(info['face_landmarks'].numpy(), expected, atol=1e-4)
    # IDFSR section 4.1: every test identity split equally into fine-tuning and test images
    test = IdentityFaceDataset(data_root=str(identity_root), identities=str(identity_root / 'test_ids.txt'),
                               split='test', size=64, scale=8, aligned=True, ref_choice='next', ref_pool='finetune')
    finetune = IdentityFaceDataset(data_root=str(identity_root), identities=['astronaut'], split='finetune',
                                   size=64, scale=8, aligned=True)
    assert [r.path.rsplit('/', 1)[-1] for r in (finetune.records[i] for i in finetune.items)] == ['00.png', '01.png']
    assert len(test) == 1 and test[0]['metainfo']['path'].endswith('02.png')
    assert test[0]['metainfo']['ref_path'].endswith(('00.png', '01.png'))  # a reference is never a test image
    few = IdentityFaceDataset(data_root=str(identity_root), size=64, scale=8, aligned=True, num_photos=1)
    assert len(few) == 2
    with pytest.raises(FileNotFoundError, match='not folders of'):
        IdentityFaceDataset(data_root=str(identity_root), identities=['nobody'], size=64, scale=8, aligned=True)


def test_photos_are_aligned_from_landmarks_and_flips_keep_them_consistent(tmp_path):
    _save(load_sample_image('sample://astronaut'), tmp_path / 'photo.png')
    landmarks = tmp_path / 'landmarks.json'
    landmarks.write_text(json.dumps({str(tmp_path / 'photo.png'): ASTRONAUT.tolist()}))
    dataset = IdentityFaceDataset(images=[str(tmp_path / 'photo.png')], size=128, scale=8,
                                  landmarks_file=str(landmarks), flip=True)
    np.random.seed(1)
    items = [dataset[0] for _ in range(6)]
    flips = {item['metainfo']['flipped'] for item in items}
    assert flips == {True, False}
    template = (FFHQ_512 + 0.5) * 128 / 512 - 0.5
    for item in items:
        points = item['metainfo']['face_landmarks'].numpy()
        if item['metainfo']['flipped']:  # mirrored and swapped back into image-left-first order
            points = np.stack([127 - points[:, 0], points[:, 1]], -1)[[1, 0, 2, 4, 3]]
        # the similarity alignment puts the five points within a few pixels of the template
        assert np.abs(points - template).max() < 4, points  # LMEDS residual of the real face: 3.3 px here
        assert points[0, 0] < points[1, 0]
    detected = IdentityFaceDataset(images=[str(tmp_path / 'photo.png')], size=128, scale=8,
                                   detector=dict(type='DlibFaceDetector'))
    found = detected[0]['metainfo']['face_landmarks'].numpy()
    assert np.abs(found - template).max() < 6  # dlib's points (from its 68) vs the annotated ones


@pytest.fixture(scope='module')
def faces():
    """(astronaut GT, astronaut metainfo, grace hopper warped onto the astronaut's face): a same-size pair of
    different people in the same frame."""
    gt = torch.from_numpy(load_sample_image('sample://astronaut')).permute(2, 0, 1)[None]
    other = torch.from_numpy(load_sample_image('sample://grace_hopper')).permute(2, 0, 1)[None]
    impostor = ReferenceWarper(transform='similarity')(other, torch.from_numpy(GRACE)[None],
                                                       torch.from_numpy(ASTRONAUT)[None], (512, 512))
    return gt, dict(metainfo=dict(face_landmarks=torch.from_numpy(ASTRONAUT).float())), impostor


def test_ids_is_the_cosine_distance(faces):
    gt, sample, impostor = faces
    metric = IDS(extractor=dict(type='DlibResNet'))
    same = float(metric.score(gt, gt, sample)[0])
    different = float(metric.score(impostor, gt, sample)[0])
    assert abs(same) < 1e-6 and different > 0.05 > same
    cos = metric.face_cosines(impostor, gt, sample)
    assert abs(different - float(1 - cos[0])) < 1e-12
    assert metric.lower_better


def test_verification_accuracy_uses_the_extractors_threshold(faces):
    gt, sample, impostor = faces
    metric = FaceVerificationAccuracy(extractor=dict(type='DlibResNet'), threshold=0.95)
    for pred, expected in ((gt, 1.0), (impostor, 0.0)):
        metric.results = []
        metric.process(None, [dict(pred=pred[0], gt=gt[0], metainfo=sample['metainfo'])])
        assert metric.compute_metrics(metric.results) == {'IDV': 100.0 * expected}
    from portraitisr.face.identity import DlibResNet
    from portraitisr.face.identity.dlib_resnet import SAME_PERSON_SIMILARITY

    # IDV at the extractor's own threshold (dlib's: SAME_PERSON_SIMILARITY, 0.91 on the cosine)
    assert FaceVerificationAccuracy(extractor=dict(type='DlibResNet')).threshold == SAME_PERSON_SIMILARITY == 0.91
    assert DlibResNet.verification_threshold == SAME_PERSON_SIMILARITY


def test_verification_accuracy_without_a_threshold_fails_clearly(monkeypatch):
    from portraitisr.face.identity import DlibResNet

    monkeypatch.setattr(DlibResNet, 'verification_threshold', None)
    with pytest.raises(ValueError, match='DlibResNet has no verification_threshold .*pass threshold= explicitly'):
        FaceVerificationAccuracy(extractor=dict(type='DlibResNet'))
    assert FaceVerificationAccuracy(extractor=dict(type='DlibResNet'), threshold=0.5).threshold == 0.5
