"""Score restored images against ground truth: ``python tools/eval_folders.py --pred DIR --gt DIR``.

Per-image rows (first column the file name, one column per metric) plus the mean, matched by file name; written
to ``--out FILE.csv`` and printed. Without ``--metrics``, OSEDiff's table columns (psnr ssim lpips dists clipiqa
niqe musiq maniqa) are computed, leaving out (with a warning) those whose weights are not on this machine; named
metrics are required. ``--reference CSV`` compares the result with published per-image scores (columns matched
by name, case-insensitive) and prints the largest deviation per metric.

    python tools/eval_folders.py --pred results/drealsr --gt datasets/drealsr/hr --out drealsr.csv
    python tools/eval_folders.py --pred results --gt hr --metrics psnr ssim face_lpips id_score
"""
import argparse
import csv
import math
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

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


def main() -> None:
    args = parse_args()
    names = args.metrics or OSEDIFF_TABLE
    if args.gt is None:  # no-reference metrics only
        names = [n for n in names if n in ('niqe', 'musiq', 'clipiqa', 'maniqa')] if not args.metrics else names
    metrics = build_metrics(names, skip_unavailable=args.metrics is None)
    if not metrics:
        raise SystemExit('no metric could be built (see the warnings above)')
    scores = evaluate_folders(args.pred, args.gt, metrics, device=args.device, quantize=not args.no_quantize)
    print_table(scores)
    if args.out:
        scores.write_csv(args.out)
        print(f'\nwritten to {args.out}')
    if args.reference:
        compare_with_reference(scores, args.reference)


if __name__ == '__main__':
    main()
