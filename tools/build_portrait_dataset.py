"""Build PortraitSR-4K-style manifests from a folder of photos (HeadsUp paper 000, section 3 and appendix C).

    python tools/build_portrait_dataset.py PHOTOS OUT [--workers 8]

Stage 1 scans every photo (size and aspect filter, optional quality scorer, face detection, faces with an eye
distance under 64 px dropped, aligned 512 crops, identity embeddings) into ``OUT/records.jsonl``; it resumes where
a killed run stopped, scans again the photos changed since, and drops those deleted. Stage 2 pairs faces of the same
person within a train/test split by image and writes ``OUT/train.jsonl``, ``OUT/test.jsonl`` (the schema of
docs/portrait_data.md), ``OUT/report.txt`` and ``OUT/report.png``.

Which defaults are the paper's (appendix C) and which are not:

* the paper's: photos of at least 3840 x 2160 with an aspect ratio in [0.6, 1.6], faces with an eye distance of
  64 px or more, about 10% of the photos in the test split (3k of 30k), one reference per test face;
* offline substitutes, because the paper's models come from model hubs: dlib's HOG detector (``--detector dlib``)
  replaces FaceLib's RetinaFace (``--detector retinaface``, weights needed) and dlib's ResNet descriptor
  (``--extractor dlib``) replaces CVLFace AdaFace (``--extractor adaface``, weights needed); the Q-Align quality
  filter has no offline counterpart, so there is none unless ``--scorer`` is given;
* the pairing threshold is the identity model's own (``--similarity`` overrides it): the paper's 0.65 with CVLFace,
  0.91 with dlib (dlib's euclidean distance 0.6, converted to the cosine of normalised descriptors; at 0.65 two
  different people pair up under dlib). The model and the threshold are written in the manifests and the report.

A photo that cannot be read (corrupt, truncated, or a header claiming more than ``--max-pixels``: a decompression
bomb is refused before decoding) is reported in one line and the build goes on. The tool ends with a summary and
exits with status 1 when some photos could not be read (photos merely filtered out do not count), 2 on a usage
error.
"""
import argparse
import os.path as osp
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.datasets.builder import (PairConfig, ScanConfig, WorkerStartError, build_manifests,  # noqa: E402
                                          read_records, scan_images, write_report)
from portraitisr.utils.image_io import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402

DETECTORS = {
    'dlib': dict(type='DlibFaceDetector', model='hog'),
    'retinaface': dict(type='RetinaFaceDetector', network='resnet50'),
}
EXTRACTORS = {
    'dlib': dict(type='DlibResNet'),
    'adaface': dict(type='AdaFaceIR', depth=101, channel_order='RGB',
                    weights='cvlface_adaface_ir101_webface12m.safetensors'),
}
SCORERS = {'sharpness': dict(type='SharpnessScorer'), 'niqe': dict(type='MetricScorer', metric=dict(type='NIQE'))}
#: failed files listed in the closing summary (all of them are in report.txt)
SUMMARY_FILES = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('photos', help='folder of photos (searched recursively; links to folders are followed)')
    parser.add_argument('out', help='output folder: records, face crops, embeddings, manifests, report')
    parser.add_argument('--workers', type=int, default=1, help='scanning processes')
    parser.add_argument('--min-long-side', type=int, default=3840, help='paper: 3840')
    parser.add_argument('--min-short-side', type=int, default=2160, help='paper: 2160')
    parser.add_argument('--aspect', type=float, nargs=2, default=(0.6, 1.6), metavar=('LOW', 'HIGH'),
                        help='allowed width / height range (paper: 0.6 1.6)')
    parser.add_argument('--scorer', choices=sorted(SCORERS),
                        help='quality scorer plug-in (default: none; the paper uses Q-Align, not available offline)')
    parser.add_argument('--score-threshold', type=float, help='reject photos on the bad side of it')
    parser.add_argument('--detector', choices=sorted(DETECTORS), default='dlib',
                        help='face detector (default dlib, offline; the paper uses FaceLib RetinaFace: retinaface)')
    parser.add_argument('--min-eye-distance', type=float, default=64.0, help='full-resolution pixels (paper: 64)')
    parser.add_argument('--extractor', choices=sorted(EXTRACTORS), default='dlib',
                        help='identity model (default dlib, offline; the paper uses CVLFace AdaFace: adaface, '
                             'weights needed)')
    parser.add_argument('--similarity', type=float,
                        help="identity-pair threshold on the cosine similarity (default: the identity model's own, "
                             '0.91 for dlib, 0.65 for adaface as in the paper)')
    parser.add_argument('--max-pixels', type=int,
                        help=f'refuse photos whose header claims more pixels, before decoding (default '
                             f'{DEFAULT_MAX_IMAGE_PIXELS} = 16384 x 8192, or PORTRAITISR_MAX_IMAGE_PIXELS; '
                             '0: no limit)')
    parser.add_argument('--test-ratio', type=float, default=0.1, help='share of images in the test split (paper: 0.1)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the split')
    parser.add_argument('--limit', type=int, help='scan at most this many new photos (then stop)')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args()


