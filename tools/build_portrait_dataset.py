"""Build PortraitSR-4K-style manifests from a folder of photos (HeadsUp paper 000, section 3 and appendix C).

    python tools/build_portrait_dataset.py PHOTOS OUT [--workers 8]

Stage 1 scans every photo (size and aspect filter, optional quality scorer, face detection, faces with an eye
distance under 64 px dropped, aligned 512 crops, identity embeddings) into ``OUT/records.jsonl``; it resumes where
a killed run stopped. Stage 2 pairs faces of the same person (similarity > 0.65) within a train/test split by
image and writes ``OUT/train.jsonl``, ``OUT/test.jsonl`` (the schema of docs/portrait_data.md), ``OUT/report.txt``
and ``OUT/report.png``. The defaults are the paper's; every threshold has a flag.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.datasets.builder import PairConfig, ScanConfig, build_manifests, scan_images, write_report  # noqa
from portraitisr.datasets.builder.records import read_records  # noqa: E402

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('photos', help='folder of photos (searched recursively)')
    parser.add_argument('out', help='output folder: records, face crops, embeddings, manifests, report')
    parser.add_argument('--workers', type=int, default=1, help='scanning processes')
    parser.add_argument('--min-long-side', type=int, default=3840)
    parser.add_argument('--min-short-side', type=int, default=2160)
    parser.add_argument('--aspect', type=float, nargs=2, default=(0.6, 1.6), metavar=('LOW', 'HIGH'),
                        help='allowed width / height range')
    parser.add_argument('--scorer', choices=sorted(SCORERS), help='quality scorer plug-in (default: none)')
    parser.add_argument('--score-threshold', type=float, help='reject photos on the bad side of it')
    parser.add_argument('--detector', choices=sorted(DETECTORS), default='dlib')
    parser.add_argument('--min-eye-distance', type=float, default=64.0, help='full-resolution pixels')
    parser.add_argument('--extractor', choices=sorted(EXTRACTORS), default='dlib',
                        help='identity plug-in (the paper uses CVLFace AdaFace: adaface, weights needed)')
    parser.add_argument('--similarity', type=float, default=0.65, help='identity-pair threshold')
    parser.add_argument('--test-ratio', type=float, default=0.1, help='share of images in the test split')
    parser.add_argument('--seed', type=int, default=0, help='seed of the split')
    parser.add_argument('--limit', type=int, help='scan at most this many new photos (then stop)')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    scan_config = ScanConfig(min_long_side=args.min_long_side, min_short_side=args.min_short_side,
                             aspect_range=tuple(args.aspect),
                             scorer=SCORERS[args.scorer] if args.scorer else None,
                             score_threshold=args.score_threshold, detector=DETECTORS[args.detector],
                             min_eye_distance=args.min_eye_distance, extractor=EXTRACTORS[args.extractor])
    records_path = scan_images(args.photos, args.out, scan_config, workers=args.workers,
                               progress=not args.no_progress, limit=args.limit)
    pair_config = PairConfig(similarity_threshold=args.similarity, test_ratio=args.test_ratio, seed=args.seed)
    summary = build_manifests(args.out, args.photos, records_path, pair_config)
    report = write_report(args.out, read_records(records_path), summary)
    print(Path(report['text']).read_text(encoding='utf-8'))
    print(f'manifests: {osp.join(args.out, "train.jsonl")}, {osp.join(args.out, "test.jsonl")}; plot: {report["png"]}')


if __name__ == '__main__':
    main()
