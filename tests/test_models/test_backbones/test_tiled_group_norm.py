"""Whole-image GroupNorm statistics for tiled networks (portraitisr/models/backbones/tiled_group_norm.py)."""

import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn

from portraitisr.models.backbones.latent_tiling import LatentTiling
from portraitisr.models.backbones.tiled_group_norm import GroupNormStatistics, owned_spans, run_tiles_in_step
from portraitisr.models.backbones.vae_stages import Stage
from portraitisr.utils.tiling import blend_tiles, tile_starts, tiled_forward
from tests.helpers.data_files import REPO_ROOT


SIZE, TILE, OVERLAP, MARGIN = 64, 40, 24, 6  # 2 x 2 tiles; margin 6 > the nets' receptive radius of 2


class ConvNormNet(nn.Module):
    """Two GroupNorms in a chain, as in a VAE block; ``tokens`` normalises the second as B x C x (h*w) tokens,
    as diffusers' attention does."""

    def __init__(self, tokens: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(4, 16), nn.GroupNorm(4, 16)
        self.tokens = tokens

    def first(self, x):
        return torch.nn.functional.silu(self.norm1(self.conv1(x)))

    def second(self, x):
        x = self.conv2(x)
        return self.norm2(x.flatten(2)).view_as(x) if self.tokens else self.norm2(x)

    def forward(self, x):
        return self.second(self.first(x))

    def stages(self):
        return [Stage(self.first, [self.norm1]), Stage(self.second, [self.norm2])]


def _image():
    torch.manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE)
    image[..., :, SIZE // 2:] += 1.5  # halves of different tone: per-tile statistics differ from the image's
    return image


def test_owned_spans_partition_the_axis():
    starts = tile_starts(100, 40, 16)
    spans = owned_spans(starts, 40, 100)
    absolute = [(s + a, s + b) for s, (a, b) in zip(starts, spans)]
    assert absolute[0][0] == 0 and absolute[-1][1] == 100
    assert all(prev[1] == nxt[0] for prev, nxt in zip(absolute, absolute[1:]))  # no gap, no double count
    assert all(0 <= a < b <= 40 for a, b in spans)


@pytest.mark.parametrize('tokens', [False, True])
def test_tiles_run_in_step_reproduce_the_untiled_network(tokens):
    net = ConvNormNet(tokens).eval()
    image = _image()
    starts = tile_starts(SIZE, TILE, OVERLAP)
    spans = owned_spans(starts, TILE, SIZE)
    crops = [image[..., y:y + TILE, x:x + TILE] for y in starts for x in starts]
    owned = [(y0, y1, x0, x1) for y0, y1 in spans for x0, x1 in spans]
    cpu = torch.device('cpu')
    with torch.no_grad():
        untiled = net(image)
        per_tile = tiled_forward(net, image, 1, TILE, OVERLAP, margin=MARGIN, progress=False)
        results = run_tiles_in_step(net.stages(), crops, owned, (TILE, TILE), cpu, cpu)
        in_step = blend_tiles(results, starts, starts, (TILE, TILE), (SIZE, SIZE), OVERLAP, MARGIN)
    assert (per_tile - untiled).abs().max() > 0.1  # each tile normalised with its own statistics
    # norm2 is recorded under norm1's pooled statistics: the whole chain is exact
    torch.testing.assert_close(in_step, untiled, atol=2e-5, rtol=0)
    assert all('forward' not in vars(norm) for norm in (net.norm1, net.norm2))  # the patch is undone


def test_vae_stage_chains_reproduce_the_modules():
    from mmengine.config import Config

    from portraitisr.models.backbones.vae_stages import decoder_stages, encoder_stages

    tiny = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'models' / 'tiny_sd.py'))
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny.tiny_vae_cfg).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        moments, z = x, torch.randn(1, 4, 8, 8)
        for stage in encoder_stages(vae):
            moments = stage.fn(moments)
        image = z
        for stage in decoder_stages(vae):
            image = stage.fn(image)
        assert torch.equal(moments, vae.quant_conv(vae.encoder(x)))  # diffusers' Encoder.forward, step by step
        assert torch.equal(image, vae.decoder(vae.post_quant_conv(z)))
    norms = [n for stage in decoder_stages(vae) for n in stage.norms]
    assert sorted(map(id, norms)) == sorted(id(m) for m in vae.decoder.modules() if isinstance(m, nn.GroupNorm))


def test_recording_one_norm_stops_the_tile_and_misuse_is_refused():
    net = ConvNormNet()
    stats = GroupNormStatistics(net)
    with pytest.raises(RuntimeError, match='2 of 2 GroupNorms have no pooled statistics'):
        with stats.applied():
            pass
    with stats.recording((0, 8, 0, 8), (8, 8), only=net.norm1):
        net(torch.rand(1, 3, 8, 8))
        raise AssertionError('the tile should stop right after norm1')
    stats.pool()
    assert list(stats.pooled) == [net.norm1]
    with pytest.raises(RuntimeError, match='1 of 2 GroupNorms have no pooled statistics'):
        with stats.applied():
            pass
    with stats.recording((0, 8, 0, 8), (8, 8), only=net.norm2):
        net(torch.rand(1, 3, 8, 8))
    stats.pool()
    with stats.applied(), pytest.raises(ValueError, match='batch 1'):
        net(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="group_norm must be one of"):
        LatentTiling(decode_group_norm='global')
