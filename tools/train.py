"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH|URL]]``.

Checkpoints are loaded without running code from them: a path or an https URL with ``#sha256=<64 hex>`` (or
``--trust-url``) for ``--resume`` and ``--cfg-options load_from=...``; see docs/checkpoints_and_resume.md.
A checkpoint that is missing, refused or fails to download ends the run with one message and exit status 2.
"""
import argparse
import os
import os.path as osp
import sys

# Run from a source checkout without installing: make the package next to tools/ importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine: see import_guards

from mmengine.config import Config, DictAction  # noqa: E402

from portraitisr.engine.checkpoint_loading import CHECKPOINT_ERRORS, verify_checkpoint  # noqa: E402
from portraitisr.utils.runner_setup import build_runner, prepare_config  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a portraitisr model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from a checkpoint (a path, or an https URL ending in #sha256=<64 hex>); '
                        'without one, from the newest checkpoint in the work dir that loads')
    parser.add_argument('--trust-url', action='store_true',
                        help='download a --resume / load_from URL that has no #sha256= (you trust the server); '
                        'the file is still loaded with weights_only')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (bf16 '
                        'where supported, else fp16) for every optimizer wrapper')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (torchrun: pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg = prepare_config(cfg, config_path=args.config, work_dir=args.work_dir,
                         cfg_options=args.cfg_options, launcher=args.launcher, amp=args.amp)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    cfg.trust_checkpoint_url = args.trust_url or bool(cfg.get('trust_checkpoint_url', False))
    try:
        if cfg.get('load_from'):
            # Before the model is built: a refused URL or a missing file is reported at once, and the runner
            # gets the verified local file.
            cfg.load_from = str(verify_checkpoint(cfg.load_from, trust_url=cfg.trust_checkpoint_url))
        runner = build_runner(cfg)
        runner.train()
    except CHECKPOINT_ERRORS as error:
        print(f'train.py: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
