"""Score a folder of restored images against a folder of ground truths, matched by file name.

The library side of ``tools/eval_folders.py``: per-image rows (one column per metric) plus the mean, computed by
the same :class:`~portraitisr.evaluation.metrics.ImageMetric` objects the runner uses. Set metrics (FID) have no
per-image value; they fill the mean row only, from the features of the images read here.

Every image is read by :func:`~portraitisr.utils.image_io.read_image` with its pixel limit; one that cannot be read
(corrupt, a decompression bomb, a size that differs from its ground truth) is listed in ``FolderScores.failed``
with a one-line reason and left out, and the others are scored.
"""
import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from tqdm import tqdm

from portraitisr.registry import METRICS
from portraitisr.utils.image_io import ImageReadError, image_to_tensor, list_images, read_image
from .metric_presets import metric_config
from .metrics.fid import frechet_distance, gaussian_of

MEAN_ROW = 'mean'


@dataclass
class FolderScores:
    """Scores of a folder pair: ``rows[name][metric]`` per image (NaN where a metric skipped the image, e.g. no
    face), ``mean[metric]`` over the images a metric scored, and ``failed[name]``: why an image could not be
    scored (one line)."""

    metrics: List[str]
    rows: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mean: Dict[str, float] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)

    def write_csv(self, path: str) -> None:
        """First column ``image`` (the file name), one column per metric; the last row is the mean."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['image'] + self.metrics)
            for name, row in self.rows.items():
                writer.writerow([name] + [_format(row.get(m, math.nan)) for m in self.metrics])
            writer.writerow([MEAN_ROW] + [_format(self.mean.get(m, math.nan)) for m in self.metrics])


def _format(value: float) -> str:
    return '' if value is None or math.isnan(value) else f'{value:.6f}'


def match_folders(pred_dir: str, gt_dir: Optional[str]) -> List[Tuple[Path, Optional[Path]]]:
    """``(pred, gt)`` file pairs matched by file name (or by stem when the extensions differ, e.g. PNG results
    of JPEG inputs). Predictions without a GT are an error naming them; GTs without a prediction are logged."""
    preds = list_images(pred_dir, recursive=True)
    if not preds:
        raise FileNotFoundError(f'no images in {pred_dir}')
    if gt_dir is None:
        return [(p, None) for p in preds]
    gts = list_images(gt_dir, recursive=True)
    by_name = {p.relative_to(gt_dir).as_posix(): p for p in gts}
    by_stem: Dict[str, List[Path]] = {}
    for p in gts:
        by_stem.setdefault(p.relative_to(gt_dir).with_suffix('').as_posix(), []).append(p)
    pairs, unmatched = [], []
    for pred in preds:
        relative = pred.relative_to(pred_dir)
        gt = by_name.get(relative.as_posix())
        if gt is None:
            candidates = by_stem.get(relative.with_suffix('').as_posix(), [])
            gt = candidates[0] if len(candidates) == 1 else None
        if gt is None:
            unmatched.append(relative.as_posix())
        else:
            pairs.append((pred, gt))
    if unmatched:
        raise FileNotFoundError(f'{len(unmatched)} prediction(s) have no ground truth of the same name in {gt_dir}: '
                                f'{", ".join(unmatched[:5])}{" ..." if len(unmatched) > 5 else ""}')
    missing = len(gts) - len(pairs)
    if missing:
        print_log(f'{missing} ground-truth image(s) in {gt_dir} have no prediction and are not scored',
                  logger='current', level=logging.WARNING)
    return pairs


def build_metrics(names: Sequence[str], skip_unavailable: bool = False) -> Dict[str, object]:
    """Metric objects by preset name (see :mod:`portraitisr.evaluation.metric_presets`).

    With ``skip_unavailable`` a metric whose weights or optional package are missing is left out with a warning
    that says how to get it; otherwise that error propagates.
    """
    metrics = {}
    for name in names:
        try:
            metrics[name] = METRICS.build(metric_config(name))
        except (ImportError, FileNotFoundError) as error:  # WeightsNotFoundError is a FileNotFoundError
            if not skip_unavailable:
                raise
            wanted = getattr(error, 'wanted', None)
            reason = f'its weights {wanted} are not on this machine' if wanted else str(error).splitlines()[0]
            print_log(f'metric {name} skipped: {reason} (name it in --metrics to see where it was looked for '
                      'and how to get it)', logger='current', level=logging.WARNING)
    return metrics


def _read(path: Path, device: str, max_pixels: Optional[int]):
    return image_to_tensor(read_image(path, max_pixels=max_pixels).rgb).to(device)


def evaluate_folders(pred_dir: str, gt_dir: Optional[str], metrics: Dict[str, object], device: str = 'cpu',
                     quantize: bool = True, progress: bool = True, max_pixels: Optional[int] = None,
                     on_failure: Optional[Callable[[Path, str], None]] = None) -> FolderScores:
    """Score every prediction in ``pred_dir`` (against the same-named file in ``gt_dir`` for full-reference
    metrics) with ``metrics`` (name -> metric object, e.g. from :func:`build_metrics`).

    An image pair that cannot be read (``max_pixels``: the reader's limit, None its default) or whose sizes differ
    is left out: ``on_failure(path, reason)`` is called (default: a logged warning) and ``scores.failed`` names it.

    Raises:
        FileNotFoundError: a folder does not exist, has no images, or a prediction has no ground truth.
        ValueError: full-reference metrics without ``gt_dir``.
    """
    per_image = {n: m for n, m in metrics.items() if hasattr(m, 'score')}
    set_metrics = {n: m for n, m in metrics.items() if n not in per_image}
    needs_gt = [n for n, m in metrics.items() if getattr(m, 'needs_gt', True)]
    if needs_gt and gt_dir is None:
        raise ValueError(f'{", ".join(needs_gt)} compare with ground truth: give --gt')
    if on_failure is None:
        def on_failure(path: Path, reason: str) -> None:
            print_log(f'skipped {path}: {reason}', logger='current', level=logging.WARNING)
    scores = FolderScores(metrics=list(metrics))
    features: Dict[str, Dict[str, list]] = {n: {'pred': [], 'gt': []} for n in set_metrics}
    for pred_path, gt_path in tqdm(match_folders(pred_dir, gt_dir), desc='scoring', disable=not progress):
        name = pred_path.relative_to(pred_dir).as_posix()
        try:
            pred = _read(pred_path, device, max_pixels)
            gt = _read(gt_path, device, max_pixels) if gt_path is not None else None
            if gt is not None and gt.shape != pred.shape:
                raise ValueError(f'prediction {tuple(pred.shape[-2:])} and ground truth {tuple(gt.shape[-2:])} '
                                 'differ in size')
        except (ImageReadError, ValueError, OSError) as error:
            scores.failed[name] = str(error).splitlines()[0]
            on_failure(pred_path, scores.failed[name])
            continue
        row = {}
        metric_pred = torch.round(pred.clamp(0, 1) * 255) / 255 if quantize else pred  # as an 8-bit PNG holds it
        for metric_name, metric in per_image.items():
            value = metric.score(metric_pred, gt if metric.needs_gt else None, None)
            row[metric_name] = float(value.reshape(-1)[0]) if value.numel() else math.nan
        scores.rows[name] = row
        for metric_name, metric in set_metrics.items():  # FID: features now, the distance over all at the end
            features[metric_name]['pred'].append(metric.features_of_images(pred)[0])
            if getattr(metric, 'stats', None) is None:
                features[metric_name]['gt'].append(metric.features_of_images(gt)[0])
    for metric_name in per_image:
        values = [row[metric_name] for row in scores.rows.values() if not math.isnan(row[metric_name])]
        scores.mean[metric_name] = sum(values) / len(values) if values else math.nan
    for metric_name, metric in set_metrics.items():
        scores.mean[metric_name] = _set_distance(metric, features[metric_name])
    return scores


def _set_distance(metric, features: Dict[str, list]) -> float:
    """FID of the collected features: against the metric's stored statistics, or between predictions and GTs."""
    import numpy as np

    if len(features['pred']) < 2:
        return math.nan
    pred = gaussian_of(np.stack(features['pred']))
    other = metric.stats if getattr(metric, 'stats', None) is not None else gaussian_of(np.stack(features['gt']))
    return float(frechet_distance(*pred, *other))
