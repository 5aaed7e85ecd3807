"""Tiled VAE encode / UNet / VAE decode: close to the untiled result, no seam on the tile borders, HeadsUp conditions.

The tiny random SD used here is a hard case for tiling: its GroupNorm statistics and self-attention are global and
untrained, and the one-step update amplifies any change of the UNet's ``eps`` by ``beta / alpha = 14.6``
(sqrt(1 - abar_999) / sqrt(abar_999) on SD 2.1's schedule; cswry/OSEDiff osediff.py steps at t = 999).
Tolerances, on [0, 1] images of the astronaut at 256 x 256 with tiles of 3/4 of the image: mean |tiled - untiled|
<= 0.08 (measured 0.031 with all three stages tiled, 0.047 with per-tile VAE GroupNorm statistics); seam score on
the tile borders at most 0.5 8-bit levels/pixel above the untiled image's
on the same lines (a hard 8-level step along two such lines of the photo adds 0.66, see
``test_tile_seam_score_sees_a_tile_seam``; measured: tiled 0.21, untiled 0.34).
"""
import pytest
import torch
import torch.nn.functional as F

from portraitisr.models.backbones.latent_tiling import (LatentTiling, tile_border_mask, tile_borders,
                                                         tile_seam_score, tiled_unet, tiled_vae_decode,
                                                         tiled_vae_encode)
from tests.test_models.test_backbones.test_fast_inference import _build, _restore

SIZE = 256
# latent 32: UNet and decoder tiles of 24 (overlap 16), encoder tiles of 192 px (overlap 128): 2 x 2 tiles each
# (VAE GroupNorm statistics of the whole image, as on a GPU: 'auto' would pick per-tile ones on this CPU)
TILING = LatentTiling(unet_tile=24, unet_overlap=16, encode_tile=192, encode_overlap=128, decode_tile=24,
                      decode_overlap=16, encode_group_norm='exact', decode_group_norm='exact')
MEAN_TOL = 0.08
SEAM_TOL = 0.5


@pytest.fixture(scope='module')
def photo():
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(SIZE, SIZE), mode='bicubic', antialias=True).clamp(0, 1)


@pytest.fixture(scope='module')
def osediff():
    return _build()


def test_tile_border_mask_level_set_is_the_lines():
    mask = tile_border_mask((8, 10), rows=[3], cols=[4, 7])[0, 0]
    assert mask.shape == (8, 10)
    row_flip = (mask[1:] != mask[:-1]).any(1).nonzero()[:, 0].tolist()
    col_flip = (mask[:, 1:] != mask[:, :-1]).any(0).nonzero()[:, 0].tolist()
    assert row_flip == [2] and col_flip == [3, 6]  # the level set lies between pixel c - 1 and c
    assert tile_borders(32, 24, 16, align=2, scale=8) == [64, 192]
    assert tile_borders(16, 24, 16) == []


def test_tile_seam_score_sees_a_tile_seam(photo):
    lines = [96, 160]
    seamed = photo.clone()
    seamed[..., :, 96:160] = (seamed[..., :, 96:160] + 8 / 255).clamp(0, 1)  # an 8-level step on two lines
    clean = tile_seam_score(photo, [], lines).item()
    # the tolerance of the restore tests is below what this faint seam adds (measured 0.66)
    assert tile_seam_score(seamed, [], lines).item() > clean + SEAM_TOL


