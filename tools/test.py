"""Test a trained model: ``python tools/test.py CONFIG [CHECKPOINT] [--work-dir DIR] [--save-dir [DIR]]``.

CONFIG is a config file or the name of a packaged config (``osediff_tiny``, ``osediff/osediff_sd21.py``; see
:func:`portraitisr.apis.config_location.resolve_config`).

Runs the config's test sets (restorations, metrics) with the weights of CHECKPOINT: a training
checkpoint of this library (trainable tensors only) loaded on top of the config's base model, given
as a path or an https URL ending in ``#sha256=<64 hex>`` (or with ``--trust-url``); it is loaded
without running code from it. A config lists its test sets in ``test_sets`` (name, table layout,
dataloader, evaluator; see ``configs/_base_/datasets/``), or has one ``test_dataloader``. The scores
are written as markdown and CSV tables in the layout of HeadsUp's Tables 1-3 to
``<work_dir>/tables/`` (work dir default: ``./work_dirs/<config name>``). A checkpoint that is
missing, refused or fails to download ends the run with one message and exit status 2. A test image that
cannot be read (corrupt, more pixels than the limit) is named on one line and left out; the scores are over the
rest and the run ends with a list of what was left out and exit status 1.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine: see import_guards

from mmengine.config import Config, DictAction  # noqa: E402

from portraitisr.apis.config_location import resolve_config  # noqa: E402
from portraitisr.engine.checkpoint_loading import CHECKPOINT_ERRORS, verify_checkpoint  # noqa: E402
from portraitisr.engine.loops import NoTestDataError  # noqa: E402
from portraitisr.evaluation.tables import ResultTables  # noqa: E402
from portraitisr.study.table2 import merge_user_study  # noqa: E402
from portraitisr.utils.runner_setup import build_runner, prepare_config, run_test_sets  # noqa: E402

RESTORATIONS = 'restorations'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a portraitisr model')
    parser.add_argument('config', help='config file or packaged config name')
    parser.add_argument('checkpoint', nargs='?',
                        help='checkpoint file or https URL#sha256=... (omit for models without trained weights, '
                        'e.g. blending baselines)')
    parser.add_argument('--work-dir', help='where logs and tables go (default: ./work_dirs/<config name>)')
    parser.add_argument('--save-dir', nargs='?', const='',
                        help=f'also write the restored images (PNG) here; without a folder, to '
                        f'<work dir>/{RESTORATIONS}')
    parser.add_argument('--user-study', nargs='+', metavar='CSV', default=[],
                        help='win_rates.csv files of `portraitisr study results` (WR_id / WR_N studies), merged into '
                        "Table 2's rows of the same method name")
    parser.add_argument('--trust-url', action='store_true',
                        help='download a checkpoint URL that has no #sha256= (still loaded with weights_only)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    try:
        config = str(resolve_config(args.config))
    except FileNotFoundError as error:
        print(f'test.py: {error}', file=sys.stderr)
        sys.exit(2)
    try:  # a bad study file is reported before anything is computed
        merge_user_study(ResultTables(), args.user_study)
    except (ValueError, FileNotFoundError) as error:
        print(f'test.py: {error}', file=sys.stderr)
        sys.exit(2)
    try:
        # Before the model is built: a refused URL or a missing file is reported at once.
        checkpoint = None if args.checkpoint is None else str(verify_checkpoint(args.checkpoint,
                                                                                 trust_url=args.trust_url))
        cfg = Config.fromfile(config)
        cfg = prepare_config(cfg, config_path=config, work_dir=args.work_dir,
                             cfg_options=args.cfg_options, launcher=args.launcher)
        cfg.load_from = checkpoint  # None: the model as the config builds it (pretrained parts only)
        # A test image that cannot be read is one line and left out, not the end of the run (exit status 1).
        cfg.test_cfg = dict(cfg.get('test_cfg') or {}, type='TolerantTestLoop')
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='ProgressBarHook')]
        if args.save_dir is not None:
            save_dir = args.save_dir or osp.join(cfg.work_dir, RESTORATIONS)
            cfg.custom_hooks.append(dict(type='SaveRestorationsHook', save_dir=save_dir))
        runner = build_runner(cfg)
        method = cfg.get('method_name') or osp.splitext(osp.basename(config))[0]
        tables = ResultTables()
        failed = {}
        for name, table, metrics, skipped in run_test_sets(runner, cfg.get('test_sets')):
            tables.add(table, name, method, metrics)
            if skipped:
                failed[name] = skipped
    except (*CHECKPOINT_ERRORS, NoTestDataError) as error:
        print(f'test.py: {error}', file=sys.stderr)
        sys.exit(2)
    unmatched = merge_user_study(tables, args.user_study)
    if unmatched and runner.rank == 0:
        print(f'test.py: the user study names methods with no row here: {", ".join(unmatched)} (this run is '
              f'{method!r}; set method_name in the config or --cfg-options method_name=...)', file=sys.stderr)
    if runner.rank == 0:
        paths = tables.write(osp.join(cfg.work_dir, 'tables', method))
        print('\n' + tables.to_markdown() + '\nwritten: ' + ', '.join(paths)
              + (f'\nrestored images: {save_dir}' if args.save_dir is not None else ''))
    if failed:  # the scores above leave these out
        if runner.rank == 0:
            print(f'test.py: {sum(map(len, failed.values()))} test batch(es) left out because a file could not be '
                  'read, the scores are over the rest:', file=sys.stderr)
            for name, reasons in failed.items():
                for reason in reasons:
                    print(f'  {name}: {reason}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
