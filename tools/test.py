"""Test a trained model: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]``.

Runs the config's test loop (restorations, metrics) with the weights of CHECKPOINT: a training
checkpoint of this library (trainable tensors only) loaded on top of the config's base model.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from portraitisr.utils.runner_setup import build_runner, prepare_config  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a portraitisr model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and results go')
    parser.add_argument('--save-dir', help='also write the restored images here (PNG)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    cfg = prepare_config(cfg, config_path=args.config, work_dir=args.work_dir,
                         cfg_options=args.cfg_options, launcher=args.launcher)
    cfg.load_from = args.checkpoint
    if args.save_dir:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='SaveRestorationsHook', save_dir=args.save_dir)]
    runner = build_runner(cfg)
    runner.test()


if __name__ == '__main__':
    main()
