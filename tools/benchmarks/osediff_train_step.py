"""Time and memory of one OSEDiff training step (generator + VSD regulariser) at SD 2.1 size.

Builds the SD 2.1-base architecture with random weights (no download; speed and memory do not
depend on the values), the OSEDiff model and its two AdamW optimisers, then times full
``train_step`` calls on random GT batches::

    python tools/benchmarks/osediff_train_step.py --size 512 --batch 4 --dtype bf16   # GPU
    python tools/benchmarks/osediff_train_step.py --tiny --size 64 --batch 2          # CPU check

LPIPS uses a randomly initialised VGG here (its cost does not depend on the weights).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def build_model(args):
    import lpips
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper, OptimWrapperDict

    from portraitisr.models.backbones.sd21_architecture import (SD21_SCHEDULER_CONFIG,
                                                                SD21_TEXT_ENCODER_CONFIG,
                                                                SD21_UNET_CONFIG, SD21_VAE_CONFIG)
    from portraitisr.registry import MODELS

    if args.tiny:
        tiny = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', '..', 'configs',
                                            '_base_', 'models', 'tiny_sd.py'))
        unet, vae, text = tiny.tiny_unet_cfg, tiny.tiny_vae_cfg, tiny.tiny_text_encoder_cfg
    else:
        unet, vae, text = SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD21_TEXT_ENCODER_CONFIG
    common = dict(frozen_dtype=args.dtype, gradient_checkpointing=args.checkpointing)
    model = MODELS.build(dict(
        type='OSEDiff',
        backbone=dict(type='OneStepSD', unet_cfg=unet, vae_cfg=vae,
                      scheduler_cfg=SD21_SCHEDULER_CONFIG, **common),
        regularizer=dict(type='VSDRegularizer', unet_cfg=unet, scheduler_cfg=SD21_SCHEDULER_CONFIG,
                         **common),
        text_encoder=dict(type='CLIPTextEncoder', text_encoder_cfg=text, dtype=args.dtype),
        prompter=dict(type='FixedPrompter', prompt='a photo'),
        data_preprocessor=dict(type='SRDataPreprocessor', degradation='osediff')))
    lpips_net = lpips.LPIPS(net='vgg', pnet_rand=True, verbose=False).requires_grad_(False)
    model.lpips_loss = LPIPSWrapper(lpips_net)
    model.to(args.device)

    def wrapper(module):
        params = [p for p in module.parameters() if p.requires_grad]
        return OptimWrapper(torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2),
                            clip_grad=dict(max_norm=1.0))
    return model, OptimWrapperDict(backbone=wrapper(model.backbone),
                                   regularizer=wrapper(model.regularizer))


class LPIPSWrapper(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pred, target):
        return 2.0 * self.net(pred.float(), target.float()).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--no-checkpointing', dest='checkpointing', action='store_false')
    parser.add_argument('--tiny', action='store_true', help='tiny components (CPU smoke run)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()

    model, optim_wrapper = build_model(args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = dict(gt=[torch.rand(3, args.size, args.size) for _ in range(args.batch)],
                 metainfo=[dict(index=i) for i in range(args.batch)])
    cuda = args.device.startswith('cuda')
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        model.train_step(batch, optim_wrapper)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    device = torch.cuda.get_device_name() if cuda else 'CPU'
    peak = f'{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB' if cuda else 'n/a'
    print(f'| device | size | batch | dtype | grad ckpt | trainable | s/step | peak memory |\n'
          f'|---|---|---|---|---|---|---|---|\n'
          f'| {device} | {args.size} | {args.batch} | {args.dtype} | {args.checkpointing} | '
          f'{trainable / 1e6:.3f}M | {seconds:.3f} | {peak} |')


if __name__ == '__main__':
    main()
