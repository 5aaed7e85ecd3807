"""DiffAE parity: our DiffAEUNet / DiffAEEncoder reproduce phizaz/diffae's own code, its DDIM-20 sampler and its
training loss; the full-size FFHQ-256 network has the published checkpoint's names and shapes; DiffAE's Lightning
checkpoints load safely and strictly, also into the IDFSR-shaped network.

``tests/data/diffae_parity.pt.gz`` and ``tests/data/diffae_ffhq256_names.json.gz`` were made by
``tools/make_diffae_fixture.py`` from a phizaz/diffae checkout (its ``model`` and ``diffusion`` code run with today's
torch). Measured on CPU, float32: UNet noise prediction and encoder output identical (0 difference; 1e-5 asserted);
DDIM-20 through diffusers' DDIMScheduler vs DiffAE's ``ddim_sample_loop``: 1.1e-5 after 20 steps (float32 rounding
of two algebraically equal update formulas, compounded through the x_0 clipping; 3e-5 asserted); training loss
(eps-MSE per sample): 2.4e-7 (1e-6 asserted).
"""
import gzip
import io
import json
import sys
import types

import numpy as np
import pytest
import torch

from portraitisr.weights import CheckpointLoadError
from portraitisr.models.algorithms.idfsr import diffae_schedulers
from portraitisr.models.backbones import FFHQ256_AUTOENC, DiffAEUNet, load_diffae_checkpoint, load_lightning_checkpoint
from portraitisr.models.backbones.diffae_blocks import AttentionBlock
from portraitisr.models.backbones.diffae_checkpoint import (build_from_beatgans_config, convert_diffae_state_dict,
                                                            describe_parameters, qkv_to_cross_attention)
from portraitisr.models.conditioning import IdentityCrossAttention
from tests.helpers.data_files import TEST_FILES

DATA = TEST_FILES


@pytest.fixture(scope='module')
def fixture() -> dict:
    data = torch.load(io.BytesIO(gzip.decompress((DATA / 'diffae_parity.pt.gz').read_bytes())), weights_only=True)
    assert data['format'] == 'portraitisr.diffae_parity/1'
    return data


def _reference_model(case: dict) -> DiffAEUNet:
    model = build_from_beatgans_config(json.loads(case['config'])).eval()
    model.load_state_dict({k: v.float() for k, v in case['state_dict'].items()}, strict=True)
    return model


@pytest.mark.parametrize('name', ['ffhq256_like', 'two_heads'])
def test_unet_and_encoder_match_diffae(fixture, name):
    case = fixture['cases'][name]
    model = _reference_model(case)
    with torch.no_grad():
        pred = model(case['x'].float(), case['t'], x_start=case['x_start'].float())
        cond = model.encode(case['x_start'].float())
    assert (pred - case['pred']).abs().max() <= 1e-5
    assert (cond - case['cond']).abs().max() <= 1e-5
    assert case['pred'].abs().max() > 0.5  # the reference output is not trivially zero (all weights random)


@pytest.mark.parametrize('name', ['ffhq256_like', 'two_heads'])
def test_ddim20_and_training_loss_match_diffae(fixture, name):
    case = fixture['cases'][name]
    model = _reference_model(case)
    train, sampler = diffae_schedulers(1000, 1e-4, 0.02, fixture['sample_steps'])
    # DiffAE's 'ddim20' spacing of T = 1000: {0, 50, ..., 950}
    assert sampler.timesteps.tolist() == list(range(950, -1, -50))
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(train.betas.double().numpy(), betas, rtol=1e-6, atol=0)  # float32 values of DiffAE's
    x = case['x_T'].float()
    with torch.no_grad():
        for t in sampler.timesteps:
            eps = model(x, t.repeat(x.shape[0]), cond=case['cond'])
            x = sampler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        assert (x - case['ddim_sample']).abs().max() < 3e-5
        x0, noise, t = case['x_start'].float(), case['noise'].float(), case['t']
        eps = model(train.add_noise(x0, noise, t), t, x_start=x0)
        loss = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    assert (loss - case['train_loss']).abs().max() < 1e-6


def test_full_size_names_and_shapes_match_the_published_network():
    names = json.loads(gzip.decompress((DATA / 'diffae_ffhq256_names.json.gz').read_bytes()))
    with torch.device('meta'):
        ours = DiffAEUNet(**FFHQ256_AUTOENC)
    assert describe_parameters(ours) == names
    assert len(names) == 706
    # IDFSR's network: the same names, except conv_in (6 input channels) and q / kv in place of each qkv
    with torch.device('meta'):
        idfsr = DiffAEUNet(**FFHQ256_AUTOENC, in_channels=6, attention='identity', id_channels=512)
    state = {k: torch.empty(v, device='meta') for k, v in names.items()}
    converted, report = convert_diffae_state_dict(state, idfsr)
    assert set(converted) == set(idfsr.state_dict())
    assert report.widened == ['input_blocks.0.0.weight'] and report.initialised == [] and report.dropped == []
    # 16 x 16: two encoder-side and three decoder-side blocks; 8 x 8: the middle block
    assert len(report.attention_converted) == 6
    params = sum(v.numel() for v in idfsr.parameters())
    assert params - sum(int(np.prod(v)) for v in names.values()) == 128 * 3 * 3 * 3  # only the 3 new input channels


