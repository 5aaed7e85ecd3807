"""Regenerate ``tests/data/pisasr_parity.pt.gz``: csslc/PiSA-SR's own code run on a tiny random SD, for the parity test.

``tests/test_models/test_backbones/test_pisasr_parity.py`` loads this file into our
:class:`~portraitisr.models.backbones.PiSASD` and checks that our one-step maths reproduces the reference outputs.
Everything in the fixture is produced by PiSA-SR's code (imported from a checkout at run time; nothing of it is copied
into this repository):

1. a tiny SD-shaped UNet and VAE built from the checkout's own model classes (``src/models/unet_2d_condition.py``,
   ``src/models/autoencoder_kl.py``), a tiny CLIP text model and a 3-token tokenizer, written as a diffusers
   Stable Diffusion folder;
2. the release file: ``PiSASR`` (its training class) injects its six adapters (``initialize_unet``), every LoRA
   tensor gets a random value and ``PiSASR.save_model`` writes ``pisa_sr.pkl``, the official key layout;
3. ``PiSASR_eval`` (its test class, ``--mixed_precision fp32``, adjustable setting) loads that file (merging the
   pixel LoRA, precomputing the semantic deltas, merging both) and restores a 48 x 32 input in [-1, 1] with the
   empty prompt (``test_pisasr.py``), once with ``default=True`` (one UNet pass) and once per ``(lambda_pix,
   lambda_sem)`` pair (two passes), each time right after ``torch.manual_seed(SEED)`` so the VAE posterior sample
   is reproducible. Its raw outputs (before the test script's colour fix) go into the fixture.

Weights and inputs are rounded to float16 values before anything runs, so the fixture stores them as float16
without changing what was computed (both sides compute in float32); the ``torch.save`` file is gzipped (about
300 KB; ``torch.load(weights_only=True)`` reads it after ``gzip.decompress``).

PiSA-SR's code needs its pinned packages (``requirements.txt``: diffusers 0.25, peft 0.9; its UNet/VAE copies
import diffusers' pre-0.26 module paths). Run this script with such a Python, from the repository root::

    python -m venv --system-site-packages /tmp/pisa_env
    /tmp/pisa_env/bin/pip install --no-deps diffusers==0.25.0 peft==0.9.0 transformers==4.40.2 \\
        tokenizers==0.19.1 huggingface_hub==0.25.2 einops
    /tmp/pisa_env/bin/python tools/make_pisasr_fixture.py --pisasr ../PiSA-SR

(transformers 4.28 of the pins needs tokenizers 0.13, which has no wheels for Python >= 3.11; 4.40.2 has the same
CLIP text model; huggingface_hub 0.25.2 because diffusers 0.25 imports ``cached_download``.) The reference code
places everything on ``'cuda'``; without a GPU those placements go to the CPU (``CudaCallsOnCpu`` of
``tools/benchmark.py``) and ``torch.cuda.synchronize`` is skipped.
"""
import argparse
import contextlib
import gzip
import io
import json
import os
import sys
import tempfile
from types import SimpleNamespace

import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
DEFAULT_OUT = os.path.join(REPO_ROOT, 'tests', 'data', 'pisasr_parity.pt.gz')
FORMAT = 'portraitisr.pisasr_parity/1'

# Tiny SD-shaped parts: the SD 2.1 block types (cross-attention down / plain down, plain up / cross-attention up,
# linear projections), VAE downscale 8, small enough for a fixture of a few hundred KB.
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[8, 16],
    down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'], up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'],
    attention_head_dim=[2, 4], cross_attention_dim=8, use_linear_projection=True, norm_num_groups=4)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=['DownEncoderBlock2D'] * 4,
    up_block_types=['UpDecoderBlock2D'] * 4, block_out_channels=[4, 8, 8, 8], layers_per_block=1,
    latent_channels=4, norm_num_groups=4, scaling_factor=0.18215)
