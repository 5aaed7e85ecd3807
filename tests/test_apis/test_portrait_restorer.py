"""PortraitRestorer on the tiny HeadsUp config: checkpoint loading, alpha, 16 bits, gray, scale, tiling, reference.

The model is built once per module (tiny random SD parts, seconds on a CPU); its trained weights are stood in for
by a trainable-only checkpoint in the layout TrainableCheckpointHook writes.
"""

import cv2
import numpy as np
import pytest
import torch

from portraitisr.apis.portrait_restorer import PortraitRestorer, _load_model_weights
from portraitisr.utils.image_io import ImageReadError, read_image, write_image
from tests.helpers.data_files import REPO_ROOT

TINY_HEADSUP = REPO_ROOT / 'configs' / 'debug' / 'headsup_tiny.py'

pytest_plugins = ('tests.helpers.file_server',)


@pytest.fixture(scope='module')
def restorer():
    return PortraitRestorer(TINY_HEADSUP, device='cpu')


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (float32 H x W x 3 in [0, 1])."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def test_trainable_checkpoint_is_loaded_and_mismatches_refused(restorer, tmp_path):
    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names

    model = restorer.model
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    # What TrainableCheckpointHook saves: trained parameters plus the buffers training updates.
    saved_names = trainable_names(model)
    changed = {n: t.clone() for n, t in model.state_dict().items() if n in saved_names}
    changed.update({n: t + 0.25 for n, t in trainable.items()})
    path = tmp_path / 'iter_1.pth'
    torch.save({'meta': {'trainable_only': True}, 'state_dict': changed}, path)
    try:
        _load_model_weights(model, path)
        params = dict(model.named_parameters())
        assert all(torch.equal(params[n], changed[n]) for n in trainable)
        torch.save({'state_dict': {**changed, 'backbone.not_a_layer': torch.zeros(1)}}, path)
        with pytest.raises(KeyError, match='1 unexpected'):
            _load_model_weights(model, path)
        one_missing = dict(changed)
        one_missing.pop(next(iter(trainable)))
        torch.save({'state_dict': one_missing}, path)
        with pytest.raises(KeyError, match='1 trained tensors missing'):
            _load_model_weights(model, path)
    finally:
        with torch.no_grad():  # leave the shared model as it was
            for name, param in model.named_parameters():
                if name in trainable:
                    param.copy_(trainable[name])


def test_rgba_16bit_keeps_alpha_depth_and_scales(restorer, tmp_path):
    rgb = _photo(20, 24)
    alpha = np.zeros((20, 24), np.float32)
    alpha[4:16, 6:18] = 1.0  # an opaque square on a transparent background
    source = write_image(tmp_path / 'in.png', rgb, alpha, bit_depth=16)
    out = restorer.restore_file(source, tmp_path / 'out' / 'in.png', compare=tmp_path / 'out' / 'cmp.png')
    raw = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (80, 96, 4)
    record = read_image(out)
    expected_alpha = cv2.resize(alpha, (96, 80), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    np.testing.assert_allclose(record.alpha, expected_alpha, atol=1 / 65535 + 1e-6)
    assert record.alpha[40, 48] == 1.0 and record.alpha[2, 2] == 0.0
    compare = cv2.imread(str(tmp_path / 'out' / 'cmp.png'), cv2.IMREAD_UNCHANGED)
    assert compare.shape == (80, 192, 3) and compare.dtype == np.uint8


def test_gray_input_gives_gray_output(restorer, tmp_path):
    gray = _photo(16, 20)[..., 0]
    source = write_image(tmp_path / 'gray.png', gray)
    out = restorer.restore_file(source, tmp_path / 'gray_out.png')
    raw = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (64, 80) and raw.dtype == np.uint8


def test_restore_tensor_is_deterministic_and_leaves_rng_alone(restorer):
    lq = torch.from_numpy(_photo(16, 24, seed=1)).permute(2, 0, 1)[None]
    torch.manual_seed(123)
    first = restorer.restore_tensor(lq)
    torch.manual_seed(456)  # a different global state must not change the restoration
    second = restorer.restore_tensor(lq)
    assert first.shape == (1, 3, 64, 96) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, second)


def test_restore_tensor_does_not_consume_global_rng(restorer):
    lq = torch.from_numpy(_photo(8, 8, seed=2)).permute(2, 0, 1)[None]
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    restorer.restore_tensor(lq)
    assert torch.equal(torch.rand(3), expected)


def test_other_scale(restorer, monkeypatch):
    monkeypatch.setattr(restorer, 'scale', 2)
    out = restorer.restore_array(_photo(12, 16))
    assert out.rgb.shape == (24, 32, 3) and out.alpha is None and out.bit_depth == 8


