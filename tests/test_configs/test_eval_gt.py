"""Evaluation scores against the dataset GT, whatever the degradation returns; training targets follow the recipe.

Issue 16: the `realesrgan` preset sharpens the GT (USM), and the data preprocessor used to hand that sharpened GT to
the metrics too, so HeadsUp was scored against another GT than the baselines of the same table.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model import BaseDataPreprocessor

from portraitisr.degradations.usm import USMSharp
from portraitisr.datasets.sample_images import load_sample_image
from portraitisr.face.alignment.templates import get_template
from portraitisr.registry import MODELS
from tests.helpers.tiny_config import CONFIG_ROOT, config_id, discover_configs

SIZE = 64


def _photo(name: str = 'astronaut', size: int = SIZE, top: int = 40, left: int = 180) -> torch.Tensor:
    image = torch.from_numpy(load_sample_image(f'sample://{name}')).permute(2, 0, 1)
    return image[:, top:top + size, left:left + size].contiguous()


#: The five landmarks of a face filling a SIZE crop (the FFHQ template): portrait and identity datasets give every
#: sample its face's landmarks, and IDFSR's preprocessor requires them (the face to mask and to warp onto).
FACE_LANDMARKS = torch.from_numpy(get_template('ffhq512', SIZE)[0]).float()


def _batch(*gts: torch.Tensor, index: int = 0) -> dict:
    return dict(gt=list(gts), metainfo=[dict(index=index + i, face_landmarks=FACE_LANDMARKS.clone())
                                        for i in range(len(gts))])


def _portraitisr_preprocessors():
    """Every data preprocessor registered by the library (found, not listed: new ones are covered too)."""
    import portraitisr.models  # noqa: F401  (registers the models)
    found = {}
    for name, cls in MODELS.module_dict.items():
        if (inspect.isclass(cls) and issubclass(cls, BaseDataPreprocessor)
                and cls.__module__.startswith('portraitisr.')):
            found[name] = cls
    return found


def test_the_library_registers_the_known_preprocessors():
    assert {'SRDataPreprocessor', 'PortraitDataPreprocessor', 'PortraitSRDataPreprocessor',
            'BlendingDataPreprocessor', 'IDFSRDataPreprocessor'} <= set(_portraitisr_preprocessors())


@pytest.mark.parametrize('name', sorted(_portraitisr_preprocessors()))
def test_every_preprocessor_keeps_the_dataset_gt_in_evaluation(name):
    """With Real-ESRGAN's sharpening degradation, evaluation batches still carry the dataset GT, bit for bit."""
    cls = _portraitisr_preprocessors()[name]
    assert 'degradation' in inspect.signature(cls.__init__).parameters, f'{name} cannot degrade: test it by hand'
    preprocessor = MODELS.build(dict(type=name, degradation='realesrgan'))
    gt = torch.stack([_photo('astronaut'), _photo('grace_hopper', top=100, left=200)])
    out = preprocessor(_batch(*gt), False)
    assert torch.equal(out['gt'], gt)
    assert out['inputs'].shape[0] == 2 and not torch.equal(out['inputs'], out['gt'])  # degraded, not the GT


@pytest.mark.parametrize('name', ['SRDataPreprocessor', 'PortraitDataPreprocessor', 'PortraitSRDataPreprocessor'])
def test_training_targets_follow_the_degradation(name):
    """Real-ESRGAN's recipe trains against the USM-sharpened GT (the LQ is made from it), OSEDiff's against the GT."""
    gt = _photo()[None]
    sharpening = MODELS.build(dict(type=name, degradation='realesrgan'))(_batch(*gt), True)
    expected = USMSharp()(gt)
    assert torch.equal(sharpening['gt'], expected)
    assert float((expected - gt).abs().max()) > 0.05  # the sharpening is visible, so the check above can fail
    plain = MODELS.build(dict(type=name, degradation='osediff'))(_batch(*gt), True)
    assert torch.equal(plain['gt'], gt)


#: Models whose configs may leave the data preprocessor out, and the one they then build: AuthFace's text-to-image
#: stage I trains on the photos themselves (TextConditionedDiffusion in models/algorithms/authface_base.py builds
#: mmengine's BaseDataPreprocessor, which only moves and stacks the batch).
DEFAULT_PREPROCESSORS = {'AuthFaceFineTune': dict(type='BaseDataPreprocessor')}


