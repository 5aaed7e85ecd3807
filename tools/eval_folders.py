"""Score restored images against ground truth: ``python tools/eval_folders.py --pred DIR --gt DIR``.

Per-image rows (first column the file name, one column per metric) plus the mean, matched by file name; written
to ``--out FILE.csv`` and printed. Without ``--metrics``, OSEDiff's table columns (psnr ssim lpips dists clipiqa
niqe musiq maniqa) are computed, leaving out (with a warning) those whose weights are not on this machine; named
metrics are required. ``--reference CSV`` compares the result with published per-image scores (columns matched
by name, case-insensitive) and prints the largest deviation per metric.

An image that cannot be read (corrupt, more pixels than ``--max-pixels``, a size that differs from its ground
truth) is reported on one line and left out; the others are scored. Exit status: 0 every image scored, 1 some
were left out, 2 nothing could start (a missing folder, an unknown metric, predictions without a ground truth).

    python tools/eval_folders.py --pred work_dirs/results/drealsr --gt datasets/drealsr/hr \
        --out work_dirs/drealsr.csv
    python tools/eval_folders.py --pred work_dirs/restored --gt work_dirs/pairs/gt --metrics psnr ssim face_lpips
"""
import argparse
import csv
import math
import os
import os.path as osp
import sys

from tqdm import tqdm

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.evaluation.folder_evaluation import MEAN_ROW, build_metrics, evaluate_folders  # noqa: E402
from portraitisr.evaluation.metric_presets import METRIC_PRESETS, OSEDIFF_TABLE  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pred', required=True, help='folder of restored images')
    parser.add_argument('--gt', help='folder of ground-truth images (same file names); needed by FR metrics')
    parser.add_argument('--metrics', nargs='+', metavar='NAME',
                        help=f'metrics to compute (default: OSEDiff\'s table); one of {", ".join(METRIC_PRESETS)}')
    parser.add_argument('--out', help='CSV file for the per-image rows and the mean')
    parser.add_argument('--reference', help='CSV of published per-image scores to compare with')
    parser.add_argument('--device', default='cpu', help="where images are scored, e.g. 'cuda'")
    parser.add_argument('--no-quantize', action='store_true',
                        help='score 16-bit predictions as they are (default: rounded to 8 bits like PNG)')
    parser.add_argument('--max-pixels', type=int,
                        help='refuse images with more pixels than this (default: 134 MP, or '
                             '$PORTRAITISR_MAX_IMAGE_PIXELS; 0: no limit)')
    return parser.parse_args()


def print_table(scores) -> None:
    header = ['image'] + scores.metrics
    width = max(len(n) for n in list(scores.rows) + [MEAN_ROW, 'image'])
    print('  '.join([header[0].ljust(width)] + [m.rjust(10) for m in header[1:]]))
    rows = list(scores.rows.items()) + [(MEAN_ROW, scores.mean)]
    for name, row in rows:
        cells = [f'{row.get(m, math.nan):10.4f}' for m in scores.metrics]
        print('  '.join([name.ljust(width)] + cells))


def compare_with_reference(scores, reference: str) -> None:
    with open(reference, newline='') as f:
        reader = csv.DictReader(f)
        published = {row[reader.fieldnames[0]]: row for row in reader}
        columns = {c.lower(): c for c in reader.fieldnames[1:]}
    print(f'\ndeviation from {reference}:')
    for metric in scores.metrics:
        column = columns.get(metric.lower())
        if column is None:
            continue
        deviations = [abs(row[metric] - float(published[name][column])) for name, row in scores.rows.items()
                      if name in published and published[name][column] and not math.isnan(row[metric])]
        if deviations:
            print(f'  {metric}: max |diff| {max(deviations):.6f} over {len(deviations)} images')


def main() -> int:
    args = parse_args()
    names = args.metrics or OSEDIFF_TABLE
    if args.gt is None:  # no-reference metrics only
        names = [n for n in names if n in ('niqe', 'musiq', 'clipiqa', 'maniqa')] if not args.metrics else names
    if args.max_pixels is not None and args.max_pixels < 0:
        return _setup_error('--max-pixels must be 0 (no limit) or more')
    for folder in (args.pred, args.gt):
        if folder is not None and not os.path.isdir(folder):
            return _setup_error(f'{folder} is not a folder' if os.path.exists(folder) else
                                f'folder {folder} does not exist')
    try:
        metrics = build_metrics(names, skip_unavailable=args.metrics is None)
    except (KeyError, ImportError, FileNotFoundError) as error:
        return _setup_error(error.args[0] if isinstance(error, KeyError) else str(error))
    if not metrics:
        return _setup_error('no metric could be built (see the warnings above)')

    def report(path, reason: str) -> None:
        tqdm.write(f'skipped {path}: {reason}', file=sys.stderr)

    try:
        scores = evaluate_folders(args.pred, args.gt, metrics, device=args.device, quantize=not args.no_quantize,
                                  max_pixels=args.max_pixels, on_failure=report)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        return _setup_error(str(error))
    print_table(scores)
    if args.out:
        scores.write_csv(args.out)
        print(f'\nwritten to {args.out}')
    if args.reference:
        compare_with_reference(scores, args.reference)
    scored = len(scores.rows)
    print(f'\n{scored} of {scored + len(scores.failed)} images scored'
          + (f'; {len(scores.failed)} left out: {", ".join(scores.failed)}' if scores.failed else ''))
    return 1 if scores.failed else 0


def _setup_error(message: str) -> int:
    print(f'eval_folders: {str(message).splitlines()[0]}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
