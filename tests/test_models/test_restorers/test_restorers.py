"""RRDBNet / Real-ESRGAN, CodeFormer and tiled inference: official checkpoint layouts, strict loading, tiling."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from portraitisr.weights import WeightsNotFoundError
from portraitisr.models.restorers import (CodeFormer, CodeFormerRestorer, RealESRGANRestorer, RRDBNet,
                                          tiled_forward)
from portraitisr.models.restorers.codeformer import AttnBlock
from portraitisr.registry import RESTORERS

TINY_RRDB = dict(num_block=1, num_feat=16, num_grow_ch=8)
TINY_CODEFORMER = dict(img_size=32, nf=32, ch_mult=(1, 2, 2), res_blocks=1, attn_resolutions=(8,), codebook_size=32,
                       emb_dim=16, dim_embd=32, n_head=4, n_layers=2, connect_list=('16', '32'))


@pytest.fixture(autouse=True)
def _offline_home(tmp_path, monkeypatch):
    """No cache of this machine and no download can satisfy a weight lookup."""
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('PORTRAITISR_ALLOW_DOWNLOAD', '0')


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere (biases, norms) so a wrong key mapping changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


# ----------------------------------------------------------------------------------------------------------------
# RRDBNet layout (BasicSR basicsr/archs/rrdbnet_arch.py)
# ----------------------------------------------------------------------------------------------------------------
def _official_rrdb_keys(num_block: int) -> set:
    names = ['conv_first', 'conv_body', 'conv_up1', 'conv_up2', 'conv_hr', 'conv_last']
    names += [f'body.{i}.rdb{j}.conv{k}' for i in range(num_block) for j in (1, 2, 3) for k in range(1, 6)]
    return {f'{n}.{t}' for n in names for t in ('weight', 'bias')}


def test_rrdbnet_official_layout_and_parameter_count():
    net = RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)
    state = net.state_dict()
    assert set(state) == _official_rrdb_keys(23)
    assert state['conv_first.weight'].shape == (64, 3, 3, 3)
    assert state['body.22.rdb3.conv1.weight'].shape == (32, 64, 3, 3)
    assert state['body.0.rdb1.conv4.weight'].shape == (32, 64 + 3 * 32, 3, 3)
    assert state['body.0.rdb2.conv5.weight'].shape == (64, 64 + 4 * 32, 3, 3)
    assert state['conv_last.weight'].shape == (3, 64, 3, 3)
    # RealESRGAN_x4plus: 16,697,987 parameters (the x2 model adds 9 * 64 * 9 input weights).
    assert sum(p.numel() for p in net.parameters()) == 16_697_987
    assert RRDBNet(scale=2, num_block=1).conv_first.weight.shape == (64, 12, 3, 3)
    assert RRDBNet(scale=1, num_block=1).conv_first.weight.shape == (64, 48, 3, 3)


def test_pixel_unshuffle_matches_basicsr_channel_order():
    x = torch.randn(2, 3, 8, 12)
    for s in (2, 4):
        b, c, hh, hw = x.shape  # BasicSR arch_util.pixel_unshuffle, written out
        ref = x.view(b, c, hh // s, s, hw // s, s).permute(0, 1, 3, 5, 2, 4).reshape(b, c * s * s, hh // s, hw // s)
        assert torch.equal(F.pixel_unshuffle(x, s), ref)


@pytest.mark.parametrize('scale,size', [(4, (13, 17)), (2, (15, 22)), (1, (9, 14))])
def test_realesrgan_output_shapes(scale, size):
    restorer = RealESRGANRestorer(scale=scale, pretrained=False, **TINY_RRDB)
    out = restorer(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, scale * size[0], scale * size[1])
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize('nest', ['params_ema', 'params'])
def test_realesrgan_checkpoint_round_trip(tmp_path, nest):
    source = _randomise(RealESRGANRestorer(scale=4, pretrained=False, **TINY_RRDB))
    path = tmp_path / 'rrdb.pth'
    torch.save({nest: source.net.state_dict()}, path)
    loaded = RealESRGANRestorer(scale=4, weights=str(path), **TINY_RRDB)
    assert loaded.weights_path == str(path)
    x = torch.rand(1, 3, 12, 10)
    assert torch.equal(loaded.net(x), source.net(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_params_ema_preferred_over_params(tmp_path):
    ema = _randomise(RRDBNet(**TINY_RRDB), seed=1)
    raw = _randomise(RRDBNet(**TINY_RRDB), seed=2)
    path = tmp_path / 'both.pth'
    torch.save({'params': raw.state_dict(), 'params_ema': ema.state_dict()}, path)
    loaded = RealESRGANRestorer(weights={'path': str(path)}, **TINY_RRDB)
    assert torch.equal(loaded.net.conv_last.bias, ema.conv_last.bias)


def test_checkpoint_with_missing_or_extra_key_is_refused(tmp_path):
    state = RRDBNet(**TINY_RRDB).state_dict()
    missing = dict(state)
    del missing['conv_hr.bias']
    torch.save({'params_ema': missing}, tmp_path / 'missing.pth')
    with pytest.raises(RuntimeError, match=r'missing\.pth.*(?s:.*)conv_hr\.bias'):
        RealESRGANRestorer(weights=str(tmp_path / 'missing.pth'), **TINY_RRDB)
    extra = dict(state, **{'conv_extra.weight': torch.zeros(1)})
    torch.save({'params_ema': extra}, tmp_path / 'extra.pth')
    with pytest.raises(RuntimeError, match=r'(?s)Unexpected.*conv_extra\.weight'):
        RealESRGANRestorer(weights=str(tmp_path / 'extra.pth'), **TINY_RRDB)
    wrong = dict(state, **{'conv_last.weight': torch.zeros(3, 8, 3, 3)})
    torch.save({'params_ema': wrong}, tmp_path / 'shape.pth')
    with pytest.raises(RuntimeError, match='conv_last.weight'):
        RealESRGANRestorer(weights=str(tmp_path / 'shape.pth'), **TINY_RRDB)


def test_missing_official_weights_name_the_file_and_url():
    with pytest.raises(WeightsNotFoundError) as info:
        RealESRGANRestorer(scale=4)
    assert 'RealESRGAN_x4plus.pth' in str(info.value)
    assert info.value.url == 'https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth'
    with pytest.raises(WeightsNotFoundError, match='RealESRGAN_x2plus.pth'):
        RealESRGANRestorer(scale=2)
    with pytest.raises(WeightsNotFoundError, match='my_rrdb.pth'):
        RealESRGANRestorer(weights='my_rrdb.pth', **TINY_RRDB)


def test_weights_require_pretrained_and_scale_1_has_no_default():
    with pytest.raises(ValueError, match='pretrained=False'):
        RealESRGANRestorer(weights='x.pth', pretrained=False, **TINY_RRDB)
    with pytest.raises(ValueError, match='no official'):
        RealESRGANRestorer(scale=1)


def test_registry_builds_restorers():
    sr = RESTORERS.build(dict(type='RealESRGANRestorer', scale=2, pretrained=False, **TINY_RRDB))
    face = RESTORERS.build(dict(type='CodeFormerRestorer', pretrained=False, arch=TINY_CODEFORMER))
    assert isinstance(sr, RealESRGANRestorer) and sr.scale == 2
    assert isinstance(face, CodeFormerRestorer) and face.face_size == 32 and face.scale == 1


# ----------------------------------------------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------------------------------------------
class _SmallSR(nn.Module):
    """conv3x3 -> conv3x3 -> nearest x2 -> conv3x3: receptive radius 2.5 input pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 3, 3, 1, 1)

    def forward(self, x):
        x = torch.tanh(self.b(torch.relu(self.a(x))))
        return self.c(F.interpolate(x, scale_factor=2, mode='nearest'))


