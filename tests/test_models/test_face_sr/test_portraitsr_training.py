"""PortraitSR data, losses, training model, face parser wrapper and restorer (AAAI 2026)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper
from PIL import Image

from portraitisr.datasets import AlignedFaceDataset
from portraitisr.datasets.aligned_face_dataset import bicubic_downsample, lfw_faces, one_hot_labels
from portraitisr.models.losses.portraitsr_losses import dictionary_decorrelation_loss
from portraitisr.registry import FACE_PARSERS, MODELS, RESTORERS
from tests.helpers.data_files import REPO_ROOT

TINY_NET = dict(dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 1, 2), ffn_expansion=2.0, refine_depth=0, dict_size=16,
                dict_channels=64, num_parsing_classes=19, num_regions=2)


def _model(**overrides):
    cfg = dict(type='PortraitSR', generator=TINY_NET, perceptual_loss=None)
    cfg.update(overrides)
    return MODELS.build(cfg)


def _write_face(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def test_lfw_items_are_bicubic_pairs_without_parsing(caplog):
    dataset = AlignedFaceDataset(lfw_range=(0, 3), size=32, scale=8, repeat=2)
    assert len(dataset) == 6 and dataset.paths == lfw_faces(0, 3)
    item = dataset[4]
    assert item['gt'].shape == (3, 32, 32) and item['lq'].shape == (3, 4, 4)
    assert 0 <= item['gt'].min() and item['gt'].max() <= 1
    torch.testing.assert_close(item['lq'], bicubic_downsample(item['gt'], 8))
    torch.testing.assert_close(item['gt'][0], item['gt'][2])  # grey LFW faces expanded to RGB
    # documented behaviour without parsing files or parser weights: no key, a flag, a warning
    assert 'parsing' not in item and item['metainfo']['has_parsing'] is False
    with pytest.raises(FileNotFoundError, match='require_parsing'):
        AlignedFaceDataset(lfw_range=(0, 1), size=32, require_parsing=True)
    with pytest.raises(ValueError):
        lfw_faces(90, 101)
    with pytest.raises(ValueError, match='multiple'):
        AlignedFaceDataset(lfw_range=(0, 1), size=30, scale=8)


def test_parsing_maps_from_label_files_follow_flips(tmp_path):
    faces, parsing_root = tmp_path / 'faces', tmp_path / 'parsing'
    faces.mkdir()
    parsing_root.mkdir()
    _write_face(faces / 'a.png', 0)
    _write_face(faces / 'b.png', 1)
    labels = np.zeros((16, 16), np.uint8)
    labels[:, :4] = 3  # a stripe on the left
    Image.fromarray(labels).save(parsing_root / 'a.png')
    soft = np.random.default_rng(2).random((5, 8, 8)).astype(np.float32)
    np.save(parsing_root / 'b.npy', soft)
    dataset = AlignedFaceDataset(data_root=str(faces), size=32, scale=4, parsing_root=str(parsing_root),
                                 num_parsing_classes=5, flip=True)
    np.random.seed(0)
    seen = set()
    for _ in range(12):
        item = dataset[0]
        parsing = item['parsing']
        assert parsing.shape == (5, 32, 32) and torch.equal(parsing.sum(0), torch.ones(32, 32))
        flipped = bool(parsing[3, :, -1].all())
        seen.add(flipped)
        assert parsing[3, :, :8].all() != flipped  # the stripe moved with the image
        assert torch.equal(item['gt'], dataset.load(0)[1].flip(-1) if flipped else dataset.load(0)[1])
    assert seen == {True, False}
    soft_item = dataset[1]['parsing']
    if not torch.allclose(soft_item, F.interpolate(torch.from_numpy(soft)[None], size=(32, 32), mode='bilinear',
                                                   align_corners=False)[0]):
        soft_item = soft_item.flip(-1)
    torch.testing.assert_close(soft_item, F.interpolate(torch.from_numpy(soft)[None], size=(32, 32),
                                                        mode='bilinear', align_corners=False)[0])
    (parsing_root / 'b.npy').unlink()
    with pytest.raises(FileNotFoundError, match='b.npy or b.png'):
        AlignedFaceDataset(data_root=str(faces), size=32, parsing_root=str(parsing_root), num_parsing_classes=5)[1]
    with pytest.raises(ValueError, match='labels'):
        one_hot_labels(np.full((4, 4), 7), 5, 4)


def test_face_parser_loads_through_the_resolver_or_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('PORTRAITISR_ALLOW_DOWNLOAD', '0')
    from portraitisr.weights import WeightsNotFoundError
    with pytest.raises(WeightsNotFoundError, match='parsing_bisenet.pth'):
        FACE_PARSERS.build(dict(type='FacexlibFaceParser'))
    dataset = AlignedFaceDataset(lfw_range=(0, 1), size=32, parser=dict(type='FacexlibFaceParser'))
    assert dataset.parser is None and 'parsing' not in dataset[0]
    # a real state dict file (random weights of the same architecture) loads strictly by path
    torch.manual_seed(0)
    random_parser = FACE_PARSERS.build(dict(type='FacexlibFaceParser', pretrained=False, input_size=64))
    weights = tmp_path / 'parsing_bisenet.pth'
    torch.save(random_parser.net.state_dict(), weights)
    loaded = FACE_PARSERS.build(dict(type='FacexlibFaceParser', weights=str(weights), input_size=64))
    assert loaded.weights_path == str(weights) and not loaded.training
    loaded.train()
    assert not loaded.training  # frozen BatchNorm statistics
    dataset = AlignedFaceDataset(lfw_range=(0, 1), size=32, parser=dict(type='FacexlibFaceParser',
                                                                         weights=str(weights), input_size=64))
    parsing = dataset[0]['parsing']
    assert parsing.shape == (19, 32, 32)
    torch.testing.assert_close(parsing.sum(0), torch.ones(32, 32))
    torch.testing.assert_close(parsing, random_parser(dataset.load(0)[1][None])[0])


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    model = _model(generator=dict(TINY_NET, global_residual=True))
    gt = torch.rand(2, 3, 32, 32)
    lq = F.interpolate(F.interpolate(gt, size=(4, 4), mode='bicubic', antialias=True), size=(32, 32),
                       mode='bicubic').clamp(0, 1)
    parsing = torch.rand(2, 19, 32, 32).softmax(1)
    torch.manual_seed(1)
    losses = model.loss(lq, gt, parsing)
    assert set(losses) == {'loss_l1', 'loss_parsing', 'loss_rec', 'loss_dict'}
    out = model.generator(lq, gt)
    torch.testing.assert_close(losses['loss_l1'], F.l1_loss(out['sr'], gt))
    torch.testing.assert_close(losses['loss_parsing'], 0.005 * F.l1_loss(out['parsing'], parsing))
    torch.testing.assert_close(losses['loss_rec'], 0.5 * F.l1_loss(out['rec'], gt))
    expected = 0.001 * dictionary_decorrelation_loss(model.generator.atp.dictionary, 'abs')
    torch.testing.assert_close(losses['loss_dict'], expected)
    assert float(expected) > 0  # random entries correlate: the term is live, not identically zero
    assert set(model.loss(lq, gt, None)) == {'loss_l1', 'loss_rec', 'loss_dict'}  # no parsing: no L_pm
    with pytest.raises(ValueError, match='gt'):
        model(lq, mode='loss')


def test_train_step_and_val_step_on_a_collated_batch():
    torch.manual_seed(0)
    model = _model()
    dataset = AlignedFaceDataset(lfw_range=(0, 2), size=32, scale=4,
                                 parser=dict(type='FacexlibFaceParser', pretrained=False, input_size=32))
    batch = pseudo_collate([dataset[0], dataset[1]])
    data = model.data_preprocessor(batch, True)
    assert data['parsing'].shape == (2, 19, 32, 32)
    torch.testing.assert_close(data['inputs'], F.interpolate(torch.stack(batch['lq']), size=(32, 32),
                                                             mode='bicubic').clamp(0, 1))
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99)))
    before = model.generator.atp.dictionary.detach().clone()
    log_vars = model.train_step(batch, wrapper)
    assert {'loss', 'loss_l1', 'loss_parsing', 'loss_rec', 'loss_dict'} <= set(log_vars)
    assert not torch.equal(before, model.generator.atp.dictionary)  # the dictionary trains
    model.eval()
    outputs = model.val_step(batch)
    assert len(outputs) == 2 and outputs[0]['pred'].shape == (3, 32, 32) and outputs[0]['gt'].shape == (3, 32, 32)
    assert 0 <= outputs[0]['pred'].min() and outputs[0]['pred'].max() <= 1


@pytest.mark.parametrize('name', ['portraitsr/portraitsr_x8_celeba.py', 'portraitsr/portraitsr_x4_celeba.py',
                                  'debug/portraitsr_tiny.py'])
def test_configs_describe_the_paper_setup(name):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / name))
    assert cfg.model.type == 'PortraitSR'
    assert cfg.optim_wrapper.optimizer.type == 'Adam' and tuple(cfg.optim_wrapper.optimizer.betas) == (0.9, 0.99)
    assert (cfg.model.parsing_weight, cfg.model.reconstruction_weight, cfg.model.dictionary_weight) == \
        (0.005, 0.5, 0.001)
    assert cfg.model.perceptual_loss.loss_weight == 0.1
    if 'celeba' in name:
        generator = cfg.model.generator
        assert (generator.dict_size, generator.dict_channels, generator.dim * 8) == (512, 384, 384)
        assert cfg.optim_wrapper.optimizer.lr == 2e-4
        scale = 8 if 'x8' in name else 4
        assert cfg.train_dataloader.dataset.size == 128 and cfg.train_dataloader.dataset.scale == scale


def test_restorer_loads_a_training_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = _model()
    checkpoint = tmp_path / 'iter_1.pth'
    torch.save({'state_dict': {k: v for k, v in model.state_dict().items() if k.startswith('generator.')}},
               checkpoint)
    restorer = RESTORERS.build(dict(type='PortraitSRRestorer', weights=str(checkpoint), face_size=32, arch=TINY_NET))
    assert restorer.face_size == 32 and restorer.scale == 1 and not restorer.training
    faces = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(restorer(faces), model.restore(faces))
    with pytest.raises(ValueError, match='32x32'):
        restorer(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match='no released weights'):
        RESTORERS.build(dict(type='PortraitSRRestorer'))
    random = RESTORERS.build(dict(type='PortraitSRRestorer', pretrained=False, arch=TINY_NET))
    assert random.face_size == 128 and random(torch.rand(1, 3, 128, 128)).shape == (1, 3, 128, 128)


def test_blending_restorer_takes_portraitsr_as_its_face_expert():
    from skimage.data import astronaut
    torch.manual_seed(0)
    blender = MODELS.build(dict(
        type='BlendingRestorer', general_restorer=dict(type='BicubicRestorer', scale=2),
        face_restorer=dict(type='PortraitSRRestorer', pretrained=False, arch=TINY_NET),
        face_detector=dict(type='DlibFaceDetector', model='hog')))
    assert tuple(blender.face_aligner.crop_size) == (128, 128)  # the aligner follows PortraitSR's face size
    photo = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 255
    lq = F.interpolate(photo, size=(192, 192), mode='bicubic', antialias=True).clamp(0, 1)
    sr, masks, landmarks = blender.restore_with_masks(lq)
    assert sr.shape == (1, 3, 384, 384) and len(landmarks[0]) >= 1
    bicubic = blender.general_sr(lq)
    inside = masks[0][0] > 0.99
    assert inside.any() and not torch.allclose(sr[..., inside], bicubic[..., inside])  # the face was replaced
    torch.testing.assert_close(sr[..., masks[0][0] == 0], bicubic[..., masks[0][0] == 0])