def test_tile_switches_on_the_models_tiling_or_fails_clearly(restorer, monkeypatch):
    import inspect
    with pytest.raises(ValueError, match='positive'):
        restorer._tiling_kwargs(0)
    if hasattr(restorer.model, 'set_tiling'):
        lq = torch.from_numpy(_photo(24, 24, seed=5)).permute(2, 0, 1)[None]
        untiled = restorer.restore_tensor(lq)  # automatic: a 96-pixel output fits untiled
        monkeypatch.setattr(restorer, 'tile', 64)
        try:
            assert restorer._tiling_kwargs(64) == {}
            tiling = restorer.model.tiling
            assert (tiling.unet_tile, tiling.encode_tile, tiling.decode_tile) == (8, 64, 8)
            tiled = restorer.restore_tensor(lq)  # 96 x 96 output in 64-pixel tiles
        finally:
            restorer.model.set_tiling(None)
        # Seam quality of latent tiling is tested with the tiling itself; here: the tiled path ran end to end.
        assert tiled.shape == untiled.shape and torch.isfinite(tiled).all() and not torch.equal(tiled, untiled)
    elif 'tile' in inspect.signature(restorer.model.restore).parameters:
        assert restorer._tiling_kwargs(64) == {'tile': 64}
    else:
        with pytest.raises(ValueError, match='no tiling option'):
            restorer._tiling_kwargs(64)

    class Untileable(torch.nn.Module):
        def restore(self, lq, metainfo=None):
            return lq

    monkeypatch.setattr(restorer, 'model', Untileable())
    with pytest.raises(ValueError, match='Untileable has no tiling option'):
        restorer._tiling_kwargs(64)


def test_tile_progress_reaches_the_total_and_matches_the_plan(restorer, tmp_path, monkeypatch):
    """A file restored in tiles reports (done, total) per tile; the last report is total == the planned count."""
    source = write_image(tmp_path / 'in.png', _photo(40, 36, seed=6))
    monkeypatch.setattr(restorer, 'tile', 64)
    reports, plans = [], []
    restorer.restore_file(source, tmp_path / 'out.png', progress=lambda done, total: reports.append((done, total)),
                          on_plan=plans.append)
    assert plans[0].tile == 64 and plans[0].estimate.total > 0
    assert [done for done, _ in reports] == list(range(1, len(reports) + 1))
    assert len({total for _, total in reports}) == 1 and reports[-1][0] == reports[-1][1] > 3


def test_array_inputs_are_validated_not_clipped(restorer):
    rgb = _photo(8, 8)
    for bad, error, match in [
        (rgb.astype(np.int64), TypeError, 'int64'),
        (rgb * 255, ValueError, 'outside'),  # 0..255 floats
        (np.where(np.arange(8)[:, None, None] == 3, np.nan, rgb), ValueError, 'NaN'),
        (np.full((8, 8, 3), np.inf, np.float32), ValueError, 'NaN or infinite'),
        (rgb[..., :2], ValueError, 'H x W x 3'),
        (np.zeros((0, 0, 3), np.float32), ValueError, 'empty'),
        (rgb[:1, :1], ValueError, 'at least 2x2'),  # x4 of one pixel cannot be padded to the VAE's 8
    ]:
        with pytest.raises(error, match=match):
            restorer.restore_array(bad)
    with pytest.raises(ValueError, match='alpha must be H x W'):
        restorer.restore_array(rgb, alpha=np.ones((7, 8), np.float32))
    with pytest.raises(ValueError, match='alpha'):
        restorer.restore_array(rgb, alpha=np.full((8, 8), 2.0, np.float32))
    with pytest.raises(ValueError, match='NaN'):
        restorer.restore_tensor(torch.full((1, 3, 8, 8), float('nan')))
    with pytest.raises(ValueError, match='outside'):
        restorer.restore_tensor(torch.full((1, 3, 8, 8), 2.0))
    for scale in (0, -2):
        with pytest.raises(ValueError, match='positive'):
            PortraitRestorer(TINY_HEADSUP, device='cpu', scale=scale)
    with pytest.raises(TypeError, match='integer'):
        PortraitRestorer(TINY_HEADSUP, device='cpu', scale=2.5)


def test_single_channel_rgba_and_tiny_arrays(restorer):
    gray = (_photo(6, 5)[..., :1] * 65535).astype(np.uint16)  # H x W x 1, 16 bits
    out = restorer.restore_array(gray)
    assert out.rgb.shape == (24, 20) and out.rgb.dtype == np.float32
    rgba = np.concatenate([_photo(6, 6), np.ones((6, 6, 1), np.float32)], axis=2)
    out = restorer.restore_array(rgba)
    assert out.rgb.shape == (24, 24, 3) and out.alpha.shape == (24, 24) and out.alpha.min() == 1.0
    assert restorer.restore_array(_photo(2, 2)).rgb.shape == (8, 8, 3)  # the smallest at x4