def _one_line_warnings() -> None:
    """Builder warnings (links, changed or deleted photos) as one plain line each on stderr, every time."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f'warning: {message}', file=sys.stderr if file is None else file)

    warnings.showwarning = show
    warnings.simplefilter('always')


def _summary(records: dict, out: str) -> int:
    """Print the closing summary; the exit status (1 when some photos could not be read)."""
    failed = sorted((r['image'], str(r.get('reason'))) for r in records.values() if r.get('status') == 'error')
    if not failed:
        print(f'all {len(records)} photos were read')
        return 0
    by_code = Counter(reason.split(':', 1)[0] for _, reason in failed)
    codes = ', '.join(f'{code}: {n}' for code, n in sorted(by_code.items()))
    lines = [f'{len(failed)} of {len(records)} photos could not be read ({codes}); the others were built:']
    lines += [f'  {image}: {reason}' for image, reason in failed[:SUMMARY_FILES]]
    if len(failed) > SUMMARY_FILES:
        lines.append(f'  ... and {len(failed) - SUMMARY_FILES} more, listed in {osp.join(out, "report.txt")}')
    print('\n'.join(lines), file=sys.stderr)
    return 1


def main() -> int:
    args = parse_args()
    _one_line_warnings()
    if args.max_pixels is not None and args.max_pixels < 0:
        print('error: --max-pixels must be 0 (no limit) or a positive number of pixels', file=sys.stderr)
        return 2
    try:
        scan_config = ScanConfig(min_long_side=args.min_long_side, min_short_side=args.min_short_side,
                                 aspect_range=tuple(args.aspect),
                                 scorer=SCORERS[args.scorer] if args.scorer else None,
                                 score_threshold=args.score_threshold, detector=DETECTORS[args.detector],
                                 min_eye_distance=args.min_eye_distance, extractor=EXTRACTORS[args.extractor],
                                 max_pixels=args.max_pixels)
        pair_config = PairConfig(similarity_threshold=args.similarity, test_ratio=args.test_ratio, seed=args.seed)
        records_path = scan_images(args.photos, args.out, scan_config, workers=args.workers,
                                   progress=not args.no_progress, limit=args.limit)
        summary = build_manifests(args.out, args.photos, records_path, pair_config)
    except (OSError, ValueError, KeyError, WorkerStartError) as error:  # expected: bad folders, settings, models
        print(f'error: {error}', file=sys.stderr)
        return 2
    records = read_records(records_path)
    report = write_report(args.out, records, summary)
    print(Path(report['text']).read_text(encoding='utf-8'))
    print(f'manifests: {osp.join(args.out, "train.jsonl")}, {osp.join(args.out, "test.jsonl")}; plot: {report["png"]}')
    return _summary(records, args.out)


if __name__ == '__main__':
    sys.exit(main())
