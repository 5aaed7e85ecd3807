"""Latency, throughput and peak memory of one-step restoration (and of one training step), as a markdown table.

Builds OSEDiff on the SD 2.1-base architecture with random weights (no download: speed and memory do not depend on
the values; LoRA and conv_in are perturbed so merging has something to fold), then times ``OSEDiff.restore`` on
random LQ images already enlarged to the output size (OSEDiff's test script enlarges x4 bicubically first), with a
fixed prompt (embeddings cached) and the AdaIN colour fix, for each output size and path:

* ``unmerged fp32``: the training backbone as is (peft LoRA layers, float32);
* ``merged <dtype>``: :meth:`OneStepRestorer.enable_fast_inference` (LoRA merged, ``--dtype``, SDPA, channels-last
  on CUDA, ``--compile``), latent tiling (:mod:`portraitisr.models.backbones.latent_tiling`) above ``--tile-above``.

GPU (the targets of docs/benchmarks.md)::

    python tools/benchmark.py                                   # sizes 512 1024 4096 + a bf16 training step
    python tools/benchmark.py --compile --sizes 512 1024       # with torch.compile
    python tools/benchmark.py --osediff-reference ../OSEDiff --reference-python ../osediff-env/bin/python

CPU (tiny SD components, small sizes)::

    python tools/benchmark.py --tiny --sizes 128 256 --train-size 64

Latency is the median of ``--repeats`` calls on GPU; on CPU (a shared machine) the paths are timed interleaved and
each keeps its fastest call. Peak memory is ``torch.cuda.max_memory_allocated`` during the timed calls, weights
included; on CPU it is not measured.

With ``--osediff-reference DIR`` (a checkout of cswry/OSEDiff) the same random weights are written as a
diffusers SD folder and an ``osediff.pkl``; this script then re-runs itself (``--reference-worker``) with
``--reference-python``, an environment with OSEDiff's pinned requirements (diffusers 0.25, peft 0.9: its
``models/unet_2d_condition.py`` does not import with current diffusers), which
imports ``OSEDiff_test`` from the checkout at run time (nothing of it is copied here), times it in fp32 and fp16 with
merged LoRA (its timing setup), and compares its fp32 output with ours on the same input and posterior noise. On a
machine without a GPU its ``'cuda'`` placements are redirected to the CPU (:class:`CudaCallsOnCpu`), which checks
the output match with ``--tiny``; CPU timings of its fp16 path mean nothing.
"""
import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = 'a high-quality portrait photo'


# ---------------------------------------------------------------------- model
def model_configs(tiny: bool):
    from mmengine.config import Config

    from portraitisr.models.backbones.sd21_architecture import (SD21_SCHEDULER_CONFIG, SD21_TEXT_ENCODER_CONFIG,
                                                                SD21_UNET_CONFIG, SD21_VAE_CONFIG)
    if tiny:
        cfg = Config.fromfile(os.path.join(REPO_ROOT, 'configs', '_base_', 'models', 'tiny_sd.py'))
        return cfg.tiny_unet_cfg, cfg.tiny_vae_cfg, cfg.tiny_text_encoder_cfg, SD21_SCHEDULER_CONFIG
    return SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD21_TEXT_ENCODER_CONFIG, SD21_SCHEDULER_CONFIG


def build_osediff(tiny: bool, seed: int = 0):
    """OSEDiff for inference (no regulariser, no LPIPS) on CPU, float32, trainable tensors perturbed."""
    from portraitisr.registry import MODELS

    unet, vae, text, scheduler = model_configs(tiny)
    model = MODELS.build(dict(
        type='OSEDiff',
        backbone=dict(type='OneStepSD', unet_cfg=dict(unet), vae_cfg=dict(vae), scheduler_cfg=dict(scheduler)),
        text_encoder=dict(type='CLIPTextEncoder', text_encoder_cfg=dict(text)),
        prompter=dict(type='FixedPrompter', prompt=PROMPT),
        color_fix='adain')).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at zero: give every trainable tensor a value, as after training
        for param in model.backbone.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    return model


