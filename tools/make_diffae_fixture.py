"""Regenerate the DiffAE parity fixtures from a phizaz/diffae checkout (its own code, imported at run time).

``tests/test_models/test_backbones/test_diffae_parity.py`` checks our :class:`~portraitisr.models.backbones.DiffAEUNet`
against these files. Nothing of DiffAE is copied into this repository; this script imports the checkout's ``model`` and
``diffusion`` packages (they need only torch and numpy, so today's torch runs them) and writes:

1. ``tests/data/diffae_parity.pt.gz``: for a few small random ``BeatGANsAutoencConfig`` networks (one shaped like
   ``ffhq256_autoenc`` - ResBlock up/down, attention, a deeper encoder - and one with two heads, average-pool /
   nearest resampling and more blocks), the config, the state dict (float16 values), inputs, and the reference's
   outputs: ``model.forward(x, t, x_start=...)`` (noise prediction) and ``model.encoder(x_start)`` (``z_sem``);
   DDIM-20 sampling with DiffAE's own sampler (``SpacedDiffusionBeatGans``, T = 1000, linear betas, ``ddim20``
   spacing, ``clip_denoised=True``) from a fixed ``x_T``; and its training loss ``training_losses`` (eps, MSE) at
   fixed ``t`` and noise. Weights and inputs are rounded to float16 values first, so float16 storage is lossless
   while everything is computed in float32 (gzip: a few hundred KB).
2. ``tests/data/diffae_ffhq256_names.json.gz``: ``{name: shape}`` of every tensor of the full-size
   ``ffhq256_autoenc`` network (``templates.py:ffhq256_autoenc`` -> ``TrainConfig.make_model_conf``), built on the meta
   device - the names and shapes of its published checkpoint under ``model.`` / ``ema_model.``.

Run from the repository root with a checkout of https://github.com/phizaz/diffae::

    python tools/make_diffae_fixture.py --diffae /path/to/diffae
"""
import argparse
import gzip
import io
import json
import os
import sys
from dataclasses import asdict

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, 'tests', 'data', 'diffae_parity.pt.gz')
DEFAULT_NAMES = os.path.join(REPO_ROOT, 'tests', 'data', 'diffae_ffhq256_names.json.gz')
FORMAT = 'portraitisr.diffae_parity/1'
SEED = 20
T = 1000
SAMPLE_STEPS = 20

# Small BeatGANsAutoencConfig fields (everything else at the dataclass defaults). 'ffhq256_like' has the
# ffhq256_autoenc structure (resblock up/down, attention at one resolution plus the middle, an encoder one level
# deeper than the UNet, dropout 0.1 - inactive in eval); 'two_heads' covers multi-head legacy QKV order, plain
# average-pool / nearest resampling with convs, num_res_blocks 2 and an encoder as deep as the UNet.
CONFIGS = {
    'ffhq256_like': dict(image_size=16, in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2, 2),
                         num_res_blocks=1, attention_resolutions=(8, ), embed_channels=16, dropout=0.1,
                         enc_out_channels=16, enc_channel_mult=(1, 2, 2, 2), enc_num_res_block=1,
                         enc_pool='adaptivenonzero', resblock_updown=True, resnet_two_cond=True, num_heads=1,
                         num_head_channels=-1, num_heads_upsample=-1, resnet_use_zero_module=True),
    'two_heads': dict(image_size=8, in_channels=3, out_channels=3, model_channels=4, channel_mult=(1, 2),
                      num_res_blocks=2, attention_resolutions=(8, 4), embed_channels=16, dropout=0.0,
                      enc_out_channels=16, enc_channel_mult=None, enc_num_res_block=1, enc_attn_resolutions=(4, ),
                      enc_pool='adaptivenonzero', resblock_updown=False, resnet_two_cond=True, num_heads=2,
                      num_head_channels=-1, num_heads_upsample=-1, resnet_use_zero_module=True),
}
# templates.py: ffhq256_autoenc() <- ffhq128_autoenc_base() <- autoenc_base(), through TrainConfig.make_model_conf()
# (config.py); TrainConfig defaults: dropout 0.1, style_ch 512, net_resblock_updown True, net_enc_pool
# 'adaptivenonzero', net_num_res_blocks 2, net_enc_num_res_blocks 2, net_beatgans_resnet_use_zero_module True.
FFHQ256_AUTOENC = dict(attention_resolutions=(16, ), channel_mult=(1, 1, 2, 2, 4, 4), conv_resample=True, dims=2,
                       dropout=0.1, embed_channels=512, enc_out_channels=512, enc_pool='adaptivenonzero',
                       enc_num_res_block=2, enc_channel_mult=(1, 1, 2, 2, 4, 4, 4), enc_grad_checkpoint=False,
                       enc_attn_resolutions=None, image_size=256, in_channels=3, model_channels=128,
                       num_classes=None, num_head_channels=-1, num_heads_upsample=-1, num_heads=1,
                       num_res_blocks=2, num_input_res_blocks=None, out_channels=3, resblock_updown=True,
                       use_checkpoint=False, use_new_attention_order=False, resnet_two_cond=True,
                       resnet_use_zero_module=True, latent_net_conf=None, resnet_cond_channels=None)


