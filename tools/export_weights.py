"""Export the trained weights of a training checkpoint for release or inference.

    python tools/export_weights.py CONFIG CHECKPOINT OUT.safetensors
    python tools/export_weights.py CONFIG CHECKPOINT osediff.pkl --format osediff

``safetensors``: the backbone's trainable tensors (LoRA + conv_in) with their metadata, loadable
with ``OneStepSD(trained_weights=...)`` or ``OneStepSD.load_trainable``. ``osediff``: the layout
of the official OSEDiff release (``osediff.pkl``), readable by OSEDiff's own loader.
The config builds the model (its SD weights must be available), so the export checks that the
checkpoint fits the architecture.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description='Export trained one-step SD weights')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training checkpoint (iter_N.pth)')
    parser.add_argument('out')
    parser.add_argument('--format', choices=['safetensors', 'osediff'], default='safetensors')
    args = parser.parse_args()

    from portraitisr.models.backbones.osediff_checkpoint import export_osediff_checkpoint
    from portraitisr.registry import MODELS

    model = MODELS.build(Config.fromfile(args.config).model)
    state = torch.load(args.checkpoint, map_location='cpu', weights_only=True)['state_dict']
    backbone_state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if not backbone_state:
        raise SystemExit(f'{args.checkpoint} holds no backbone weights')
    model.backbone.load_trainable(backbone_state)
    if args.format == 'osediff':
        torch.save(export_osediff_checkpoint(model.backbone), args.out)
    else:
        model.backbone.save_trainable(args.out)
    print(f'wrote {args.out} ({len(backbone_state)} tensors)')


if __name__ == '__main__':
    main()