# ---------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Seconds per call (median of ``repeats`` after ``warmup``) and peak CUDA memory in GiB."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
    return dict(seconds=sorted(times)[len(times) // 2], peak_gib=peak)


def restore_fn(model, size: int, batch: int, device: torch.device, scale: int = 4) -> Callable[[], object]:
    """A call restoring ``batch`` random LQ images of ``size / scale`` to ``size`` (bicubic x scale, one step)."""
    lq = torch.rand(batch, 3, size // scale, size // scale, device=device)

    def run():
        torch.manual_seed(0)
        up = F.interpolate(lq, scale_factor=scale, mode='bicubic', align_corners=False).clamp(0, 1)
        return model.restore(up)
    return run


def device_info(device: torch.device) -> str:
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        return (f'{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, '
                f'torch {torch.__version__}')
    return (f'CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
            f'torch {torch.__version__}')


# ---------------------------------------------------------------------- benchmark parts
def tiling_for(args, size: int):
    """The latent tiling used at ``size``: OSEDiff-sized defaults, or tiles a quarter as large for the tiny model
    (so the small CPU sizes really are cut into tiles); None at or below ``--tile-above``."""
    from portraitisr.models.backbones.latent_tiling import LatentTiling

    if size <= args.tile_above:
        return None
    if args.tiny:
        return LatentTiling(unet_tile=24, unet_overlap=8, encode_tile=256, encode_overlap=64, decode_tile=32,
                            decode_overlap=8)
    return LatentTiling()


def bench_restore(args, device: torch.device) -> List[dict]:
    model = build_osediff(args.tiny)
    copies = {}
    if device.type == 'cpu':
        # CPU timings of a shared machine jump with other processes' load: build every path, then time them
        # interleaved (one call of each path per round) and keep each path's fastest round.
        for dtype in args.dtypes:
            model.enable_fast_inference(dtype, compile=args.compile, device=device)
            copies[dtype] = model.inference_backbone
        paths = [f'merged {dtype}' for dtype in args.dtypes] + ['unmerged fp32']
        rows = []
        for size in args.sizes:
            model.set_tiling(tiling_for(args, size))
            names = [p for p in paths if p != 'unmerged fp32' or size <= args.unmerged_max]
            best = {name: float('inf') for name in names}
            run = restore_fn(model, size, args.batch, device)
            with torch.no_grad():
                for round_index in range(args.warmup + args.repeats):
                    for name in names:
                        model.__dict__['_fast_backbone'] = copies.get(name.replace('merged ', ''))
                        start = time.perf_counter()
                        run()
                        if round_index >= args.warmup:
                            best[name] = min(best[name], time.perf_counter() - start)
            rows += [dict(path=name, size=size, tiled=model.tiling is not None, seconds=best[name], peak_gib=None)
                     for name in names]
        model.disable_fast_inference()
        return rows

    rows = []
    # GPU: the fast path first, with the float32 model on the CPU, so peak memory counts the merged copy only.
    for dtype in args.dtypes:
        model.enable_fast_inference(dtype, compile=args.compile, device=device)
        for size in args.sizes:
            model.set_tiling(tiling_for(args, size))
            result = measure(restore_fn(model, size, args.batch, device), device, args.warmup, args.repeats)
            rows.append(dict(path=f'merged {dtype}' + (' compiled' if args.compile else ''), size=size,
                             tiled=model.tiling is not None, **result))
        model.disable_fast_inference()
    model.set_tiling(None)
    unmerged_sizes = [s for s in args.sizes if s <= args.unmerged_max]
    if unmerged_sizes:
        model.to(device)
        for size in unmerged_sizes:
            result = measure(restore_fn(model, size, args.batch, device), device, args.warmup, args.repeats)
            rows.append(dict(path='unmerged fp32', size=size, tiled=False, **result))
        model.to('cpu')
    del model
    torch.cuda.empty_cache()
    return rows


def bench_train_step(args, device: torch.device) -> dict:
    """One OSEDiff generator + VSD-regulariser step (tools/benchmarks/osediff_train_step.py's model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'osediff_train_step', os.path.join(REPO_ROOT, 'tools', 'benchmarks', 'osediff_train_step.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train_args = argparse.Namespace(tiny=args.tiny, dtype=args.train_dtype, checkpointing=True, device=str(device))
    model, optim_wrapper = module.build_model(train_args)
    batch = dict(gt=[torch.rand(3, args.train_size, args.train_size) for _ in range(args.train_batch)],
                 metainfo=[dict(index=i) for i in range(args.train_batch)])

    def step():
        with torch.enable_grad():
            model.train_step(batch, optim_wrapper)
    result = measure(step, device, warmup=1, repeats=max(1, args.repeats // 2))
    return dict(path=f'train step {args.train_dtype}, batch {args.train_batch}, grad ckpt', size=args.train_size,
                tiled=False, **result)


# ---------------------------------------------------------------------- cswry/OSEDiff reference
def write_sd_text_encoder_folder(text_model, folder: str) -> None:
    """A ``CLIPTextModel`` saved with the hub's ``text_model.``-prefixed keys: transformers 5 saves them without
    the prefix, which OSEDiff's pinned transformers 4.28 silently replaces with random weights."""
    from safetensors.torch import save_file

    text_model.config.save_pretrained(folder)
    state = {(k if k.startswith('text_model.') else f'text_model.{k}'): v.contiguous()
             for k, v in text_model.state_dict().items()}
    save_file(state, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})


def write_sd_tokenizer_folder(folder: str) -> None:
    """SD 2.1's ``tokenizer/`` folder in the layout its hub copy has (``vocab.json``, ``merges.txt`` and the
    slow-tokenizer config: pad with "!", 77 tokens), which every transformers version reads. The
    ``tokenizer.json`` that current transformers saves does not load in OSEDiff's pinned tokenizers 0.13."""
    import shutil

    from portraitisr.models.text_encoders import bundled_clip_tokenizer_dir

    os.makedirs(folder, exist_ok=True)
    for name in ('vocab.json', 'merges.txt'):
        shutil.copyfile(os.path.join(bundled_clip_tokenizer_dir(), name), os.path.join(folder, name))
    config = dict(tokenizer_class='CLIPTokenizer', model_max_length=77, do_lower_case=True, errors='replace',
                  add_prefix_space=False, bos_token='<|startoftext|>', eos_token='<|endoftext|>',
                  unk_token='<|endoftext|>', pad_token='!')
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2)


def bench_reference(args, device: torch.device) -> List[dict]:
    """Time cswry/OSEDiff's ``OSEDiff_test`` (run by ``--reference-python``) against ours on the same weights."""
    from portraitisr.models.backbones.osediff_checkpoint import export_osediff_checkpoint

    size = args.reference_size
    model = build_osediff(args.tiny)
    model.color_fix = None  # OSEDiff_test returns the raw decoder output; its colour fix is in the test script
    rows = []
    with tempfile.TemporaryDirectory() as work:
        sd_dir = os.path.join(work, 'sd')
        backbone = model.backbone
        # the SD folder holds the base weights without LoRA (the LoRA tensors and conv_in go in osediff.pkl)
        for name in ('unet', 'vae'):
            plain = copy.deepcopy(getattr(backbone, name))
            plain.unload_lora()
            plain.save_pretrained(os.path.join(sd_dir, name))
        backbone.scheduler.save_pretrained(os.path.join(sd_dir, 'scheduler'))
        write_sd_text_encoder_folder(model.text_encoder.text_model, os.path.join(sd_dir, 'text_encoder'))
        write_sd_tokenizer_folder(os.path.join(sd_dir, 'tokenizer'))
        torch.save(export_osediff_checkpoint(backbone), os.path.join(work, 'osediff.pkl'))
        torch.manual_seed(1)
        lq = torch.rand(1, 3, size, size)
        torch.save(lq, os.path.join(work, 'lq.pt'))

        for precision in ('fp32', 'fp16'):
            out_file = os.path.join(work, f'reference_{precision}.pt')
            cmd = [args.reference_python, os.path.abspath(__file__), '--reference-worker', args.osediff_reference,
                   '--work', work, '--precision', precision, '--warmup', str(args.warmup), '--repeats',
                   str(args.repeats), '--out', out_file, '--reference-device', device.type]
            subprocess.run(cmd, check=True, cwd=args.osediff_reference)
            ref = torch.load(out_file, weights_only=True)
            rows.append(dict(path=f'cswry/OSEDiff {precision} (merged)', size=size, tiled=False,
                             seconds=ref['seconds'], peak_gib=ref['peak_gib']))
            if precision == 'fp32':
                # outputs on the same weights and the same posterior noise (seed 0, float32 on both sides)
                model.enable_fast_inference('float32', device=device)
                torch.manual_seed(0)
                with torch.no_grad():
                    ours = model.restore(lq.to(device)).float().cpu()
                diff = (ours - (ref['image'].float() + 1) / 2).abs()
                rows[-1]['match'] = f'max |ours - ref| = {diff.max():.2e}, mean {diff.mean():.2e}'
        model.enable_fast_inference(args.dtypes[0], compile=args.compile, device=device)
        result = measure(lambda: model.restore(lq.to(device)), device, args.warmup, args.repeats)
        rows.append(dict(path=f'ours merged {args.dtypes[0]}, same input', size=size, tiled=False, **result))
        model.disable_fast_inference()
    return rows


class CudaCallsOnCpu(TorchFunctionMode):
    """Runs code written for CUDA (``.cuda()``, ``device='cuda'``, ``.to('cuda')``) on the CPU.

    cswry/OSEDiff's ``OSEDiff_test`` places everything on ``'cuda'``; under this mode it runs on a machine without
    a GPU, which checks the comparison (weights, input, noise, output) there. Its CPU timings are not the
    comparison the benchmark is for.
    """

    @staticmethod
    def _cpu(value):
        if isinstance(value, str) and (value == 'cuda' or value.startswith('cuda:')):
            return 'cpu'
        if isinstance(value, torch.device) and value.type == 'cuda':
            return torch.device('cpu')
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        args = tuple(self._cpu(a) for a in args)
        kwargs = {k: self._cpu(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


def reference_worker(args) -> None:
    """Runs inside OSEDiff's environment, with its checkout as the working directory: imports nothing of ours."""
    sys.path.insert(0, args.reference_worker)
    from osediff import OSEDiff_test  # noqa: E402  (cswry/OSEDiff, imported at run time, not copied)

    device = torch.device(args.reference_device)
    with CudaCallsOnCpu() if device.type == 'cpu' else contextlib.nullcontext():
        options = argparse.Namespace(
            pretrained_model_name_or_path=os.path.join(args.work, 'sd'),
            osediff_path=os.path.join(args.work, 'osediff.pkl'), lora_rank=4, merge_and_unload_lora=True,
            mixed_precision=args.precision,
            # OSEDiff test_osediff.py defaults; nothing is tiled at the benchmark sizes
            vae_encoder_tiled_size=1024, vae_decoder_tiled_size=224, latent_tiled_size=96, latent_tiled_overlap=32)
        net = OSEDiff_test(options)
        lq = torch.load(os.path.join(args.work, 'lq.pt')).to(device) * 2 - 1
        prompt = PROMPT  # as our FixedPrompter

        def run():
            torch.manual_seed(0)
            return net(lq, prompt)
        result = measure(run, device, args.warmup, args.repeats)
        with torch.no_grad():
            image = run().float().cpu()
    torch.save(dict(image=image, **result), args.out)


# ---------------------------------------------------------------------- output
def table(rows: List[dict], batch: int) -> str:
    lines = ['| path | output size | tiled | batch | latency (s) | throughput (img/s) | peak GPU memory |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        n = 1 if 'train step' in row['path'] or 'OSEDiff' in row['path'] or 'same input' in row['path'] else batch
        peak = f"{row['peak_gib']:.2f} GiB" if row.get('peak_gib') is not None else 'n/a'
        lines.append(f"| {row['path']} | {row['size']} | {'yes' if row['tiled'] else 'no'} | {n} | "
                     f"{row['seconds']:.4f} | {n / row['seconds']:.2f} | {peak} |")
    return '\n'.join(lines)


def ratios(rows: List[dict]) -> List[str]:
    out = []
    for fast in rows:
        if not fast['path'].startswith('merged'):
            continue
        for row in rows:
            if row['path'] == 'unmerged fp32' and row['size'] == fast['size']:
                out.append(f"speed-up {fast['path']} / unmerged fp32 at {row['size']}: "
                           f"{row['seconds'] / fast['seconds']:.2f}x")
    ours = [r for r in rows if 'same input' in r['path']]
    for reference in (r for r in rows if r['path'].startswith('cswry/OSEDiff')):
        if ours:  # its fp16 is its fast path on a GPU; on a CPU fp16 is slow and fp32 is the fair comparison
            out.append(f"speed-up {ours[0]['path'].replace(', same input', '')} / {reference['path']} at "
                       f"{ours[0]['size']}: {reference['seconds'] / ours[0]['seconds']:.2f}x")
    out += [f"cswry/OSEDiff fp32 vs ours merged fp32: {r['match']}" for r in rows if 'match' in r]
    return out


def parse_args(argv: Optional[List[str]] = None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if cuda else 'cpu')
    parser.add_argument('--tiny', action='store_true', help='tiny SD components (CPU runs)')
    parser.add_argument('--sizes', type=int, nargs='+', help='output sizes (default 512 1024 4096; tiny 128 256)')
    parser.add_argument('--batch', type=int, default=1, help='images per restore call')
    parser.add_argument('--dtypes', nargs='+', choices=['float32', 'bfloat16', 'float16'],
                        help='dtypes of the merged path (default: bfloat16 on CUDA; float32 and bfloat16 on CPU, '
                        'where bf16 matmuls are only fast with AMX)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the merged UNet and VAE')
    parser.add_argument('--tile-above', type=int, default=2048, help='tile the latent/VAE above this output size')
    parser.add_argument('--unmerged-max', type=int, default=1024,
                        help='largest size timed on the unmerged fp32 path (0: none)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--train-size', type=int, default=512, help='training crop size (0: no training step)')
    parser.add_argument('--train-batch', type=int, default=1)
    parser.add_argument('--train-dtype', default='bfloat16', choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--osediff-reference', metavar='DIR', help='a checkout of cswry/OSEDiff to compare with')
    parser.add_argument('--reference-python', default=sys.executable,
                        help="python of an environment with OSEDiff's requirements (diffusers 0.25, peft 0.9)")
    parser.add_argument('--reference-size', type=int, default=512)
    parser.add_argument('--json', metavar='FILE', help='also write the rows as JSON')
    # internal: the reference worker
    parser.add_argument('--reference-worker', metavar='DIR', help=argparse.SUPPRESS)
    parser.add_argument('--work', help=argparse.SUPPRESS)
    parser.add_argument('--precision', help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    parser.add_argument('--reference-device', default='cuda', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ['bfloat16'] if args.device.startswith('cuda') else ['float32', 'bfloat16']
    if args.sizes is None:
        args.sizes = [128, 256] if args.tiny else [512, 1024, 4096]
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.reference_worker:
        reference_worker(args)
        return
    sys.path.insert(0, REPO_ROOT)
    from portraitisr.utils.import_guards import hide_bitsandbytes
    hide_bitsandbytes()  # before the library imports mmengine: see import_guards
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    device = torch.device(args.device)
    rows = bench_restore(args, device)
    if args.train_size > 0:
        rows.append(bench_train_step(args, device))
    if args.osediff_reference:
        rows += bench_reference(args, device)
    print(f"device: {device_info(device)}; model: {'tiny SD' if args.tiny else 'SD 2.1-base'} (random weights)")
    print(table(rows, args.batch))
    for line in ratios(rows):
        print(line)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(dict(device=device_info(device), rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