def test_reference_face_reaches_the_model(restorer, tmp_path, monkeypatch):
    """The reference file is read and handed to HeadsUp.restore as ``1 x 3 x S x S`` in [0, 1]; where to put it
    (face detection) is the model's job and is tested with the model."""
    seen = {}
    real_restore = restorer.model.restore

    def spy(lq, metainfo=None, ref=None, **conditions):
        seen.update(conditions, ref=ref, lq_shape=tuple(lq.shape))
        return real_restore(lq, metainfo, ref=ref, **conditions)

    monkeypatch.setattr(restorer.model, 'restore', spy)
    ref_rgb = _photo(64, 64, seed=3)
    ref = write_image(tmp_path / 'ref.png', ref_rgb)
    photo = write_image(tmp_path / 'photo.png', _photo(16, 16, seed=4))
    out = restorer.restore_file(photo, tmp_path / 'with_ref.png', ref=ref)
    assert seen['lq_shape'] == (1, 3, 64, 64)
    assert seen['ref'].shape == (1, 3, 64, 64)
    np.testing.assert_allclose(seen['ref'][0].permute(1, 2, 0).numpy(), ref_rgb, atol=1 / 255)
    assert cv2.imread(str(out)).shape == (64, 64, 3)


def test_reference_refused_by_models_without_one(restorer, monkeypatch):
    monkeypatch.setattr(restorer.model, 'restore', lambda lq, metainfo=None: lq)
    with pytest.raises(ValueError, match='takes no reference'):
        restorer.restore_tensor(torch.zeros(1, 3, 8, 8), ref=torch.zeros(1, 3, 8, 8))


def test_corrupt_file_raises_image_read_error(restorer, tmp_path):
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(ImageReadError):
        restorer.restore_file(bad, tmp_path / 'bad_out.jpg')
    assert not (tmp_path / 'bad_out.jpg').exists()


def test_from_zoo_passes_the_checkpoint_through_the_config(restorer, tmp_path, monkeypatch):
    """A zoo entry's checkpoint is found offline and handed to the config key the index names."""
    from safetensors.torch import save_file

    from portraitisr.apis import model_zoo
    from portraitisr.weights import sha256_of

    # The file sits in the torch hub cache (a place the resolver searches; another tool's cache counts only when
    # the index's sha256 matches); PORTRAITISR_HOME keeps the LPIPS weights the tiny config needs.
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    trained = {k: v.detach() + 0.1 for k, v in restorer.model._backbone.trainable_state_dict().items()}
    save_file({k: v.contiguous() for k, v in trained.items()},
              str(tmp_path / 'hub' / 'checkpoints' / 'tiny_lora.safetensors'))
    raw = {'format': 'portraitisr.model_zoo/1',
           'weights': {'tiny_lora': dict(description='d', filename='tiny_lora.safetensors',
                                         url='https://example.invalid/tiny_lora.safetensors',
                                         sha256=sha256_of(tmp_path / 'hub' / 'checkpoints' / 'tiny_lora.safetensors'),
                                         sha256_source='computed in the test', licence='MIT', source='tests')},
           'models': {'tiny': dict(description='d', config='configs/debug/headsup_tiny.py', licence='MIT',
                                   released=True, requires=[], checkpoint='tiny_lora',
                                   checkpoint_option='model.backbone.trained_weights')}}
    zoo = model_zoo.ModelZoo.from_dict(raw)
    monkeypatch.setattr(model_zoo, 'load_index', lambda path=None: zoo)
    built = PortraitRestorer.from_zoo('tiny', device='cpu')
    params = dict(built.model._backbone.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in trained.items())


def test_training_parts_are_left_out_and_their_checkpoint_tensors_ignored(tmp_path):
    """Restoring builds no losses, regulariser or discriminator; a full training checkpoint still loads, and the
    result equals that of the model built with them."""
    from mmengine.config import Config

    from portraitisr.apis.portrait_restorer import TRAINING_ONLY_PARTS
    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.registry import MODELS

    full = MODELS.build(Config.fromfile(str(TINY_HEADSUP)).model)
    names = trainable_names(full)
    state = {n: t + 0.05 if t.is_floating_point() else t for n, t in full.state_dict().items() if n in names}
    assert any(n.startswith(('discriminator.', 'regularizer.')) for n in state)  # what training saves
    path = tmp_path / 'iter_2.pth'
    torch.save({'meta': {'trainable_only': True}, 'state_dict': state}, path)

    lean = PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu')
    assert not [n for n, _ in lean.model.named_parameters() if n.split('.', 1)[0] in TRAINING_ONLY_PARTS]
    kept = PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu', keep_training_parts=True)
    assert any(n.startswith('discriminator.') for n, _ in kept.model.named_parameters())
    lq = torch.from_numpy(_photo(16, 16)).permute(2, 0, 1)[None]
    torch.testing.assert_close(lean.restore_tensor(lq), kept.restore_tensor(lq))


