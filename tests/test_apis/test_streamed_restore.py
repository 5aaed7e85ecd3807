"""The streamed one-step restore: lazy upscaling, rows as they are decoded, the colour fix from running sums.

It must compute what ``model.restore`` computes on the whole upscaled image (same tiling, same seed): measured
max |diff| 3e-7 with float32 storage (summation order only), 1.8e-5 with uint16 storage (its 1/65535 steps, times
the colour fix's gain). Tolerances: 1e-5 and 4e-5.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from portraitisr.apis.streamed_restore import RowSink, UpscaledImage, adain_affine, channel_sums, restore_streamed
from portraitisr.models.algorithms.color_fix import adain_color_fix
from portraitisr.models.backbones.latent_tiling import LatentTiling, stage_tile_counts
from portraitisr.utils.tiling import blend_rows, blend_tiles, report_tiles, tile_starts
from tests.test_models.test_backbones.test_fast_inference import _build

TILING = LatentTiling(unet_tile=8, unet_overlap=4, encode_tile=64, encode_overlap=16, decode_tile=8,
                      decode_overlap=4)


@pytest.fixture(scope='module')
def osediff():
    model = _build()
    model.enable_fast_inference('float32')
    return model


@pytest.fixture(scope='module')
def lq():
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(37, 45), mode='bicubic', antialias=True).clamp(0, 1)  # 148 x 180 at x4


def _reference(model, lq, scale, tiling):
    model.set_tiling(tiling)
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            size = (lq.shape[-2] * scale, lq.shape[-1] * scale)
            up = F.interpolate(lq, size=size, mode='bicubic', align_corners=False).clamp(0, 1)
            return model.restore(up)[0].permute(1, 2, 0).numpy()
    finally:
        model.set_tiling(None)


@pytest.mark.parametrize('tiled', [False, True])
@pytest.mark.parametrize('store, tol', [(np.float32, 1e-5), (np.uint16, 4e-5)])
def test_streamed_equals_model_restore(osediff, lq, tiled, store, tol):
    tiling = TILING if tiled else None
    expected = _reference(osediff, lq, 4, tiling)
    sink = RowSink(148, 180, store)
    counted = []
    with report_tiles(counted.append):
        scale, shift = restore_streamed(osediff, lq, 4, tiling, sink, seed=0)
    result = np.clip(sink.float_rows(0, 148) * scale + shift, 0, 1)
    assert np.abs(result - expected).max() <= tol
    # every stage reports its tiles: as many as stage_tile_counts says (1 per untiled stage)
    expected_tiles = sum(stage_tile_counts(tiling, (152, 184), 8, 2)) if tiled else 3
    assert sum(counted) == expected_tiles and (expected_tiles > 3) == tiled


@pytest.mark.parametrize('scale', [3, 4])
def test_upscaled_crops_equal_the_whole_upscale(scale):
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, 13, 17, generator=generator)
    height, width = 13 * scale, 17 * scale
    padded = (height + 5, width + 3)
    whole = F.interpolate(lq, size=(height, width), mode='bicubic', align_corners=False).clamp(0, 1)
    whole = F.pad(whole, (0, 3, 0, 5), mode='reflect')
    source = UpscaledImage(lq, scale, padded)
    assert source.shape == (1, 3) + padded
    for y0, y1, x0, x1 in [(0, padded[0], 0, padded[1]), (7, 20, 30, padded[1]), (height - 2, padded[0], 0, 9),
                           (1, 2, 1, 2)]:
        torch.testing.assert_close(source.crop(y0, y1, x0, x1), whole[..., y0:y1, x0:x1], atol=2e-6, rtol=0)
    total, squares, count = source.channel_moments()
    plain = whole[..., :height, :width].double()
    torch.testing.assert_close(total, plain.sum(dim=(0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(squares, plain.square().sum(dim=(0, 2, 3)), rtol=1e-6, atol=0)
    assert count == height * width
    with pytest.raises(ValueError, match='reflect-pad'):
        UpscaledImage(torch.rand(1, 3, 1, 1), 2, (8, 8))  # a 2-pixel side cannot mirror 6 rows


def test_adain_from_sums_equals_the_colour_fix():
    generator = torch.Generator().manual_seed(1)
    sr, ref = torch.rand(1, 3, 40, 50, generator=generator), torch.rand(1, 3, 40, 50, generator=generator) * 0.5
    sink = RowSink(40, 50)
    sink.put(0, sr[..., :17, :])
    sink.put(17, sr[..., 17:, :])
    scale, shift = adain_affine(sink, (*channel_sums(ref), 40 * 50))
    result = np.clip(sink.float_rows(0, 40) * scale + shift, 0, 1)
    expected = adain_color_fix(sr, ref)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-6)
    with pytest.raises(ValueError, match='in order'):
        sink.put(3, sr[..., :2, :])


def test_blend_rows_hand_out_each_row_once_in_order():
    generator = torch.Generator().manual_seed(2)
    height, width, tile, overlap, scale = 23, 30, 10, 4, 2
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tiles = [torch.rand(1, 2, scale * tile, scale * tile, generator=generator) for _ in ys for _ in xs]
    whole = blend_tiles(iter(tiles), ys, xs, (tile, tile), (height, width), overlap, 1, scale)
    tops, pieces = [], []
    for top, rows in blend_rows(iter(tiles), ys, xs, (tile, tile), (height, width), overlap, 1, scale):
        tops.append(top)
        pieces.append(rows)
    assert tops == [scale * y for y in ys]
    torch.testing.assert_close(torch.cat(pieces, dim=-2), whole, atol=0, rtol=0)
    # a constant image stays constant: the separable weight sums are the blend's normaliser
    ones = [torch.ones(1, 1, scale * tile, scale * tile) for _ in ys for _ in xs]
    flat = blend_tiles(iter(ones), ys, xs, (tile, tile), (height, width), overlap, 1, scale)
    torch.testing.assert_close(flat, torch.ones_like(flat), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='tile results for'):
        list(blend_rows(iter(tiles[:-1]), ys, xs, (tile, tile), (height, width), overlap, 1, scale))
