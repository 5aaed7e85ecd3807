"""How far the tiled VAE is from the untiled one with per-tile and with pooled GroupNorm statistics.

The SD VAE normalises with whole-image GroupNorm statistics; a tile normalises with its own unless they are pooled
(``portraitisr/models/backbones/tiled_group_norm.py``). A randomly initialised VAE says little about this (its
untrained chain of GroupNorms amplifies any change of statistics), and SD 2.1's weights are not available offline,
so this trains the tiny VAE of ``configs/_base_/models/tiny_sd.py`` as an autoencoder on random 128 crops of three
skimage photos and measures on a held-out one (the astronaut) at ``--size``, with 2 x 2 tiles:

    python tools/experiments/tiled_group_norm.py --steps 2500

Rows: the modes 'tile' and 'exact' of ``LatentTiling.{encode,decode}_group_norm``, and the statistics of the
untiled image applied to the tiles (the best any pooling can do). Errors are mean |tiled - untiled| / mean
|untiled| of the posterior mean (encode) and of the decoded image (decode); times are one call on this CPU.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def train_tiny_vae(steps: int, seed: int):
    from diffusers import AutoencoderKL
    from mmengine.config import Config
    from skimage import data
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tiny = Config.fromfile(os.path.join(REPO, 'configs', '_base_', 'models', 'tiny_sd.py'))
    vae = AutoencoderKL(**tiny.tiny_vae_cfg)
    photos = [torch.from_numpy(f()).permute(2, 0, 1).float() / 255 for f in (data.coffee, data.chelsea, data.rocket)]
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in tqdm(range(steps), desc='tiny VAE'):
        crops = []
        for _ in range(4):
            photo = photos[rng.integers(len(photos))]
            y, x = rng.integers(photo.shape[1] - 128), rng.integers(photo.shape[2] - 128)
            crops.append(photo[:, y:y + 128, x:x + 128])
        batch = torch.stack(crops) * 2 - 1
        loss = F.mse_loss(vae.decode(vae.encode(batch).latent_dist.mode()).sample, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.eval()


def main() -> None:
    from skimage import data

    from portraitisr.models.backbones.latent_tiling import tiled_vae_decode, tiled_vae_encode
    from portraitisr.models.backbones.tiled_group_norm import GroupNormStatistics
    from portraitisr.utils.tiling import tiled_forward

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=2500, help='autoencoder training steps (batch 4)')
    parser.add_argument('--size', type=int, default=256, help='test image side; tiles are 3/4 of it')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    vae = train_tiny_vae(args.steps, args.seed)
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(image, size=(args.size, args.size), mode='bicubic', antialias=True).clamp(0, 1) * 2 - 1
    encode_tile, decode_tile = args.size * 3 // 4, args.size * 3 // 32  # pixels / latent pixels
    encode_overlap, decode_overlap = args.size // 4, args.size // 32

    def relative(a, b):
        return ((a - b).abs().mean() / b.abs().mean()).item()

    def exact_statistics(module, run, source):
        stats = GroupNormStatistics(module)
        height, width = source.shape[-2:]
        with stats.recording((0, height, 0, width), (height, width)):  # the whole image as one tile
            run(source)
        stats.pool()
        return stats

    def decoder(z):
        return vae.decoder(vae.post_quant_conv(z))

    def encoder(image):
        return vae.quant_conv(vae.encoder(image))

    rows = []
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        decoded = vae.decode(z).sample
        psnr = -10 * torch.log10(((decoded.clamp(-1, 1) - x) / 2).square().mean()).item()
        for mode in ('tile', 'exact'):  # ('auto' is one of them, chosen by device)
            start = time.perf_counter()
            encoded = tiled_vae_encode(vae, x, encode_tile, encode_overlap, group_norm=mode)[:, :4]
            encode_seconds = time.perf_counter() - start
            start = time.perf_counter()
            tiled = tiled_vae_decode(vae, z, decode_tile, decode_overlap, group_norm=mode)
            decode_seconds = time.perf_counter() - start
            rows.append((repr(mode), relative(encoded, z), relative(tiled, decoded), encode_seconds, decode_seconds))
        with exact_statistics(vae.encoder, encoder, x).applied():
            encoded = tiled_vae_encode(vae, x, encode_tile, encode_overlap, group_norm='tile')[:, :4]
        with exact_statistics(vae.decoder, decoder, z).applied():
            tiled = tiled_forward(decoder, z, 8, decode_tile, decode_overlap, progress=False)
        rows.append(('untiled statistics applied to the tiles (the limit)', relative(encoded, z),
                     relative(tiled, decoded), None, None))
    print(f'tiny VAE after {args.steps} steps: reconstruction PSNR {psnr:.2f} dB on the held-out astronaut '
          f'({args.size}^2)')
    print('| GroupNorm statistics | encode error | decode error | encode time (s) | decode time (s) |\n'
          '|---|---|---|---|---|')
    for name, encode_error, decode_error, encode_seconds, decode_seconds in rows:
        times = f'{encode_seconds:.3f} | {decode_seconds:.3f}' if encode_seconds is not None else 'n/a | n/a'
        print(f'| {name} | {encode_error:.4f} | {decode_error:.4f} | {times} |')

if __name__ == '__main__':
    main()