def _declared_preprocessor(cfg: Config) -> dict:
    model = cfg.model
    if model.get('data_preprocessor') is not None:
        return model.data_preprocessor
    if model.type in DEFAULT_PREPROCESSORS:
        return DEFAULT_PREPROCESSORS[model.type]
    pytest.fail(f'{model.type} declares no data_preprocessor: give it one, or add its default to '
                'DEFAULT_PREPROCESSORS')


@pytest.mark.parametrize('path', discover_configs(), ids=config_id)
def test_every_config_evaluates_against_the_dataset_gt(path):
    """The evaluation path of each config's own data preprocessor (its degradation preset and seeds as configured)
    returns the dataset GT unchanged (max difference 0), for batches made on the device and paired batches."""
    cfg = Config.fromfile(str(path))
    preprocessor = MODELS.build(_declared_preprocessor(cfg))
    gt = torch.stack([_photo('astronaut'), _photo('grace_hopper', top=100, left=200)])
    has_degradation = getattr(preprocessor, 'degradation', None) is not None or getattr(
        preprocessor, 'scale', None) is not None
    if has_degradation:
        out = preprocessor(_batch(*gt, index=5), False)
        assert float((_stacked(out['gt']) - gt).abs().max()) == 0.0
    scale = getattr(preprocessor, 'scale', 1) or 1
    paired = dict(_batch(*gt), lq=list(F.avg_pool2d(gt, scale) if scale > 1 else gt.flip(-1)))
    out = preprocessor(paired, False)
    assert float((_stacked(out['gt']) - gt).abs().max()) == 0.0


def _stacked(gt) -> torch.Tensor:
    """mmengine's BaseDataPreprocessor leaves a list of images a list; ours stack it."""
    return torch.stack(list(gt)) if isinstance(gt, (list, tuple)) else gt


def test_headsup_and_the_blending_baselines_restore_the_same_test_lq():
    """Table 2 compares methods on the same PortraitSR-4K-Te inputs: HeadsUp's evaluation input is the blending
    baselines' 256-pixel LQ (here 64 -> 16), upscaled bicubically; both are scored against the same GT."""
    headsup = MODELS.build(Config.fromfile(str(CONFIG_ROOT / 'headsup/headsup_sd21.py')).model.data_preprocessor)
    gt = torch.stack([_photo('astronaut'), _photo('grace_hopper', top=100, left=200)])
    ours = headsup(_batch(*gt, index=7), False)
    for name in ('realesrgan_codeformer.py', 'osediff_osediff_face.py'):
        blending = MODELS.build(Config.fromfile(str(CONFIG_ROOT / 'blending' / name)).model.data_preprocessor)
        theirs = blending(_batch(*gt, index=7), False)
        assert theirs['inputs'].shape == (2, 3, SIZE // 4, SIZE // 4)
        upscaled = F.interpolate(theirs['inputs'], size=(SIZE, SIZE), mode='bicubic', align_corners=False)
        assert torch.equal(ours['inputs'], upscaled.clamp(0, 1))
        assert torch.equal(ours['gt'], theirs['gt']) and torch.equal(ours['gt'], gt)
    # the test LQ depends on the image's index (its seed) and not on training draws
    headsup(_batch(*gt), True)
    assert torch.equal(headsup(_batch(*gt, index=7), False)['inputs'], ours['inputs'])
    assert not torch.equal(headsup(_batch(*gt, index=8), False)['inputs'], ours['inputs'])


def test_headsup_trains_on_the_osediff_recipe():
    """1024 crops -> 256 LQ resized back to the crop size (random mode, OSEDiff's resize_bak), unsharpened GT."""
    headsup = MODELS.build(Config.fromfile(str(CONFIG_ROOT / 'headsup/headsup_sd21.py')).model.data_preprocessor)
    assert headsup.degradation.scale == 4 and headsup.degradation.resize_back and not headsup.degradation.use_usm
    assert not headsup.eval_degradation.resize_back and not headsup.eval_degradation.use_usm
    assert headsup.eval_degradation.opt == headsup.degradation.opt  # one pipeline, Real-ESRGAN's values
    gt = _photo()[None]
    out = headsup(_batch(gt[0]), True)
    assert torch.equal(out['gt'], gt) and out['inputs'].shape == gt.shape
