"""IDFSR speed: one 256 x 256 restore with DDIM-20 and one identity-fitting step, on the paper's network.

The network is the full-size IDFSR (DiffAE-256 UNet and style encoder, 6-channel input, identity cross-attention;
168.5M parameters) with random weights: the time does not depend on the values. The restore includes what the model
does per image at test time - masking, the piecewise-affine warp of the reference, the style code, 20 UNet passes -
with a given identity embedding (a fitted one; the ArcFace pass of the "PT" setting is reported separately). The
fitting step is IDFSR's stage 2 (section 3.3): forward, backward to the embedding, Adam, with ``--fit-batch``
photos. Inputs are real faces (skimage's astronaut, matplotlib's Grace Hopper) aligned to 256 px.

The paper (Table 6, one RTX 3090): 54 ms per UNet step, about 1 s per image with 20 steps.

    python tools/benchmarks/idfsr.py                        # CPU
    python tools/benchmarks/idfsr.py --device cuda --dtype bf16 --repeats 5
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402

from portraitisr.models.algorithms.identity_fitting import IdentityFitter  # noqa: E402
from portraitisr.registry import DATASETS, MODELS  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'configs',
                      'idfsr', 'idfsr_x16_celebref.py')


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device, warmup: bool = True) -> list:
    """``[(wall seconds, process CPU seconds)]`` per repeat. On a shared CPU the wall time depends on what else runs;
    the CPU time (all threads together) much less, so both are reported."""
    if warmup:
        fn()  # allocator, kernels
    times = []
    for _ in range(repeats):
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def build_model(device: torch.device):
    cfg = Config.fromfile(CONFIG)
    model_cfg = cfg.model.to_dict()
    model_cfg['init_weights'] = None  # random weights: the speed does not depend on them
    model_cfg['identity_embedder'] = dict(type='IdentityEmbedder', extractor=dict(type='ArcFaceIResNet', depth=50))
    torch.manual_seed(0)
    model = MODELS.build(model_cfg).eval()
    return model.to(device), cfg  # float32 weights; --dtype bf16 computes under autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=('fp32', 'bf16'))
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--fit-batch', type=int, default=1, help='photos per fitting step')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--no-warmup', action='store_true', help='time the first call too (slow shared CPUs)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == 'bf16' else torch.float32
    model, _ = build_model(device)
    params = sum(p.numel() for p in model.unet.parameters())
    dataset = DATASETS.build(dict(type='IdentityFaceDataset', manifest='sample://portraits', size=256, scale=16,
                                  ref_choice='next', ref_jitter=(8, 0.05, 0.03)))
    np.random.seed(0)
    items = [dataset[0], dataset[1]]
    data = model.data_preprocessor(pseudo_collate(items[:1]), False)
    data = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    identity = torch.nn.functional.normalize(torch.randn(512), dim=0).to(device)

    def restore():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks'],
                                 identity=identity)

    def unet_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            x = torch.randn(1, 6, 256, 256, device=device)
            return model.unet(x, torch.tensor([500], device=device), cond=torch.randn(1, 512, device=device),
                              identity=identity[None])

    def arcface():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model.embed_identity(data['ref'], data['ref_landmarks'])

    def fit_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return fitter.step()

    fitter = IdentityFitter(model, (items * args.fit_batch)[:args.fit_batch], identity, lr=1e-4,
                            batch_size=args.fit_batch)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'CPU ({torch.get_num_threads()} threads)'
    print(f'\nIDFSR full-size network ({params / 1e6:.1f}M UNet + style-encoder parameters), {args.dtype}, {name}, '
          f'torch {torch.__version__}\n')
    print('| what | median wall s | min wall s | median CPU s (all threads) |')
    print('|---|---|---|---|', flush=True)
    for label, fn in (('UNet step (1 x 256^2)', unet_step), ('restore 256^2, DDIM-20', restore),
                      ('ArcFace embedding of the reference', arcface), (f'fitting step (batch {args.fit_batch})',
                                                                         fit_step)):
        times = _timed(fn, args.repeats, device, not args.no_warmup)  # each row printed when measured
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        print(f'| {label} | {statistics.median(wall):.3f} | {min(wall):.3f} | {statistics.median(cpu):.3f} |',
              flush=True)

if __name__ == '__main__':
    main()