def test_tiled_equals_untiled_for_small_receptive_field():
    torch.manual_seed(0)
    net = _SmallSR().eval()
    image = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        full = net(image)
        # overlap 12 -> margin 3 >= receptive radius 2.5
        tiled = tiled_forward(net, image, scale=2, tile=16, overlap=12, progress=False)
    assert tiled.shape == full.shape == (2, 3, 74, 106)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)


def test_tiled_forward_blends_and_handles_small_images():
    image = torch.rand(1, 3, 20, 30)

    def upsample(x):
        return F.interpolate(x, scale_factor=3, mode='nearest')

    # a per-pixel fn is exact under any tiling, including overlap 0 and a tile larger than the image
    for tile, overlap in [(8, 0), (8, 4), (11, 5), (64, 16)]:
        out = tiled_forward(upsample, image, 3, tile, overlap, progress=False)
        torch.testing.assert_close(out, upsample(image), atol=1e-6, rtol=0)
    # a fn that adds a constant per tile gives smooth ramps in the overlap, i.e. values between the tiles'
    calls = []

    def offset(x):
        calls.append(x.shape[-2:])
        return x + len(calls)

    out = tiled_forward(offset, image, 1, 12, 8, progress=False)
    diff = out - image
    assert diff.min() >= 1 - 1e-6 and diff.max() <= len(calls) + 1e-6
    with pytest.raises(ValueError, match='overlap'):
        tiled_forward(upsample, image, 3, 8, 8)
    with pytest.raises(ValueError, match='align'):
        tiled_forward(upsample, image[..., :19, :], 3, 8, 4, align=2)


