"""Whole-image GroupNorm statistics for tiled networks (portraitisr/models/backbones/tiled_group_norm.py)."""
import pytest
import torch
from torch import nn

from portraitisr.models.backbones.tiled_group_norm import GroupNormStatistics, owned_spans, record_tiles
from portraitisr.models.restorers.tiling import tile_starts, tiled_forward

SIZE, TILE, OVERLAP, MARGIN = 64, 40, 24, 6  # 2 x 2 tiles; margin 6 > the nets' receptive radius of 2


class ConvNormNet(nn.Module):
    """Two GroupNorms in a chain, as in a VAE block; ``tokens`` normalises the second as B x C x (h*w) tokens,
    as diffusers' attention does."""

    def __init__(self, tokens: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(4, 16), nn.GroupNorm(4, 16)
        self.tokens = tokens

    def forward(self, x):
        x = torch.nn.functional.silu(self.norm1(self.conv1(x)))
        x = self.conv2(x)
        if self.tokens:
            return self.norm2(x.flatten(2)).view_as(x)
        return self.norm2(x)


def _image():
    torch.manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE)
    image[..., :, SIZE // 2:] += 1.5  # halves of different tone: per-tile statistics differ from the image's
    return image


def _tiled(net, image, passes):
    stats = GroupNormStatistics(net)
    if passes == 0:
        return tiled_forward(net, image, 1, TILE, OVERLAP, margin=MARGIN, progress=False)
    starts = tile_starts(SIZE, TILE, OVERLAP)
    record_tiles(stats, net, image, TILE, TILE, starts, starts, passes)
    with stats.applied():
        return tiled_forward(net, image, 1, TILE, OVERLAP, margin=MARGIN, progress=False)


def test_owned_spans_partition_the_axis():
    starts = tile_starts(100, 40, 16)
    spans = owned_spans(starts, 40, 100)
    absolute = [(s + a, s + b) for s, (a, b) in zip(starts, spans)]
    assert absolute[0][0] == 0 and absolute[-1][1] == 100
    assert all(prev[1] == nxt[0] for prev, nxt in zip(absolute, absolute[1:]))  # no gap, no double count
    assert all(0 <= a < b <= 40 for a, b in spans)


@pytest.mark.parametrize('tokens', [False, True])
def test_pooled_statistics_reproduce_the_untiled_network(tokens):
    net = ConvNormNet(tokens).eval()
    image = _image()
    with torch.no_grad():
        untiled = net(image)
        per_tile = _tiled(net, image, 0)
        one_pass = _tiled(net, image, 1)
        two_passes = _tiled(net, image, 2)
    assert (per_tile - untiled).abs().max() > 0.1  # each tile normalised with its own statistics
    # pass 1 pools norm1 exactly but records norm2 under per-tile norm1; pass 2 pools both exactly
    assert (two_passes - untiled).abs().max() < (one_pass - untiled).abs().max()
    torch.testing.assert_close(two_passes, untiled, atol=2e-5, rtol=0)
    assert all('forward' not in vars(norm) for norm in (net.norm1, net.norm2))  # the patch is undone


def test_misuse_is_refused():
    net = ConvNormNet()
    stats = GroupNormStatistics(net)
    with pytest.raises(RuntimeError, match='record the tiles'):
        with stats.applied():
            pass
    with stats.recording((0, 8, 0, 8), (8, 8)):
        net.conv1(torch.rand(1, 3, 8, 8))  # norm1 and norm2 never run
    with pytest.raises(RuntimeError, match='2 GroupNorm layers saw no recorded tile'):
        stats.pool()
    record_tiles(stats, net, torch.rand(1, 3, 8, 8), 8, 8, [0], [0], 1)
    with stats.applied(), pytest.raises(ValueError, match='batch 1'):
        net(torch.rand(2, 3, 8, 8))