def test_zoo_configs_come_from_the_package_not_the_current_folder(tmp_path, monkeypatch):
    from portraitisr.apis.config_location import package_root, zoo_config_path

    planted = tmp_path / 'configs' / 'debug' / 'headsup_tiny.py'
    planted.parent.mkdir(parents=True)
    planted.write_text('raise SystemExit("a config of the current folder ran")\n')
    monkeypatch.chdir(tmp_path)
    found = zoo_config_path('configs/debug/headsup_tiny.py', 'tiny')
    assert found == package_root() / 'configs' / 'debug' / 'headsup_tiny.py' and found != planted.resolve()
    with pytest.raises(FileNotFoundError, match='--config'):
        zoo_config_path('configs/debug/no_such.py', 'tiny')
    with pytest.raises(FileNotFoundError, match='inside the package'):
        zoo_config_path('../outside.py', 'tiny')


def test_untrained_models_say_so_once(tmp_path):
    from portraitisr.apis.portrait_restorer import UntrainedModelWarning
    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.registry import MODELS
    from mmengine.config import Config

    with pytest.warns(UntrainedModelWarning, match='random weights'):
        PortraitRestorer(TINY_HEADSUP, device='cpu')
    model = MODELS.build(Config.fromfile(str(TINY_HEADSUP)).model)
    names = trainable_names(model)
    state = {k: v for k, v in model.state_dict().items() if k in names}
    path = tmp_path / 'iter_40.pth'
    torch.save({'meta': {'iter': 40, 'trainable_only': True}, 'state_dict': state}, path)
    with pytest.warns(UntrainedModelWarning, match='only 40 iteration') as caught:
        restorer = PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu')
    assert len([w for w in caught if issubclass(w.category, UntrainedModelWarning)]) == 1
    assert restorer.training_iterations == 40
    torch.save({'meta': {'iter': 5000}, 'state_dict': state}, path)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error', UntrainedModelWarning)
        assert PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu').training_iterations == 5000
    torch.save({'meta': {'trained_iters': 0, 'iter': 0}, 'state_dict': state}, path)  # saved before any step
    with pytest.warns(UntrainedModelWarning, match='only 0 iteration'):
        PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu')
    torch.save({'state_dict': state}, path)  # no meta: a release file says nothing about its training
    with warnings.catch_warnings():
        warnings.simplefilter('error', UntrainedModelWarning)
        assert PortraitRestorer(TINY_HEADSUP, checkpoint=path, device='cpu').training_iterations is None


def test_a_missing_tagger_restores_without_tags_after_one_warning(weight_env, no_internet, mmengine_records):
    """``portraitisr restore --model osediff_sd21`` prompts with DAPE tags when DAPE's weights are here; without
    them it restores with tagless prompts and says so once (training keeps the config's strict 'error')."""
    import logging

    from portraitisr.apis.portrait_restorer import with_optional_taggers

    dape = dict(type='DAPETagger', cache_size=16)  # the model-zoo files, absent from this empty PORTRAITISR_HOME
    restorer = PortraitRestorer(REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py', device='cpu',
                                cfg_options={'model.prompter': dict(type='TagPrompter', tagger=dape)})
    assert restorer.model.prompter.if_tagger_missing == 'warn'
    for _ in range(2):
        restored = restorer.restore_array(_photo(32, 24))
        assert restored.rgb.shape == (128, 96, 3)
    warnings = [r.getMessage() for r in mmengine_records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if 'DAPETagger that tags the inputs cannot be built' in w]) == 1
    # nested prompters (a blending baseline's OSEDiff) too; an explicit choice in the config is kept
    nested = with_optional_taggers(dict(type='BlendingRestorer', general_restorer=dict(model=dict(
        prompter=dict(type='TagPrompter', tagger=dape))), face_restorer=dict(model=dict(
            prompter=dict(type='TagPrompter', tagger=dape, if_tagger_missing='error')))))
    assert nested['general_restorer']['model']['prompter']['if_tagger_missing'] == 'warn'
    assert nested['face_restorer']['model']['prompter']['if_tagger_missing'] == 'error'