# SD 2.1's noise schedule (PiSA-SR's inference does not use it; its folder must have one).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                        prediction_type='epsilon', clip_sample=False, steps_offset=1)
# A CLIP text model as wide as the UNet's cross-attention; only its output for the empty prompt is kept.
TEXT_CONFIG = dict(vocab_size=3, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=77, projection_dim=8, bos_token_id=1, eos_token_id=2, pad_token_id=0)
RANK = 4  # --lora_rank_unet_pix / --lora_rank_unet_sem
LQ_SIZE = (48, 32)  # H x W: not square, so a transposed axis shows
SEED = 1234
LORA_STD = 0.1
# (default, lambda_pix, lambda_sem): the one-pass default setting, then the adjustable setting at several pairs
CASES = [(True, 1.0, 1.0), (False, 1.0, 1.0), (False, 0.5, 1.3), (False, 1.2, 0.0)]


def _half_values(tensor: torch.Tensor) -> torch.Tensor:
    """The float32 tensor of the nearest float16 values (so float16 storage is lossless)."""
    return tensor.detach().half().float()


def _round_parameters(*modules) -> None:
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param.copy_(_half_values(param))


@contextlib.contextmanager
def _without_cuda_sync():
    """``PiSASR_eval.forward`` calls ``torch.cuda.synchronize()`` for its timing; a no-op without a GPU."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch.cuda.synchronize = original


def _write_tokenizer(folder: str) -> None:
    """A CLIP tokenizer with only its three special tokens: enough for the empty prompt (``[BOS, EOS, pad...]``)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump({'!': 0, '<|startoftext|>': 1, '<|endoftext|>': 2}, f)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n')
    config = dict(tokenizer_class='CLIPTokenizer', model_max_length=77, do_lower_case=True, errors='replace',
                  bos_token='<|startoftext|>', eos_token='<|endoftext|>', unk_token='<|endoftext|>', pad_token='!')
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f)


