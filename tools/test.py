"""Test a trained model: ``python tools/test.py CONFIG [CHECKPOINT] [--work-dir DIR]``.

Runs the config's test sets (restorations, metrics) with the weights of CHECKPOINT: a training
checkpoint of this library (trainable tensors only) loaded on top of the config's base model.
A config lists its test sets in ``test_sets`` (name, table layout, dataloader, evaluator; see
``configs/_base_/datasets/``), or has one ``test_dataloader``. The scores are written as
markdown and CSV tables in the layout of HeadsUp's Tables 1-3 to ``<work_dir>/tables/``.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from portraitisr.evaluation.tables import ResultTables  # noqa: E402
from portraitisr.utils.runner_setup import build_runner, prepare_config, run_test_sets  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a portraitisr model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?',
                        help='checkpoint file (omit for models without trained weights, e.g. blending baselines)')
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
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    cfg = prepare_config(cfg, config_path=args.config, work_dir=args.work_dir,
                         cfg_options=args.cfg_options, launcher=args.launcher)
    cfg.load_from = args.checkpoint  # None: the model as the config builds it (pretrained parts only)
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='ProgressBarHook')]
    if args.save_dir:
        cfg.custom_hooks.append(dict(type='SaveRestorationsHook', save_dir=args.save_dir))
    runner = build_runner(cfg)
    method = cfg.get('method_name') or osp.splitext(osp.basename(args.config))[0]
    tables = ResultTables()
    for name, table, metrics in run_test_sets(runner, cfg.get('test_sets')):
        tables.add(table, name, method, metrics)
    if runner.rank == 0:
        paths = tables.write(osp.join(cfg.work_dir, 'tables', method))
        print('\n' + tables.to_markdown() + '\nwritten: ' + ', '.join(paths))


if __name__ == '__main__':
    main()