def test_each_tiled_stage_is_close_and_closer_than_diffusers_tiling(osediff, photo):
    """Per stage, relative mean error vs untiled, and, at the same tile and overlap, below diffusers'
    ``enable_tiling``: the reason ``latent_tiling`` has its own tiler. Measured on this random tiny model (tile-local
    GroupNorm and attention differ a lot): encode 0.048 with GroupNorm statistics of the whole image ('exact'),
    0.20 per tile ('tile'), diffusers 0.32; decode 0.17 / 0.32, diffusers 0.38; UNet (per tile) 0.16."""
    vae, unet = osediff.backbone.vae, osediff.backbone.unet
    x = photo * 2 - 1
    relative = lambda a, b: ((a - b).abs().mean() / b.abs().mean()).item()  # noqa: E731
    with torch.no_grad():
        moments = vae.encode(x).latent_dist.parameters
        z = moments[:, :4]
        image = vae.decode(z).sample
        encoded = {mode: tiled_vae_encode(vae, x, 192, 64, group_norm=mode) for mode in ('exact', 'tile', 'auto')}
        decoded = {mode: tiled_vae_decode(vae, z, 24, 8, group_norm=mode) for mode in ('exact', 'tile', 'auto')}
        embeds = torch.zeros(1, 77, osediff.backbone.cross_attention_dim)
        t = torch.tensor([999])
        eps = unet(z, t, encoder_hidden_states=embeds).sample
        tiled_eps = tiled_unet(unet, z, t, embeds, 24, 16)
        whole = tiled_unet(unet, z, t, embeds, 32, 16)  # one tile: exactly the untiled call
        vae.enable_tiling()
        # same tile and overlap (2 x 2 tiles); diffusers' last tile is a 128-pixel sliver
        vae.tile_latent_min_size, vae.tile_sample_min_size, vae.tile_overlap_factor = 24, 192, 8 / 24
        try:
            library_moments = vae.encode(x).latent_dist.parameters
            library_image = vae.decode(z).sample
        finally:
            vae.disable_tiling()
    assert encoded['exact'].shape == moments.shape and decoded['exact'].shape == image.shape
    # 'auto' takes per-tile statistics on the CPU (the waiting tiles would take the RAM tiling saves)
    assert torch.equal(encoded.pop('auto'), encoded['tile']) and torch.equal(decoded.pop('auto'), decoded['tile'])
    torch.testing.assert_close(whole, eps, atol=0, rtol=0)
    encode_errors = {mode: relative(m[:, :4], z) for mode, m in encoded.items()}
    decode_errors = {mode: relative(d, image) for mode, d in decoded.items()}
    assert all(0 < e < 0.4 for e in [*encode_errors.values(), *decode_errors.values(), relative(tiled_eps, eps)])
    # whole-image GroupNorm statistics bring both VAE stages closer than per-tile ones, and per-tile ones already
    # beat diffusers' tiling
    assert encode_errors['exact'] < 0.5 * encode_errors['tile'] < 0.5 * relative(library_moments[:, :4], z)
    assert decode_errors['exact'] < 0.7 * decode_errors['tile'] < 0.7 * relative(library_image, image)


def test_tiled_restore_matches_untiled_without_seams(osediff, photo):
    untiled = _restore(osediff, photo)
    osediff.set_tiling(TILING)
    try:
        tiled = _restore(osediff, photo)
    finally:
        osediff.set_tiling(None)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().mean() <= MEAN_TOL
    lines = tile_borders(SIZE // 8, TILING.unet_tile, TILING.unet_overlap, align=2, scale=8)
    assert lines  # the image really was tiled
    seam_tiled = tile_seam_score(tiled, lines, lines).item()
    seam_untiled = tile_seam_score(untiled, lines, lines).item()
    assert seam_tiled <= seam_untiled + SEAM_TOL, (seam_tiled, seam_untiled)


def test_headsup_with_reference_works_tiled(photo):
    from portraitisr.face.alignment.templates import get_template

    model = _build('headsup_tiny.py')
    with torch.no_grad():  # as if trained: the reference and mask channels reach the UNet
        model.backbone.unet.conv_in.base_layer.weight[:, 4:].normal_(0, 0.1)
    points, _ = get_template('ffhq512', SIZE)
    landmarks = torch.tensor(points, dtype=torch.float32)[None] * 0.5 + SIZE / 4
    ref = torch.rand(1, 3, 64, 64)
    model.enable_fast_inference('float32')
    try:
        untiled = _restore(model, photo, ref=ref, face_landmarks=landmarks)
        without_ref = _restore(model, photo)
        model.set_tiling(TILING)
        tiled = _restore(model, photo, ref=ref, face_landmarks=landmarks)
        tiled_without_ref = _restore(model, photo)
    finally:
        model.set_tiling(None)
        model.disable_fast_inference()
    assert torch.isfinite(tiled).all()
    # the reference changes the tiled result where the face is, as it changes the untiled one
    assert (tiled - tiled_without_ref).abs().mean() > 0.2 * (untiled - without_ref).abs().mean()
    assert (tiled - untiled).abs().mean() <= MEAN_TOL


def test_osediff_restorer_fast_and_latent_tiled():
    import portraitisr.models.restorers.osediff_restorer  # noqa: F401  (registers OSEDiffRestorer)
    from portraitisr.registry import RESTORERS

    model_cfg = dict(osediff_model_cfg(), color_fix=None)
    plain = RESTORERS.build(dict(type='OSEDiffRestorer', model=model_cfg, pretrained=False, scale=2))
    fast = RESTORERS.build(dict(type='OSEDiffRestorer', model=model_cfg, pretrained=False, scale=2,
                                inference_dtype='float32',
                                latent_tiling=dict(unet_tile=8, unet_overlap=4, decode_tile=8, decode_overlap=4)))
    fast.model.load_state_dict(plain.model.state_dict())
    lq = torch.rand(1, 3, 48, 48)
    expected, result = plain(lq), fast(lq)
    assert fast.model.inference_backbone is not fast.model.backbone  # merged copy built on first use
    assert result.shape == expected.shape == (1, 3, 96, 96)
    assert 0 < (result - expected).abs().mean() <= MEAN_TOL  # tiled (latent 12 > tile 8), close


def osediff_model_cfg() -> dict:
    from mmengine.config import Config

    from tests.helpers.data_files import REPO_ROOT

    cfg = dict(Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py')).model)
    return dict(cfg, regularizer=None, lpips_loss=None)