def _half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().half().float()


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random (zero-initialised convs too, or the outputs would be trivially zero), O(1)
    activations: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1), norm scales ~ 1 + N(0, 0.1); float16 values."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                fan_in = param[0].numel()
                value = torch.randn(param.shape, generator=generator) / fan_in ** 0.5
            elif 'norm' in name or name.endswith(('in_layers.0.weight', 'out_layers.0.weight', 'out.0.weight')):
                value = 1 + 0.1 * torch.randn(param.shape, generator=generator)
            else:
                value = 0.1 * torch.randn(param.shape, generator=generator)
            param.copy_(_half(value))


def _jsonable(conf) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(conf).items()
            if k != 'latent_net_conf'}


def _sampler(base, space, conf_cls, steps: str):
    from choices import GenerativeType, LossType, ModelMeanType, ModelType, ModelVarType  # noqa: E402

    return conf_cls(gen_type=GenerativeType.ddim, model_type=ModelType.autoencoder,
                    betas=base.get_named_beta_schedule('linear', T), model_mean_type=ModelMeanType.eps,
                    model_var_type=ModelVarType.fixed_large, loss_type=LossType.mse, rescale_timesteps=False,
                    use_timesteps=space(num_timesteps=T, section_counts=steps), fp16=False).make_sampler()


def make_fixture(checkout: str) -> tuple:
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, 'model', 'unet_autoenc.py')):
        raise SystemExit(f'{checkout} is not a phizaz/diffae checkout (no model/unet_autoenc.py)')
    sys.path.insert(0, checkout)
    from diffusion import base  # noqa: E402  (phizaz/diffae, imported at run time, not copied)
    from diffusion.diffusion import SpacedDiffusionBeatGansConfig, space_timesteps  # noqa: E402
    from model.unet_autoenc import BeatGANsAutoencConfig  # noqa: E402

    generator = torch.Generator().manual_seed(SEED)
    cases = {}
    for name, fields in CONFIGS.items():
        conf = BeatGANsAutoencConfig(**fields)
        torch.manual_seed(SEED)
        model = conf.make_model().eval()
        _randomise(model, generator)
        size, batch = conf.image_size, 2
        x = _half(torch.randn(batch, 3, size, size, generator=generator))
        x_start = _half(torch.rand(batch, 3, size, size, generator=generator) * 2 - 1)
        t = torch.tensor([7, 731])
        x_t = _half(torch.randn(batch, 3, size, size, generator=generator))
        noise = _half(torch.randn(batch, 3, size, size, generator=generator))
        with torch.no_grad():
            pred = model.forward(x, t, x_start=x_start).pred
            cond = model.encoder(x_start)
            sampled = _sampler(base, space_timesteps, SpacedDiffusionBeatGansConfig, f'ddim{SAMPLE_STEPS}').sample(
                model, noise=x_t, cond=cond)
            train = _sampler(base, space_timesteps, SpacedDiffusionBeatGansConfig, f'ddim{T}')
            loss = train.training_losses(model, x_start, t, noise=noise)['loss']
        cases[name] = dict(config=json.dumps(_jsonable(conf)),
                           state_dict={k: v.half() for k, v in model.state_dict().items()},
                           x=x.half(), t=t, x_start=x_start.half(), pred=pred, cond=cond,
                           x_T=x_t.half(), ddim_sample=sampled, noise=noise.half(), train_loss=loss)
    with torch.device('meta'):
        full = BeatGANsAutoencConfig(**FFHQ256_AUTOENC).make_model()
    names = {k: list(v.shape) for k, v in full.state_dict().items()}
    fixture = dict(format=FORMAT, note=f'Made by tools/make_diffae_fixture.py from phizaz/diffae ({checkout}) with '
                   f'torch {torch.__version__}, numpy {np.__version__}', sample_steps=SAMPLE_STEPS, cases=cases)
    return fixture, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--diffae', required=True, help='path of a phizaz/diffae checkout')
    parser.add_argument('--out', default=DEFAULT_OUT, help='parity fixture (.pt.gz)')
    parser.add_argument('--names-out', default=DEFAULT_NAMES, help='full-size name -> shape list (.json.gz)')
    args = parser.parse_args()
    fixture, names = make_fixture(args.diffae)
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    with open(args.out, 'wb') as f:
        f.write(gzip.compress(buffer.getvalue(), mtime=0))
    with open(args.names_out, 'wb') as f:
        f.write(gzip.compress(json.dumps(names, sort_keys=True, separators=(',', ':')).encode(), mtime=0))
    print(f'wrote {args.out} ({os.path.getsize(args.out)} bytes) and {args.names_out} '
          f'({os.path.getsize(args.names_out)} bytes, {len(names)} tensors)')


if __name__ == '__main__':
    main()
