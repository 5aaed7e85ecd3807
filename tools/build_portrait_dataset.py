"""Build PortraitSR-4K-style manifests from a folder of photos or webdataset shards (HeadsUp section 3).

    python tools/build_portrait_dataset.py PHOTOS OUT [--workers 8]
    python tools/build_portrait_dataset.py IMG2DATASET_OUTPUT OUT --engine ray --workers 16 [--address auto]

Stage 1 scans every photo (size and aspect filter, optional quality scorer, face detection, faces with an eye
distance under 64 px dropped, aligned 512 crops, identity embeddings) into ``OUT/records.jsonl``; it resumes where
a killed run stopped, scans again the photos changed since, and drops those deleted. Stage 2 pairs faces of the same
person within a train/test split by image and writes ``OUT/train.jsonl``, ``OUT/test.jsonl`` (the schema of
docs/portrait_data.md), ``OUT/report.txt`` and ``OUT/report.png``.

Which defaults are the paper's (HeadsUp, arXiv 2510.09924, appendix C) and which are not:

* the paper's: photos of at least 3840 x 2160 with an aspect ratio in [0.6, 1.6], faces with an eye distance of
  64 px or more, about 10% of the photos in the test split (3k of 30k), one reference per test face;
* offline substitutes, because the paper's models come from model hubs: dlib's HOG detector (``--detector dlib``)
  replaces FaceLib's RetinaFace (``--detector retinaface``, weights needed) and dlib's ResNet descriptor
  (``--extractor dlib``) replaces CVLFace AdaFace (``--extractor adaface``, weights needed); the Q-Align quality
  filter has no offline counterpart, so there is none unless ``--scorer`` is given;
* the pairing threshold is the identity model's own (``--similarity`` overrides it): the paper's 0.65 with CVLFace,
  0.91 with dlib (dlib's euclidean distance 0.6, converted to the cosine of normalised descriptors; at 0.65 two
  different people pair up under dlib). The model and the threshold are written in the manifests and the report.

The input is a folder of photos, or a folder of webdataset ``.tar`` shards as img2dataset writes them (found when the
folder holds ``.tar`` files; ``--input`` says it explicitly). Shards are read as streams, samples whose metadata
(``width``, ``height``) fails the size or aspect filter are rejected before decoding, and the records are written
per shard to ``OUT/records/<shard>.jsonl`` (resumed per shard). ``--engine ray`` scans shards on Ray Data: a local
Ray by default, a cluster with ``--address``; ``--gpus detect=1 embed=1`` puts those stages on GPU workers. Pairs
are searched with faiss when it is installed (exact ``IndexFlatIP`` up to ``--exact-max-faces``, ``IndexIVFFlat``
above, with its recall measured and reported), else with the exact blockwise comparison (``--pairing``).

A photo that cannot be read (corrupt, truncated, or a header claiming more than ``--max-pixels``: a decompression
bomb is refused before decoding) is reported in one line and the build goes on. The tool ends with a summary and
exits with status 1 when some photos could not be read (photos merely filtered out do not count), 2 on a usage
error.
"""
import argparse
import importlib.util
import os.path as osp
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.datasets.builder import (PairConfig, ScanConfig, WorkerStartError, build_manifests,  # noqa: E402
                                          read_records, scan_images, write_report)
from portraitisr.datasets.builder.pairs import PairFinder  # noqa: E402
from portraitisr.datasets.builder.stages import PHOTOS_DIR, STEPS  # noqa: E402
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


def _stage_values(kind: type):
    def parse(text: str) -> tuple:
        name, _, value = text.partition('=')
        if name not in STEPS or not value:
            raise argparse.ArgumentTypeError(f'expected STAGE=VALUE with a stage of {", ".join(STEPS)}, got {text!r}')
        return name, kind(value)
    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('photos', metavar='INPUT',
                        help='folder of photos (searched recursively; links to folders are followed), or of '
                             'webdataset .tar shards (img2dataset output)')
    parser.add_argument('out', help='output folder: records, face crops, embeddings, manifests, report')
    parser.add_argument('--input', choices=('auto', 'photos', 'shards'), default='auto',
                        help='what INPUT holds (auto: shards when it holds .tar files)')
    parser.add_argument('--workers', type=int, default=1,
                        help='scanning processes (local engine), or workers per stage (ray engine)')
    web = parser.add_argument_group('web scale (shards: pip install -e ".[webscale]")')
    web.add_argument('--engine', choices=('local', 'ray'), default='local',
                     help='scan shards on this machine, or on Ray Data (needs shards)')
    web.add_argument('--address', help='Ray cluster to join (e.g. auto, ray://head:10001); default: a local Ray')
    web.add_argument('--gpus', type=_stage_values(float), action='append', default=[], metavar='STAGE=N',
                     help='GPUs per worker of a stage, e.g. detect=1 embed=1 (repeat the option)')
    web.add_argument('--cpus', type=_stage_values(float), action='append', default=[], metavar='STAGE=N',
                     help='CPUs per worker of a stage (default: one CPU per worker, shared by the stages)')
    web.add_argument('--stage-workers', type=_stage_values(int), action='append', default=[], metavar='STAGE=N',
                     help='workers of one stage (default --workers)')
    web.add_argument('--batch-size', type=_stage_values(int), action='append', default=[], metavar='STAGE=N',
                     help='photos per batch of a stage (default 1, embed 16)')
    web.add_argument('--ray-cpus', type=int, help='CPUs of a local Ray (default: all)')
    web.add_argument('--object-store-mb', type=int, help="object store of a local Ray (default: Ray's)")
    web.add_argument('--pairing', choices=('auto', 'exact', 'faiss'), default='auto',
                     help='pair search: faiss (exact flat index, IVF above --exact-max-faces, recall measured), '
                          'exact (blockwise all pairs), auto: faiss when installed')
    web.add_argument('--exact-max-faces', type=int, default=50_000, help='faiss: exact flat index up to here')
    web.add_argument('--nlist', type=int, help='faiss IVF cells (default 4 sqrt(faces))')
    web.add_argument('--nprobe', type=int, default=32, help='faiss IVF cells searched per face')
    web.add_argument('--index-shard-faces', type=int,
                     help='faiss: faces per index shard, searched in turn (an index too large for memory)')
    web.add_argument('--recall-sample', type=int, default=1000,
                     help='faiss IVF: faces searched exactly as well, to measure the recall')
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
    return parser.parse_args(argv)


