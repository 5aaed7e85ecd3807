"""Step time (and peak GPU memory) of AuthFace's two training stages and of its restoration (arXiv 2410.09864).

Builds the models with random weights from architecture configs (no download; speed and memory do not depend on the
values) and times full ``train_step`` calls on random batches with landmarks, after warm-up steps:

* ``stage1``: :class:`AuthFaceFineTune`, the whole UNet trained (AdamW, gradient clipping);
* ``stage2``: :class:`AuthFace`, the ControlNet and the eye / mouth discriminators trained (two optimisers),
  the frozen UNet in the path, the time-aware facial loss on;
* ``restore``: ``AuthFace.restore`` of one image with ``--steps`` scheduler steps.

CPU, the tiny SDXL-shaped configs (``configs/_base_/models/tiny_sdxl.py``)::

    python tools/benchmarks/authface.py --tiny

SDXL size on GPUs (``SDXL_*_CONFIG`` of ``portraitisr/models/backbones/sdxl_architecture.py``, bf16 frozen weights,
gradient checkpointing), without sharding on one GPU and sharded with FSDP2 (the same FSDP2Strategy the configs
use) on several::

    python tools/benchmarks/authface.py --stages stage1 --size 1024 --batch 1 --json one_gpu.json
    torchrun --nproc_per_node 4 tools/benchmarks/authface.py --stages stage1 --size 1024 --batch 1 --shard
    torchrun --nproc_per_node 4 tools/benchmarks/authface.py --stages stage2 --size 512 --batch 4 --shard

Each row: stage, world size, sharded, per-process batch, image size, median seconds per step, peak GPU memory
allocated on this process (GiB; CUDA only), and "OOM" where a step ran out of memory. Rank 0 prints the table
(and writes ``--json``).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mmengine.config import Config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ('stage1', 'stage2', 'restore')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='AuthFace step time and memory')
    parser.add_argument('--tiny', action='store_true', help='tiny SDXL-shaped components (CPU check)')
    parser.add_argument('--stages', nargs='+', default=list(STAGES), choices=STAGES)
    parser.add_argument('--size', type=int, default=None, help='image side (default: 64/128 tiny, 1024/512 SDXL)')
    parser.add_argument('--batch', type=int, default=2, help='images per process')
    parser.add_argument('--steps', type=int, default=4, help='timed steps (and restoration steps)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--shard', action='store_true', help='FSDP2 over the torchrun processes')
    parser.add_argument('--dtype', default=None, help='frozen-weight dtype (default: float32 tiny, bfloat16 SDXL)')
    parser.add_argument('--json', help='write the rows here')
    return parser.parse_args(argv)


def _parts(args) -> dict:
    if args.tiny:
        tiny = Config.fromfile(os.path.join(REPO_ROOT, 'configs', '_base_', 'models', 'tiny_sdxl.py'))
        return dict(unet=tiny.tiny_sdxl_unet_cfg, vae=tiny.tiny_vae_cfg, scheduler=tiny.sd21_scheduler_cfg,
                    text=tiny.tiny_sdxl_text_encoder, conditioning=(8, 8, 16, 16),
                    discriminator=tiny.tiny_facial_discriminator, checkpointing=False)
    from portraitisr.models.backbones.sdxl_architecture import (SDXL_SCHEDULER_CONFIG, SDXL_TEXT_ENCODER_2_CONFIG,
                                                                SDXL_TEXT_ENCODER_CONFIG, SDXL_UNET_CONFIG,
                                                                SDXL_VAE_CONFIG)
    return dict(unet=SDXL_UNET_CONFIG, vae=SDXL_VAE_CONFIG, scheduler=SDXL_SCHEDULER_CONFIG,
                text=dict(type='SDXLTextEncoder', text_encoder_cfg=SDXL_TEXT_ENCODER_CONFIG,
                          text_encoder_2_cfg=SDXL_TEXT_ENCODER_2_CONFIG, dtype='bfloat16'),
                conditioning=(16, 32, 96, 256),
                discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=64),
                checkpointing=True)


def build(stage: str, args) -> tuple:
    """``(model config, optim_wrapper config, shard_modules)`` of a stage."""
    parts = _parts(args)
    dtype = args.dtype or ('float32' if args.tiny else 'bfloat16')
    common = dict(unet_cfg=parts['unet'], vae_cfg=parts['vae'], scheduler_cfg=parts['scheduler'], frozen_dtype=dtype,
                  gradient_checkpointing=parts['checkpointing'])
    adamw = dict(type='AdamW', lr=1e-6, weight_decay=1e-2)
    if stage == 'stage1':
        model = dict(type='AuthFaceFineTune', backbone=dict(type='LatentDiffusion', train_unet=True, **common),
                     text_encoder=parts['text'], prompter=dict(type='FixedPrompter', prompt='a portrait'))
        return model, dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)), ['backbone.unet']
    model = dict(type='AuthFace',
                 backbone=dict(type='ControlNetDiffusion', conditioning_embedding_out_channels=parts['conditioning'],
                               **common),
                 text_encoder=parts['text'], num_inference_steps=args.steps,
                 facial_loss=dict(type='TimeAwareFacialLoss', discriminator=parts['discriminator']),
                 data_preprocessor=dict(type='PortraitDataPreprocessor', degradation=dict(
                     type='FaceDegradation', blur_sigma=(0.1, 10), downsample_range=(0.8, 8), noise_range=(0, 20),
                     jpeg_range=(60, 100), round_output=True)))
    optim = dict(constructor='TrainableParamsOptimWrapperConstructor',
                 backbone=dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)),
                 facial_loss=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=2e-3, betas=(0.9, 0.99))))
    shards = ['backbone.unet', 'backbone.controlnet', 'facial_loss.discriminators.eyes',
              'facial_loss.discriminators.mouth']
    return model, optim, shards


def batch(args, size: int, start: int) -> dict:
    from portraitisr.face.alignment.templates import FFHQ_512

    landmarks = torch.from_numpy(FFHQ_512 * size / 512).float()
    return dict(gt=[torch.rand(3, size, size) for _ in range(args.batch)],
                metainfo=[dict(index=start + i, face_landmarks=landmarks, caption='a portrait')
                          for i in range(args.batch)])


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_stage(stage: str, args, strategy_cls) -> dict:
    size = args.size or ((64 if stage == 'stage1' else 128) if args.tiny else (1024 if stage == 'stage1' else 512))
    model_cfg, optim_cfg, shards = build('stage2' if stage == 'restore' else stage, args)
    launcher = 'pytorch' if 'WORLD_SIZE' in os.environ else 'none'
    strategy = strategy_cls(shard_modules=shards if args.shard else [],
                            block_classes=['ResnetBlock2D', 'BasicTransformerBlock'],
                            mixed_precision=None if args.tiny else dict(param_dtype='bfloat16',
                                                                        reduce_dtype='float32'),
                            work_dir=tempfile.mkdtemp(prefix='authface_bench_'),
                            env_kwargs=dict(launcher=launcher, dist_cfg=dict(backend='nccl'),
                                            randomness=dict(seed=0)))
    if not args.shard and strategy.world_size > 1:
        raise SystemExit('several processes without --shard would each hold the whole model: pass --shard')
    row = dict(stage=stage, world_size=strategy.world_size, sharded=bool(args.shard and strategy.world_size > 1),
               batch=1 if stage == 'restore' else args.batch, size=size, seconds=None, peak_gib=None, note='')
    from portraitisr.registry import MODELS

    strategy.prepare(MODELS.build(model_cfg), optim_wrapper=None if stage == 'restore' else optim_cfg)
    model, device = strategy.model, strategy.device()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for step in range(args.warmup + args.steps):
            _synchronize(device)
            start = time.perf_counter()
            if stage == 'restore':
                model.eval()
                model.restore(torch.rand(1, 3, size, size, device=device))
            else:
                model.train_step(batch(args, size, step * args.batch), strategy.optim_wrapper)
            _synchronize(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        row['seconds'] = statistics.median(times)
    except torch.cuda.OutOfMemoryError:
        row['note'] = 'OOM'
    if device.type == 'cuda':
        row['peak_gib'] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, strategy
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> list:
    args = parse_args(argv)
    torch.manual_seed(0)
    from mmengine.registry import DefaultScope

    DefaultScope.get_instance('authface_benchmark', scope_name='portraitisr')  # our optimiser constructor
    from portraitisr.engine.strategies import FSDP2Strategy

    rows = [run_stage(stage, args, FSDP2Strategy) for stage in args.stages]
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'{"stage":8} {"procs":>5} {"sharded":>7} {"batch":>5} {"size":>5} {"s/step":>9} {"peak GiB":>9}')
        for row in rows:
            seconds = f'{row["seconds"]:.3f}' if row['seconds'] is not None else row['note']
            peak = f'{row["peak_gib"]:.2f}' if row['peak_gib'] is not None else '-'
            print(f'{row["stage"]:8} {row["world_size"]:>5} {str(row["sharded"]):>7} {row["batch"]:>5} '
                  f'{row["size"]:>5} {seconds:>9} {peak:>9}')
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as f:
                json.dump(dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
                               torch=torch.__version__, rows=rows), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
