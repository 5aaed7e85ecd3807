"""PortraitSR-4K builder report: how many photos each filter kept, face sizes and pair similarities.

:func:`write_report` writes ``report.txt`` (the identity model and pairing threshold, counts after each filter,
every rejection reason, for a scan of shards the rejections per shard and the throughput of each step, how the pairs
were searched with the recall of that search, the files that could not be read, and histograms with fixed bins drawn
as ASCII bars) and
``report.png`` (the two histograms). The PNG is drawn with matplotlib's Agg
canvas directly, without pyplot, so the caller's matplotlib backend is left alone.
"""
import io
import math
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .pairs import SPLITS, PathLike, write_atomic
from .stages import STEPS

#: Stage 1's rejection reasons of the size and aspect filter, which comes before the quality scorer.
SIZE_REASONS = frozenset({'too_small', 'aspect'})
#: Stage 1's rejection reason of the aesthetic / quality scorer (then come ``no_face`` and ``small_faces``).
SCORE_REASONS = frozenset({'low_score'})

#: Fixed bin edges of the face-size histogram (distance between the eyes, pixels). HeadsUp drops faces under 64.
EYE_DISTANCE_BINS = (0, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, math.inf)
#: Fixed bin edges of the pair-similarity histogram (cosine); the first bin holds everything below 0.60.
SIMILARITY_BINS = (-1.0, 0.60, 0.625, 0.65, 0.675, 0.70, 0.725, 0.75, 0.775, 0.80, 0.825, 0.85, 0.875, 0.90, 0.925,
                   0.95, 0.975, 1.0)

BAR_WIDTH = 50


def _reason_key(reason: object) -> str:
    return str(reason or 'unspecified').strip().lower()


def _is(reason: object, reasons: frozenset) -> bool:
    return _reason_key(reason) in reasons


def filter_counts(records: Iterable[dict], summary: Mapping) -> List[Tuple[str, int]]:
    """``(label, count)`` after each filter, in the order the pipeline applies them."""
    records = list(records)
    rejected = [r for r in records if r.get('status') == 'rejected']
    errors = sum(r.get('status') == 'error' for r in records)
    too_small = sum(_is(r.get('reason'), SIZE_REASONS) for r in rejected)
    low_score = sum(_is(r.get('reason'), SCORE_REASONS) for r in rejected)
    ok = [r for r in records if r.get('status') == 'ok']
    with_faces = [r for r in ok if r.get('faces')]
    counts = [('scanned images', len(records)),
              ('errors (could not be read)', errors),
              ('candidates (size and aspect ratio)', len(records) - errors - too_small),
              ('passed quality scorer', len(records) - errors - too_small - low_score),
              ('ok images', len(ok)),
              ('images with faces', len(with_faces)),
              ('kept faces', sum(len(r['faces']) for r in with_faces)),
              ('dropped small faces', sum(int(r.get('dropped_small_faces') or 0) for r in records)),
              ('images skipped (bad embeddings)', int(summary.get('images_skipped', 0))),
              ('images skipped (photo changed or gone)', int(summary.get('images_stale', 0)))]
    for split in SPLITS:
        counts += [(f'{split} images', int(summary.get(f'{split}_images', 0))),
                   (f'{split} faces', int(summary.get(f'{split}_faces', 0))),
                   (f'{split} pairs (similarity > {summary.get("similarity_threshold")})',
                    int(summary.get(f'{split}_pairs', 0))),
                   (f'{split} references written', int(summary.get(f'{split}_references', 0))),
                   (f'{split} faces with >= 1 reference', int(summary.get(f'{split}_faces_with_reference', 0)))]
    return counts