def _one_line_warnings() -> None:
    """Builder warnings (links, changed or deleted photos) as one plain line each on stderr, every time."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f'warning: {message}', file=sys.stderr if file is None else file)

    warnings.showwarning = show
    warnings.simplefilter('always')
    # Ray's own deprecation notices (its settings renamed between releases) are not about the build
    warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'ray(\.|$)')


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


def _is_shards(args: argparse.Namespace) -> bool:
    if args.input != 'auto':
        return args.input == 'shards'
    source = Path(args.photos)
    return source.suffix == '.tar' or (source.is_dir() and next(source.rglob('*.tar'), None) is not None)


def _scan_shards(args: argparse.Namespace, config: ScanConfig) -> Tuple[List[Path], list]:
    """Stage 1 on shards (web-scale modules: imported only here, so the photo-folder path needs none of them)."""
    from portraitisr.datasets.builder.shards import read_shard_stats, scan_shards

    if args.engine == 'ray':
        from portraitisr.datasets.builder.ray_scan import RayScanOptions, StageResources, scan_shards_ray

        stages = {}
        for option, key in ((args.gpus, 'num_gpus'), (args.cpus, 'num_cpus'), (args.stage_workers, 'workers'),
                            (args.batch_size, 'batch_size')):
            for name, value in option:
                setattr(stages.setdefault(name, StageResources()), key, value)
        options = RayScanOptions(address=args.address, workers=args.workers, stages=stages, num_cpus=args.ray_cpus,
                                 object_store_memory=args.object_store_mb and args.object_store_mb * 2**20)
        paths = scan_shards_ray(args.photos, args.out, config, options, limit=args.limit)
    else:
        paths = scan_shards(args.photos, args.out, config, workers=args.workers, limit=args.limit)
    return paths, read_shard_stats(args.out)


def _pair_finder(args: argparse.Namespace, pair_config: PairConfig) -> Optional[PairFinder]:
    """faiss when asked or (auto) installed; None: the exact blockwise default."""
    if args.pairing == 'exact' or (args.pairing == 'auto' and importlib.util.find_spec('faiss') is None):
        return None
    from portraitisr.datasets.builder.ann import AnnConfig, faiss_pair_finder

    return faiss_pair_finder(AnnConfig(exact_max_faces=args.exact_max_faces, nlist=args.nlist, nprobe=args.nprobe,
                                       shard_faces=args.index_shard_faces, recall_sample=args.recall_sample,
                                       seed=args.seed))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    _one_line_warnings()
    if args.max_pixels is not None and args.max_pixels < 0:
        print('error: --max-pixels must be 0 (no limit) or a positive number of pixels', file=sys.stderr)
        return 2
    shards = _is_shards(args)
    if (args.engine == 'ray' or args.address) and not shards:
        print('error: the Ray engine scans webdataset shards; make them from a photo folder with '
              'tools/make_webdataset_shards.py, or use the local engine', file=sys.stderr)
        return 2
    shard_stats: list = []
    try:
        scan_config = ScanConfig(min_long_side=args.min_long_side, min_short_side=args.min_short_side,
                                 aspect_range=tuple(args.aspect),
                                 scorer=SCORERS[args.scorer] if args.scorer else None,
                                 score_threshold=args.score_threshold, detector=DETECTORS[args.detector],
                                 min_eye_distance=args.min_eye_distance, extractor=EXTRACTORS[args.extractor],
                                 max_pixels=args.max_pixels)
        pair_config = PairConfig(similarity_threshold=args.similarity, test_ratio=args.test_ratio, seed=args.seed)
        start = time.perf_counter()
        if shards:
            records_path, shard_stats = _scan_shards(args, scan_config)
            photo_root = osp.join(args.out, PHOTOS_DIR)  # the kept photos, copied out of the shards
        else:
            records_path = scan_images(args.photos, args.out, scan_config, workers=args.workers,
                                       progress=not args.no_progress, limit=args.limit)
            photo_root = args.photos
        scan_seconds = time.perf_counter() - start
        summary = build_manifests(args.out, photo_root, records_path, pair_config, _pair_finder(args, pair_config))
    except ImportError as error:  # the web-scale packages are an extra
        print(f'error: {error} (the web-scale builder needs: pip install -e ".[webscale]")', file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, WorkerStartError) as error:  # expected: bad folders, settings, models
        print(f'error: {error}', file=sys.stderr)
        return 2
    records = read_records(records_path) if not shards else _merged(records_path)
    report = write_report(args.out, records, summary, shard_stats or None, scan_seconds)
    print(Path(report['text']).read_text(encoding='utf-8'))
    print(f'manifests: {osp.join(args.out, "train.jsonl")}, {osp.join(args.out, "test.jsonl")}; plot: {report["png"]}')
    return _summary(records, args.out)


def _merged(paths: Sequence[Path]) -> dict:
    """The records of all shards as one ``{image: record}``."""
    records: dict = {}
    for path in paths:
        records.update(read_records(path))
    return records


if __name__ == '__main__':
    sys.exit(main())
