"""PSNR/SSIM of bicubic upsampling (and optionally a PortraitSR checkpoint) on a config's validation faces.

``python tools/experiments/portraitsr_vs_bicubic.py CONFIG [--checkpoint CKPT]`` prints one row per method, with
the repository's PSNR/SSIM metrics (Y channel, 8-bit quantised) over the config's ``val_dataloader``: the bicubic
row is the baseline that PortraitSR's validation PSNR is compared with.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402


def evaluate(model, dataset, batch_size: int, restore) -> dict:
    """Mean PSNR/SSIM of ``restore(batch) -> B x 3 x H x W`` over ``dataset`` (batches preprocessed by ``model``)."""
    from mmengine.dataset import pseudo_collate

    from portraitisr.evaluation.metrics.psnr import PSNR
    from portraitisr.evaluation.metrics.ssim import SSIM
    metrics = [PSNR(), SSIM()]
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        data = model.data_preprocessor(pseudo_collate(items), False)
        with torch.no_grad():
            pred = restore(data)
        outputs = [dict(pred=pred[i].float().cpu(), gt=data['gt'][i].float().cpu()) for i in range(len(items))]
        for metric in metrics:
            metric.process([], outputs)
    result = {}
    for metric in metrics:
        result.update(metric.compute_metrics(metric.results))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='PortraitSR checkpoint (e.g. work_dirs/<config>/iter_N.pth)')
    args = parser.parse_args()

    from mmengine.registry import init_default_scope

    from portraitisr.registry import DATASETS, MODELS
    from portraitisr.weights import load_state_dict
    init_default_scope('portraitisr')
    cfg = Config.fromfile(args.config)
    model_cfg = cfg.model.copy()
    model_cfg.perceptual_loss = None  # evaluation needs no VGG
    model = MODELS.build(model_cfg).eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    batch_size = cfg.val_dataloader.get('batch_size', 1)
    rows = [('bicubic', evaluate(model, dataset, batch_size, lambda data: data['inputs'].clamp(0, 1)))]
    if args.checkpoint:
        state = load_state_dict(args.checkpoint)
        state = state.get('state_dict', state)
        missing, _ = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith('generator.')]
        if missing:
            raise RuntimeError(f'{args.checkpoint} lacks {len(missing)} generator tensors, e.g. {missing[:3]}')
        rows.append(('PortraitSR', evaluate(model, dataset, batch_size, lambda data: model.restore(data['inputs']))))
    print(f'{len(dataset)} faces of {args.config}')
    for name, result in rows:
        print(f'{name:12s} ' + '  '.join(f'{k} {v:.3f}' for k, v in result.items()))


if __name__ == '__main__':
    main()
