"""Throughput of the web-scale builder: the Ray scan with 1 and 2 workers, and faiss pairing from 10^4 to 10^6 faces.

Scan: generated 3840 x 2880 portraits (tools/benchmarks/portrait_builder.py: one or two real faces each) are put in
img2dataset-layout shards (tools/make_webdataset_shards.py) and scanned by ``scan_shards_ray`` on a local Ray
(``--ray-cpus``, default 2) with each worker count, with the paper's thresholds (3840 x 2160, 64 px eyes) and the
offline models (dlib HOG, dlib ResNet). Ray starts before the clock; the models load inside it (each worker loads
its own). It reports photos per second, the ratio to one worker, and each step's photos per second per worker, and
as a baseline the single-machine engine (one worker) on the same shards.

Pairing: synthetic identity embeddings (128-d like dlib's ResNet, about 4 faces per person; same-person similarity
0.92-0.99, others 0.75 +- 0.03, so the threshold 0.91 of ``DlibResNet`` separates them as it does real faces) are
paired at 0.91 by ``ann_pairs`` (faiss: exact ``IndexFlatIP`` up to 50 000 faces, ``IndexIVFFlat`` above) and, up
to ``--exact-max``, by the exact blockwise ``find_pairs``. Each size runs in its own process, so its peak resident
memory (``ru_maxrss``) is its own. The IVF recall is measured against exact search on 1000 sampled faces.

    python tools/benchmarks/webscale_builder.py                         # scan: 24 photos; pairing: 1e4, 1e5, 1e6
    python tools/benchmarks/webscale_builder.py --skip-scan --sizes 10000 30000 100000 1000000 --nprobe 8
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))  # make_webdataset_shards
sys.path.insert(0, HERE)  # portrait_builder

#: DlibResNet.verification_threshold (the offline identity model's, see portraitisr/face/identity/dlib_resnet.py)
THRESHOLD = 0.91
DIM = 128


def synthetic_embeddings(count: int, seed: int = 0):
    """``count`` unit 128-d embeddings of ``count / 4`` people and their image ids (one face per image).

    ``v = a u + b_person + n``: a shared direction ``u`` (dlib's descriptors all lie in a narrow cone, ``a^2 = 3.75``),
    a person vector ``b`` (norm about 1) and noise of norm 0.3-0.6 per face: same-person similarity about 0.92-0.99,
    different people 0.75 +- 0.03 (our synthetic model, calibrated to sit on both sides of 0.91).
    """
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(DIM)
    shared /= np.linalg.norm(shared)
    people = max(1, count // 4)
    bases = (rng.standard_normal((people, DIM)) / np.sqrt(DIM)).astype(np.float32)
    labels = rng.integers(0, people, count)
    out = np.empty((count, DIM), np.float32)
    for c0 in range(0, count, 100_000):
        c1 = min(c0 + 100_000, count)
        noise = rng.standard_normal((c1 - c0, DIM)).astype(np.float32) / np.sqrt(DIM)
        scale = rng.uniform(0.3, 0.6, (c1 - c0, 1)).astype(np.float32)
        block = np.sqrt(3.75) * shared[None].astype(np.float32) + bases[labels[c0:c1]] + scale * noise
        out[c0:c1] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, np.arange(count), labels


def pairing_one(size: int, method: str, nprobe: int) -> dict:
    """Pair ``size`` synthetic faces with ``method`` ('faiss' or 'exact') in this process; time and peak memory."""
    vectors, images, labels = synthetic_embeddings(size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == 'exact':
        from portraitisr.datasets.builder.pairs import find_pairs

        pairs, info = find_pairs(vectors, images, THRESHOLD), dict(method='exact (blockwise)', recall=1.0)
    else:
        from portraitisr.datasets.builder.ann import AnnConfig, ann_pairs

        pairs, info = ann_pairs(vectors, images, THRESHOLD, AnnConfig(nprobe=nprobe))
    seconds = time.perf_counter() - start
    same = sum(labels[i] == labels[j] for i, j, _ in pairs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(size=size, method=info['method'], seconds=round(seconds, 2), pairs=len(pairs), same_person=int(same),
                recall=info.get('recall'), recall_pairs=info.get('recall_pairs'), nlist=info.get('nlist'),
                nprobe=info.get('nprobe'), peak_mib=round(peak / 1024), data_mib=round(base_rss / 1024))


def run_pairing(sizes, exact_max: int, nprobe: int) -> list:
    results = []
    for size in sizes:
        for method in (['exact'] if size <= exact_max else []) + ['faiss']:
            output = subprocess.run([sys.executable, __file__, '--pairing-one', str(size), method, str(nprobe)],
                                    capture_output=True, text=True, check=True)
            result = json.loads(output.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f'{result["size"]:>9}  {result["method"]:<28}  {result["seconds"]:>9.2f}  {result["pairs"]:>9}  '
                  f'{str(result["recall"]):>8}  {result["peak_mib"]:>9}  {result["data_mib"]:>9}', flush=True)
    return results


def run_scan(images: int, workers_list, ray_cpus: int, per_shard: int, work_dir: Path) -> list:
    import ray

    from make_webdataset_shards import write_shards
    from portrait_builder import generate

    from portraitisr.datasets.builder import ScanConfig
    from portraitisr.datasets.builder.ray_scan import RayScanOptions, scan_shards_ray
    from portraitisr.datasets.builder.shards import read_shard_stats, scan_shards

    photos = work_dir / 'photos'
    if len(list(photos.glob('*.jpg'))) < images:
        generate(photos, images)
    shards = work_dir / 'shards'
    shutil.rmtree(shards, ignore_errors=True)
    write_shards([(str(p), p.name) for p in sorted(photos.glob('*.jpg'))[:images]], shards, per_shard)
    ray.init(num_cpus=ray_cpus, object_store_memory=1024 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env=dict(env_vars=dict(PYTHONPATH=ROOT)))
    results = []
    out = work_dir / 'out_local'  # the baseline: the single-machine engine, one worker, on the same shards
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    scan_shards(shards, out, ScanConfig())
    seconds = time.perf_counter() - start
    local = dict(workers=1, engine='local', photos=images, seconds=round(seconds, 1),
                 photos_per_s=round(images / seconds, 3))
    try:
        for workers in workers_list:
            out = work_dir / f'out_ray_w{workers}'
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            scan_shards_ray(shards, out, ScanConfig(), RayScanOptions(workers=workers))
            seconds = time.perf_counter() - start
            stats = read_shard_stats(out)
            steps = {}
            for step in ('decode', 'detect', 'align', 'embed'):
                photos_done = sum(s['step_photos'].get(step, 0) for s in stats)
                busy = sum(s['step_seconds'].get(step, 0.0) for s in stats)
                steps[step] = round(photos_done / busy, 2) if busy else None
            results.append(dict(workers=workers, engine='ray', photos=images, seconds=round(seconds, 1),
                                photos_per_s=round(images / seconds, 3), steps=steps))
    finally:
        ray.shutdown()
    base = results[0]['photos_per_s']
    for result in results:
        result['ratio'] = round(result['photos_per_s'] / base, 2)
        print(f'{"ray":>6}  {result["workers"]:>7}  {result["photos_per_s"]:>9.3f}  {result["ratio"]:>5.2f}  '
              f'{result["seconds"]:>7.1f}  {json.dumps(result["steps"])}', flush=True)
    print(f'{"local":>6}  {1:>7}  {local["photos_per_s"]:>9.3f}  {"":>5}  {local["seconds"]:>7.1f}', flush=True)
    return results + [local]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=24, help='generated 4K photos scanned')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--ray-cpus', type=int, default=2)
    parser.add_argument('--per-shard', type=int, default=4, help='photos per shard')
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000, 1_000_000])
    parser.add_argument('--exact-max', type=int, default=30_000, help='largest size also paired exactly')
    parser.add_argument('--nprobe', type=int, default=32, help='IVF cells searched per face')
    parser.add_argument('--skip-scan', action='store_true')
    parser.add_argument('--skip-pairing', action='store_true')
    parser.add_argument('--work-dir', help='keep photos, shards and outputs here (default: a temporary folder)')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--pairing-one', nargs=3, metavar=('SIZE', 'METHOD', 'NPROBE'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairing_one:
        print(json.dumps(pairing_one(int(args.pairing_one[0]), args.pairing_one[1], int(args.pairing_one[2]))))
        return
    results = {}
    if not args.skip_scan:
        root = Path(args.work_dir or tempfile.mkdtemp(prefix='webscale_bench_'))
        print(f'scan: {args.images} photos of 3840x2880 on a local Ray with {args.ray_cpus} CPUs')
        print(f'{"engine":>6}  {"workers":>7}  {"photos/s":>9}  {"ratio":>5}  {"seconds":>7}  photos/s per worker of '
              'each step')
        results['scan'] = run_scan(args.images, args.workers, args.ray_cpus, args.per_shard, root)
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    if not args.skip_pairing:
        print(f'pairing at {THRESHOLD} (DlibResNet), synthetic 128-d embeddings, 4 faces per person, IVF nprobe '
              f'{args.nprobe}')
        print(f'{"faces":>9}  {"method":<28}  {"seconds":>9}  {"pairs":>9}  {"recall":>8}  {"peak MiB":>9}  '
              f'{"data MiB":>9}')
        results['pairing'] = run_pairing(args.sizes, args.exact_max, args.nprobe)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + '\n', encoding='utf-8')


if __name__ == '__main__':
    main()