def histogram(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Counts per ``[edges[k], edges[k + 1])`` bin (the last one closed); values outside go to the end bins."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.clip(np.asarray(values, dtype=np.float64), edges[0], np.nextafter(edges[-1], -np.inf))
    index = np.searchsorted(edges, values, side='right') - 1
    return np.bincount(index, minlength=len(edges) - 1)[:len(edges) - 1]


def _edge(value: float) -> str:
    return 'inf' if math.isinf(value) else f'{value:g}'


def ascii_histogram(title: str, counts: Sequence[int], edges: Sequence[float]) -> List[str]:
    """A histogram as text lines: ``[lo, hi)  count  ####``, bars scaled to the largest bin."""
    top = max(max(counts, default=0), 1)
    labels = [f'[{_edge(lo)}, {_edge(hi)})' for lo, hi in zip(edges[:-1], edges[1:])]
    if math.isfinite(edges[-1]):  # the last bin holds its upper edge too
        labels[-1] = labels[-1][:-1] + ']'
    width = max(len(label) for label in labels)
    lines = [title]
    for label, count in zip(labels, counts):
        bar = '#' * int(round(BAR_WIDTH * count / top))
        lines.append(f'  {label:<{width}}  {int(count):>8}  {bar}'.rstrip())
    return lines


def _eye_distances(records: Iterable[dict]) -> List[float]:
    return [float(f['eye_distance']) for r in records if r.get('status') == 'ok'
            for f in r.get('faces') or [] if f.get('eye_distance') is not None]


def _plot(path: Path, eye_counts: np.ndarray, sim_counts: Dict[str, np.ndarray]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    labels = [f'{_edge(lo)}' for lo in EYE_DISTANCE_BINS[:-1]]
    left.bar(range(len(eye_counts)), eye_counts, color='tab:blue')
    left.set_xticks(range(len(eye_counts)), labels, rotation=45)
    left.set_xlabel('eye distance (px, bin start)')
    left.set_ylabel('faces')
    left.set_title('face size')
    centres = [(lo + hi) / 2 for lo, hi in zip(SIMILARITY_BINS[1:-1], SIMILARITY_BINS[2:])]
    width = SIMILARITY_BINS[2] - SIMILARITY_BINS[1]
    bottom = np.zeros(len(centres))
    for split, counts in sim_counts.items():
        right.bar(centres, counts[1:], width=width * 0.9, bottom=bottom, label=f'{split} (< 0.60: {counts[0]})')
        bottom += counts[1:]
    right.set_xlabel('pair similarity (cosine)')
    right.set_ylabel('pairs')
    right.set_title('identity pairs')
    right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    temporary = path.with_name(f'.{path.name}.tmp')
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)


def _reasons(records: Iterable[dict]) -> Counter:
    """Rejection reasons, and errors grouped by their code (``'error: <code>'``)."""
    return Counter(_reason_key(r.get('reason')) if r.get('status') == 'rejected'
                   else 'error: ' + _reason_key(r.get('reason')).split(':')[0]
                   for r in records if r.get('status') in ('rejected', 'error'))


def pairing_lines(summary: Mapping) -> List[str]:
    """How the pairs of each split were searched: method, faces, recall against exact search, time."""
    lines = ['pair search (recall: share of the exact pairs found, measured on a sample of faces for an approximate '
             'index)']
    for split in SPLITS:
        info = (summary.get('pairing') or {}).get(split)
        if not info:
            continue
        recall = info.get('recall')
        if recall is None:
            measured = 'recall not measured (no exact pair among the sampled faces)' if info.get('recall_faces') \
                else 'recall not measured'
        elif info.get('recall_pairs'):
            measured = f'recall {recall:.4f} on {info["recall_pairs"]} exact pairs of {info["recall_faces"]} faces'
        else:
            measured = f'recall {recall:g} (exact)'
        extra = ''.join(f', {key} {info[key]}' for key in ('nlist', 'nprobe', 'shards') if info.get(key))
        lines.append(f'  {split}: {info.get("method")}, {info.get("faces")} faces{extra}: {measured}, '
                     f'{info.get("seconds", 0):.2f} s')
    return lines


def throughput_lines(shard_stats: Sequence[Mapping], scan_seconds: Optional[float] = None) -> List[str]:
    """Per-step throughput of a shard scan: photos each step processed, its worker-seconds, photos per second per
    worker (``photos / worker-seconds``), from the shards' ``.done.json``."""
    photos: Dict[str, int] = {}
    seconds: Dict[str, float] = {}
    for item in shard_stats:
        for step, value in (item.get('step_photos') or {}).items():
            photos[step] = photos.get(step, 0) + int(value)
        for step, value in (item.get('step_seconds') or {}).items():
            seconds[step] = seconds.get(step, 0.0) + float(value)
    samples = sum(int(item.get('samples') or 0) for item in shard_stats)
    engines = sorted({str(item.get('engine')) for item in shard_stats})
    lines = [f'throughput per step ({len(shard_stats)} shards, {samples} samples, engine: {", ".join(engines)})',
             f'  {"step":<8}  {"photos":>8}  {"worker-s":>10}  {"photos/s per worker":>19}']
    for step in STEPS:
        if step in photos:
            rate = photos[step] / seconds[step] if seconds.get(step) else float('inf')
            lines.append(f'  {step:<8}  {photos[step]:>8}  {seconds.get(step, 0.0):>10.2f}  {rate:>19.2f}')
    if scan_seconds:
        lines.append(f'  whole scan: {samples} samples in {scan_seconds:.1f} s = {samples / scan_seconds:.2f} '
                     'samples/s (wall clock, all workers)')
    return lines


def shard_reason_lines(records: Iterable[dict], shard_stats: Sequence[Mapping]) -> List[str]:
    """One line per shard: samples, ok, and the count of each rejection reason and error code."""
    by_shard: Dict[str, List[dict]] = {str(item['shard']): [] for item in shard_stats}
    for record in records:
        by_shard.setdefault(str(record.get('image', '')).rsplit('/', 1)[0], []).append(record)
    reasons = sorted(set(_reasons(records)))
    width = max([len('shard')] + [len(name) for name in by_shard])
    header = f'  {"shard":<{width}}  {"samples":>7}  {"ok":>6}' + ''.join(f'  {reason:>{len(reason)}}'
                                                                          for reason in reasons)
    lines = ['rejections and errors per shard', header]
    errors = {str(item['shard']): item.get('error') for item in shard_stats}
    for name in sorted(by_shard):
        group = by_shard[name]
        counts = _reasons(group)
        line = f'  {name:<{width}}  {len(group):>7}  {sum(r.get("status") == "ok" for r in group):>6}'
        line += ''.join(f'  {counts.get(reason, 0):>{len(reason)}}' for reason in reasons)
        if errors.get(name):
            line += f'  (shard read only in part: {errors[name]})'
        lines.append(line)
    return lines


def write_report(out_dir: PathLike, records: Union[Mapping[str, dict], Iterable[dict]], summary: Mapping,
                 shard_stats: Optional[Sequence[Mapping]] = None, scan_seconds: Optional[float] = None) -> dict:
    """Write ``<out_dir>/report.txt`` and ``<out_dir>/report.png``.

    Args:
        out_dir: the builder's output folder.
        records: stage 1's records (``{image: record}`` from :func:`~.records.read_records`, or a list).
        summary: what :func:`~.pairs.build_manifests` returned.
        shard_stats: for a scan of shards, the shards' ``.done.json`` (``shards.read_shard_stats``): adds the
            throughput of each step and the rejections per shard.
        scan_seconds: the wall time of this run's scan, for the whole-scan throughput.

    Returns:
        ``{'counts': [(label, n), ...], 'text': path, 'png': path}``.
    """
    out_dir = Path(out_dir)
    records = list(records.values()) if isinstance(records, Mapping) else list(records)
    counts = filter_counts(records, summary)
    width = max(len(label) for label, _ in counts)
    lines = ['PortraitSR-4K builder report', '',
             f'identity model: {summary.get("identity_model") or "(not recorded)"}',
             f'pairs: cosine similarity > {summary.get("similarity_threshold")} '
             f'({summary.get("threshold_source") or "source not recorded"})', '', 'counts after each filter']
    lines += [f'  {label:<{width}}  {count:>8}' for label, count in counts]
    # errors carry '<code>: message'; grouped by the code
    reasons = _reasons(records)
    lines += ['', 'rejections and errors by reason']
    lines += [f'  {reason:<{width}}  {n:>8}' for reason, n in sorted(reasons.items())] or ['  (none)']
    if shard_stats:
        lines += [''] + shard_reason_lines(records, shard_stats)
        lines += [''] + throughput_lines(shard_stats, scan_seconds)
    if summary.get('pairing'):
        lines += [''] + pairing_lines(summary)
    failed = sorted((str(r.get('image')), str(r.get('reason'))) for r in records if r.get('status') == 'error')
    lines += ['', f'files that could not be read ({len(failed)})']
    lines += [f'  {image}: {reason}' for image, reason in failed] or ['  (none)']
    eye_counts = histogram(_eye_distances(records), EYE_DISTANCE_BINS)
    lines += [''] + ascii_histogram('face size: eye distance in pixels (kept faces)', eye_counts.tolist(),
                                    EYE_DISTANCE_BINS)
    similarities = summary.get('pair_similarities') or {}
    sim_counts = {split: histogram(similarities.get(split, []), SIMILARITY_BINS) for split in SPLITS}
    for split in SPLITS:
        lines += [''] + ascii_histogram(f'pair similarity, {split} ({len(similarities.get(split, []))} pairs)',
                                        sim_counts[split].tolist(), SIMILARITY_BINS)
    text_path, png_path = out_dir / 'report.txt', out_dir / 'report.png'
    write_atomic(text_path, '\n'.join(lines) + '\n')
    _plot(png_path, eye_counts, sim_counts)
    return dict(counts=counts, text=str(text_path), png=str(png_path))