def _write_sd_folder(folder: str, unet_cls, vae_cls) -> dict:
    """A diffusers SD folder with tiny random parts; returns the UNet and VAE base state dicts (float16)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    unet, vae = unet_cls(**UNET_CONFIG), vae_cls(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    _round_parameters(unet, vae)
    unet.save_pretrained(os.path.join(folder, 'unet'))
    vae.save_pretrained(os.path.join(folder, 'vae'))
    text_encoder.save_pretrained(os.path.join(folder, 'text_encoder'))
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(os.path.join(folder, 'scheduler'))
    _write_tokenizer(os.path.join(folder, 'tokenizer'))
    return dict(unet=unet.state_dict(), vae=vae.state_dict())


def make_fixture(checkout: str, work: str) -> dict:
    """Run PiSA-SR's code from ``checkout`` (with ``work`` as scratch space) and return the fixture dict."""
    import diffusers

    major, minor = (int(v) for v in diffusers.__version__.split('.')[:2])
    if (major, minor) >= (0, 26):
        raise SystemExit(f'diffusers {diffusers.__version__}: PiSA-SR\'s UNet/VAE copies need diffusers < 0.26 '
                         '(its pin is 0.25.0); run this script with a Python that has PiSA-SR\'s pins (see --help)')
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, 'pisasr.py')):
        raise SystemExit(f'{checkout} is not a PiSA-SR checkout (no pisasr.py)')
    sys.path.insert(0, TOOLS_DIR)
    from benchmark import CudaCallsOnCpu  # the CPU redirection of reference code that hard-codes 'cuda'

    sys.path.insert(0, checkout)
    previous_cwd = os.getcwd()
    os.chdir(checkout)  # pisasr.py appends os.getcwd() to sys.path to import its ``src`` package
    try:
        from pisasr import PiSASR, PiSASR_eval  # noqa: E402  (csslc/PiSA-SR, imported at run time, not copied)
        from src.models.autoencoder_kl import AutoencoderKL  # noqa: E402
        from src.models.unet_2d_condition import UNet2DConditionModel  # noqa: E402

        on_cpu = not torch.cuda.is_available()
        with CudaCallsOnCpu() if on_cpu else contextlib.nullcontext(), _without_cuda_sync():
            sd_folder = os.path.join(work, 'sd21_tiny')
            base = _write_sd_folder(sd_folder, UNet2DConditionModel, AutoencoderKL)

            # 1. the release file, written by PiSA-SR's training class
            train_args = SimpleNamespace(pretrained_model_path=sd_folder, resume_ckpt=None, timesteps1=1,
                                         lora_rank_unet_pix=RANK, lora_rank_unet_sem=RANK)
            trainer = PiSASR(train_args)
            generator = torch.Generator().manual_seed(SEED + 1)
            with torch.no_grad():  # trained-looking LoRA: B is no longer zero, A no longer its init
                for name, param in trainer.unet.named_parameters():
                    if 'lora' in name:
                        param.copy_(_half_values(torch.randn(param.shape, generator=generator) * LORA_STD))
            release = os.path.join(work, 'pisa_sr.pkl')
            trainer.save_model(release)
            del trainer

            # 2. inference with PiSA-SR's test class
            eval_args = SimpleNamespace(
                pretrained_model_path=sd_folder, pretrained_path=release, mixed_precision='fp32', default=False,
                lambda_pix=1.0, lambda_sem=1.0,
                # test_pisasr.py defaults; nothing is tiled at this size
                vae_encoder_tiled_size=1024, vae_decoder_tiled_size=224, latent_tiled_size=96,
                latent_tiled_overlap=32)
            model = PiSASR_eval(eval_args)
            model.set_eval()
            lq = _half_values(torch.rand(1, 3, *LQ_SIZE, generator=generator) * 2 - 1)  # test_pisasr: x * 2 - 1
            with torch.no_grad():
                prompt_embeds = model.encode_prompt([''])
                torch.manual_seed(SEED)
                lq_latents = model.vae.encode(lq).latent_dist.sample() * model.vae.config.scaling_factor
                outputs = []
                for default, lambda_pix, lambda_sem in CASES:
                    model.lambda_pix = torch.tensor([lambda_pix])
                    model.lambda_sem = torch.tensor([lambda_sem])
                    torch.manual_seed(SEED)
                    _, image = model(default, lq, prompt='')
                    outputs.append(image.float().cpu())
    finally:
        os.chdir(previous_cwd)

    checkpoint = torch.load(release, map_location='cpu', weights_only=True)
    checkpoint['state_dict_unet'] = {k: v.half() for k, v in checkpoint['state_dict_unet'].items()}
    return dict(
        format=FORMAT,
        note=('Made by tools/make_pisasr_fixture.py from csslc/PiSA-SR with diffusers '
              f'{diffusers.__version__}; outputs are PiSA-SR_eval images in [-1, 1] before the colour fix.'),
        unet_config=json.dumps(UNET_CONFIG), vae_config=json.dumps(VAE_CONFIG),
        scheduler_config=json.dumps(SCHEDULER_CONFIG),
        unet_base={k: v.half() for k, v in base['unet'].items()},
        vae={k: v.half() for k, v in base['vae'].items()},
        checkpoint=checkpoint,
        lq=lq.half(), prompt_embeds=prompt_embeds.float().cpu(), seed=SEED, lq_latents=lq_latents.float().cpu(),
        cases=[[bool(d), float(p), float(s)] for d, p, s in CASES],
        outputs=torch.stack(outputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--pisasr', required=True, metavar='DIR', help='a checkout of csslc/PiSA-SR')
    parser.add_argument('--out', default=DEFAULT_OUT, help='fixture file to write (default: %(default)s)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        fixture = make_fixture(args.pisasr, work)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    with open(args.out, 'wb') as f:  # mtime 0: the same fixture gives the same bytes
        f.write(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB): {len(fixture["cases"])} cases, '
          f'{len(fixture["checkpoint"]["state_dict_unet"])} LoRA tensors')


if __name__ == '__main__':
    main()