def test_cross_attention_from_qkv_reproduces_self_attention():
    """With DiffAE's q/k/v rows in place, cross-attention whose tokens are the normalised features themselves *is*
    the self-attention block (two heads: the legacy per-head order is mapped right)."""
    torch.manual_seed(0)
    block = AttentionBlock(16, num_heads=2).double()
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.3)
    cross = IdentityCrossAttention(16, id_channels=16, num_heads=2).double()
    state, fresh = qkv_to_cross_attention('', block.state_dict(), cross)
    assert fresh == []
    cross.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    tokens = block.norm(x.reshape(2, 16, -1)).transpose(1, 2)  # B x T x C
    assert torch.allclose(cross(x, tokens), block(x), atol=1e-12)
    narrow = IdentityCrossAttention(16, id_channels=8, num_heads=2)
    assert qkv_to_cross_attention('', block.state_dict(), narrow)[1] == ['kv.weight', 'kv.bias']


def _fake_lightning(monkeypatch) -> tuple:
    """Make ``pytorch_lightning`` importable just long enough to pickle a Lightning-style checkpoint."""
    package = types.ModuleType('pytorch_lightning')
    callbacks = types.ModuleType('pytorch_lightning.callbacks.model_checkpoint')
    parsing = types.ModuleType('pytorch_lightning.utilities.parsing')

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = callbacks.__name__, 'ModelCheckpoint'
    AttributeDict.__module__, AttributeDict.__qualname__ = parsing.__name__, 'AttributeDict'
    callbacks.ModelCheckpoint, parsing.AttributeDict = ModelCheckpoint, AttributeDict
    for module in (package, callbacks, parsing):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return ModelCheckpoint, AttributeDict


def test_lightning_checkpoint_loads_safely_into_the_idfsr_network(fixture, tmp_path, monkeypatch):
    case = fixture['cases']['ffhq256_like']
    reference = _reference_model(case)
    checkpoint_cls, attribute_dict = _fake_lightning(monkeypatch)
    net = {k: v.float() for k, v in case['state_dict'].items()}
    state = {'x_T': torch.randn(2, 3, 16, 16)}
    state.update({f'model.{k}': v + 1 for k, v in net.items()})  # the raw net differs from its EMA copy
    state.update({f'ema_model.{k}': v for k, v in net.items()})
    state['ema_model.latent_net.layers.0.weight'] = torch.zeros(2)
    path = tmp_path / 'last.ckpt'
    torch.save({'epoch': 3, 'global_step': 100, 'pytorch-lightning_version': '1.4.5', 'state_dict': state,
                'callbacks': {checkpoint_cls: {'best_model_score': None}},
                'hyper_parameters': attribute_dict(net_ch=8, lr=1e-4)}, path)
    for name in list(sys.modules):
        if name.startswith('pytorch_lightning'):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception, match='Unsupported global|weights_only'):
        torch.load(path, weights_only=True)  # what a plain safe load says
    loaded = load_lightning_checkpoint(path)
    assert loaded['global_step'] == 100 and loaded['hyper_parameters'] == {'net_ch': 8, 'lr': 1e-4}

    conf = json.loads(case['config'])
    idfsr = build_from_beatgans_config(conf, in_channels=6, attention='identity', id_channels=16).eval()
    report = load_diffae_checkpoint(idfsr, str(path))
    # attention at 8 x 8: one encoder-side block, the middle block, two decoder-side blocks
    assert report.widened == ['input_blocks.0.0.weight'] and len(report.attention_converted) == 4
    assert report.initialised == []
    # the new input channels start at zero: the first conv ignores the extra (masked-LR) channels; the style encoder
    # is DiffAE's unchanged
    x6 = torch.cat([case['x'].float(), torch.randn_like(case['x'].float())], 1)
    with torch.no_grad():
        assert torch.allclose(idfsr.input_blocks[0](x6), reference.input_blocks[0](case['x'].float()), atol=1e-6)
        assert torch.allclose(idfsr.encode(case['x_start'].float()), case['cond'], atol=1e-5)
    plain = build_from_beatgans_config(conf).eval()
    load_diffae_checkpoint(plain, str(path), use_ema=False)  # model.* is the EMA + 1
    assert torch.allclose(plain.out[2].bias, reference.out[2].bias + 1)


def test_unsafe_or_foreign_checkpoints_are_refused(fixture, tmp_path, monkeypatch):
    module = types.ModuleType('evil_module')

    class Payload:
        def __reduce__(self):
            return (print, ('this must never run', ))

    Payload.__module__ = 'evil_module'
    module.Payload = Payload
    monkeypatch.setitem(sys.modules, 'evil_module', module)
    path = tmp_path / 'evil.ckpt'
    torch.save({'state_dict': {}, 'thing': Payload()}, path)
    with pytest.raises(CheckpointLoadError, match='builtins.print|pickled Python objects'):
        load_lightning_checkpoint(path)
    case = fixture['cases']['two_heads']
    other = build_from_beatgans_config(json.loads(fixture['cases']['ffhq256_like']['config']))
    with pytest.raises((KeyError, ValueError), match='counterpart|DiffAE has|not in the DiffAE checkpoint'):
        load_diffae_checkpoint(other, {k: v.float() for k, v in case['state_dict'].items()})