def test_realesrgan_tiled_equals_untiled_beyond_receptive_field():
    torch.manual_seed(0)
    untiled = _randomise(RealESRGANRestorer(scale=4, pretrained=False, **TINY_RRDB))
    # RRDBNet with one block: receptive radius < 19 input pixels; overlap 80 -> margin 20
    tiled = RealESRGANRestorer(scale=4, pretrained=False, tile=96, tile_overlap=80, progress=False, **TINY_RRDB)
    tiled.load_state_dict(untiled.state_dict())
    image = torch.rand(1, 3, 112, 120)
    full = untiled.restore(image)
    out = tiled.restore(image)
    assert out.shape == full.shape == (1, 3, 448, 480)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)


def test_realesrgan_x2_tiled_shape_with_odd_size():
    restorer = RealESRGANRestorer(scale=2, pretrained=False, tile=16, tile_overlap=8, progress=False, **TINY_RRDB)
    assert restorer(torch.rand(1, 3, 25, 41)).shape == (1, 3, 50, 82)


# ----------------------------------------------------------------------------------------------------------------
# CodeFormer (sczhou/CodeFormer basicsr/archs/codeformer_arch.py + vqgan_arch.py)
# ----------------------------------------------------------------------------------------------------------------
def test_codeformer_official_layout_and_parameter_count():
    net = CodeFormer()
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = {
        'encoder.blocks.0.weight': (64, 3, 3, 3),
        'encoder.blocks.1.norm1.weight': (64,),
        'encoder.blocks.4.conv_out.weight': (128, 64, 1, 1),  # level 1: 64 -> 128
        'encoder.blocks.3.conv.weight': (64, 64, 3, 3),  # Downsample
        'encoder.blocks.17.q.weight': (512, 512, 1, 1),  # attention at 16x16
        'encoder.blocks.21.proj_out.weight': (512, 512, 1, 1),
        'encoder.blocks.23.weight': (512,),  # GroupNorm
        'encoder.blocks.24.weight': (256, 512, 3, 3),
        'quantize.embedding.weight': (1024, 256),
        'generator.blocks.0.weight': (512, 256, 3, 3),
        'generator.blocks.8.conv.weight': (512, 512, 3, 3),  # Upsample
        'generator.blocks.9.conv_out.weight': (256, 512, 1, 1),
        'generator.blocks.21.conv1.weight': (64, 128, 3, 3),
        'generator.blocks.24.weight': (3, 64, 3, 3),
        'position_emb': (256, 512),
        'feat_emb.weight': (512, 256),
        'ft_layers.0.self_attn.in_proj_weight': (1536, 512),
        'ft_layers.8.self_attn.out_proj.weight': (512, 512),
        'ft_layers.8.linear1.weight': (1024, 512),
        'ft_layers.8.linear2.weight': (512, 1024),
        'ft_layers.8.norm2.bias': (512,),
        'idx_pred_layer.0.weight': (512,),
        'idx_pred_layer.1.weight': (1024, 512),
        'fuse_convs_dict.32.encode_enc.conv1.weight': (256, 512, 3, 3),
        'fuse_convs_dict.32.scale.0.weight': (256, 256, 3, 3),
        'fuse_convs_dict.256.shift.2.weight': (128, 128, 3, 3),
        'fuse_convs_dict.256.encode_enc.conv_out.weight': (128, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert state.get(key) == shape, key
    assert 'idx_pred_layer.1.bias' not in state and 'fuse_convs_dict.16.scale.0.weight' not in state
    assert max(int(k.split('.')[2]) for k in state if k.startswith('encoder.blocks.')) == 24
    assert max(int(k.split('.')[2]) for k in state if k.startswith('generator.blocks.')) == 24
    # encoder/generator fusion points of codeformer_arch.py (fuse_encoder_block / fuse_generator_block)
    assert net.enc_taps == {5: '256', 8: '128', 11: '64', 14: '32'}
    assert net.gen_taps == {9: '32', 12: '64', 15: '128', 18: '256'}
    assert len(state) == 515
    assert sum(p.numel() for p in net.parameters()) == 94_112_707


def test_attn_block_matches_vqgan_formula():
    torch.manual_seed(0)
    block = _randomise(AttnBlock(32)).eval()
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():  # vqgan_arch.py AttnBlock.forward, written out with bmm
        h = block.norm(x)
        q, k, v = block.q(h).flatten(2), block.k(h).flatten(2), block.v(h).flatten(2)
        attn = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * 32 ** -0.5, dim=2)
        ref = x + block.proj_out(torch.bmm(v, attn.permute(0, 2, 1)).view_as(x))
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


def test_codeformer_round_trip_and_fidelity(tmp_path):
    torch.manual_seed(0)
    source = CodeFormerRestorer(pretrained=False, arch=TINY_CODEFORMER)
    _randomise(source.net)
    path = tmp_path / 'codeformer_tiny.pth'
    torch.save({'params_ema': source.net.state_dict()}, path)
    loaded = CodeFormerRestorer(weights=str(path), arch=TINY_CODEFORMER)
    face = torch.rand(2, 3, 32, 32)
    out = loaded(face)
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, source(face))

    net = loaded.net
    x = face * 2 - 1
    with torch.no_grad():
        quality, logits, lq = net(x, w=0.0)
        fidelity = net(x, w=1.0)[0]
        adain = net(x, w=0.0, adain=True)[0]
    assert logits.shape == (2, 64, 32) and lq.shape == (2, 16, 8, 8)
    assert not torch.allclose(quality, fidelity) and not torch.allclose(quality, adain)
    # w = 0 skips the fusion blocks entirely
    with torch.no_grad():
        for p in net.fuse_convs_dict.parameters():
            p.zero_()
        assert torch.equal(net(x, w=0.0)[0], quality)
    with pytest.raises(ValueError, match='32x32'):
        loaded(torch.rand(1, 3, 16, 16))


def test_codeformer_checkpoint_with_extra_key_is_refused(tmp_path):
    state = CodeFormer(**TINY_CODEFORMER).state_dict()
    state['fuse_convs_dict.64.scale.0.weight'] = torch.zeros(1)
    torch.save({'params_ema': state}, tmp_path / 'cf.pth')
    with pytest.raises(RuntimeError, match=r'(?s)Unexpected.*fuse_convs_dict\.64\.scale\.0\.weight'):
        CodeFormerRestorer(weights=str(tmp_path / 'cf.pth'), arch=TINY_CODEFORMER)


def test_codeformer_missing_weights_name_the_file():
    with pytest.raises(WeightsNotFoundError) as info:
        CodeFormerRestorer(arch=TINY_CODEFORMER)
    assert 'codeformer.pth' in str(info.value)
    assert info.value.url == 'https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth'
    with pytest.raises(ValueError, match='fidelity_weight'):
        CodeFormerRestorer(fidelity_weight=1.5, pretrained=False, arch=TINY_CODEFORMER)
