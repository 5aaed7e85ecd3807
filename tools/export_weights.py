"""Export the trained weights of a training checkpoint for release or inference.

    python tools/export_weights.py CONFIG CHECKPOINT OUT.safetensors
    python tools/export_weights.py CONFIG CHECKPOINT osediff.pkl --format osediff

``safetensors``: the backbone's trainable tensors (LoRA + conv_in) with their metadata, loadable
with ``OneStepSD(trained_weights=...)`` or ``OneStepSD.load_trainable``; the metadata also records
how long the checkpoint was trained (``trained_iters``, ``config_name``, ``model_type``, ``saved_at``;
read back by ``portraitisr.engine.checkpoint_training_info``). ``osediff``: the layout of the
official OSEDiff release (``osediff.pkl``), readable by OSEDiff's own loader. CHECKPOINT is a path
or an https URL ending in ``#sha256=<64 hex>`` (or with ``--trust-url``), loaded without running
code from it. The config builds the model (its SD weights must be available), so the export checks
that the checkpoint fits the architecture. The output is written atomically.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from portraitisr.engine.checkpoint_loading import CHECKPOINT_ERRORS, load_checkpoint_file  # noqa: E402
from portraitisr.utils.atomic_files import publish_file  # noqa: E402


def training_metadata(checkpoint: dict) -> dict:
    """The training-length entries of a checkpoint's ``meta``, as safetensors metadata (strings)."""
    meta = checkpoint.get('meta') or {}
    values = dict(trained_iters=meta.get('trained_iters', meta.get('iter')), config_name=meta.get('config_name'),
                  model_type=meta.get('model_type'), saved_at=meta.get('time'))
    return {key: str(value) for key, value in values.items() if value is not None}


def export(config: str, checkpoint_spec: str, out: str, fmt: str, trust_url: bool = False) -> int:
    """Write the export; returns the number of backbone tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from portraitisr.models.backbones.osediff_checkpoint import export_osediff_checkpoint
    from portraitisr.registry import MODELS

    checkpoint = load_checkpoint_file(checkpoint_spec, trust_url=trust_url)  # before the (slow) model build
    state = checkpoint.get('state_dict', checkpoint)
    backbone_state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if not backbone_state:
        raise SystemExit(f'export_weights.py: {checkpoint_spec} holds no backbone weights')
    model = MODELS.build(Config.fromfile(config).model)
    model.backbone.load_trainable(backbone_state)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    temporary = out + '.tmp'
    try:
        if fmt == 'osediff':
            torch.save(export_osediff_checkpoint(model.backbone), temporary)
        else:
            model.backbone.save_trainable(temporary)
            with safe_open(temporary, framework='pt') as f:
                metadata = dict(f.metadata() or {}, **training_metadata(checkpoint))
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            save_file(tensors, temporary, metadata=metadata)
        publish_file(temporary, out)
    finally:
        if osp.exists(temporary):
            os.remove(temporary)
    return len(backbone_state)


def main() -> None:
    parser = argparse.ArgumentParser(description='Export trained one-step SD weights')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training checkpoint (iter_N.pth), or https URL#sha256=...')
    parser.add_argument('out')
    parser.add_argument('--format', choices=['safetensors', 'osediff'], default='safetensors')
    parser.add_argument('--trust-url', action='store_true',
                        help='download a checkpoint URL that has no #sha256= (still loaded with weights_only)')
    args = parser.parse_args()
    try:
        count = export(args.config, args.checkpoint, args.out, args.format, trust_url=args.trust_url)
    except CHECKPOINT_ERRORS as error:
        print(f'export_weights.py: {error}', file=sys.stderr)
        sys.exit(2)
    print(f'wrote {args.out} ({count} tensors)')


if __name__ == '__main__':
    main()
