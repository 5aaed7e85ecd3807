"""The Ray Data scan writes what the single-machine scan writes, on shards made from the sample photos and a generated
4K portrait, even when a Ray worker is killed mid-run, and when the driver is killed (SIGKILL) and run again.

Ray is kept small (2 CPUs, a 256 MB object store, no dashboard) and shut down by each test; every test starts a
local Ray (about 10 s) and scans nine photos, so all are marked slow."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.data_files import REPO_ROOT

ray = pytest.importorskip('ray', reason='ray is missing: pip install -e ".[webscale]"')
pytest.importorskip('webdataset', reason='webdataset is missing: pip install -e ".[webscale]"')
pytest.importorskip('faiss', reason='faiss is missing: pip install -e ".[webscale]"')
pytest.importorskip('skimage', reason='skimage is missing: pip install -e ".[samples]"')
psutil = pytest.importorskip('psutil', reason='psutil is missing: pip install -e ".[dev]"')

from portraitisr.datasets.builder import PairConfig, build_manifests  # noqa: E402
from portraitisr.datasets.builder.ann import faiss_pair_finder  # noqa: E402
from portraitisr.datasets.builder.ray_scan import RayScanOptions, scan_shards_ray  # noqa: E402
from portraitisr.datasets.builder.shards import read_shard_stats, scan_shards  # noqa: E402

from tests.helpers.webscale_faults import config  # noqa: E402
from tests.test_tools.test_build_portrait_dataset import _photo_folder  # noqa: E402

pytestmark = pytest.mark.slow

#: hopper.png (819 x 960, shard 00001) kills its Ray worker once; people/astronaut_crop.png (968 x 968, the last
#: shard) stalls the scan so that the driver is surely killed in the middle
KILL_SIZE, STALL_SIZE = '819x960', '968x968'
HELPER = REPO_ROOT / 'tests' / 'helpers' / 'webscale_faults.py'


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """Nine photos in three shards: the sample photos (astronaut, Grace Hopper, camera; scaled, flipped, cropped),
    one too small, one corrupt, and one generated 3840 x 2880 portrait (tools/benchmarks/portrait_builder.py)."""
    import importlib.util

    root = tmp_path_factory.mktemp('webscale')
    photos = _photo_folder(root)
    spec = importlib.util.spec_from_file_location('make_webdataset_shards',
                                                  REPO_ROOT / 'tools' / 'make_webdataset_shards.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(photos), str(root / 'shards'), '--generate', '1', '--samples-per-shard', '3']) == 0
    return root / 'shards'


@pytest.fixture(scope='module')
def reference(shards, tmp_path_factory):
    """The single-machine scan of the shards and its manifests (exact blockwise pairing)."""
    out = tmp_path_factory.mktemp('reference') / 'out'
    paths = scan_shards(shards, out, config())
    build_manifests(out, out / 'images', paths, PairConfig(test_ratio=0.0))
    return out


def _files(out: Path, folder: str) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / folder).rglob('*')) if p.is_file()}


def assert_same_output(out: Path, reference: Path) -> None:
    """Byte-identical records (per shard), crops, embeddings, kept photos and manifests."""
    records = _files(out, 'records')
    assert {k: v for k, v in records.items() if k.endswith('.jsonl')} == {
        k: v for k, v in _files(reference, 'records').items() if k.endswith('.jsonl')}
    for folder in ('faces', 'embeddings', 'images'):
        assert _files(out, folder) == _files(reference, folder), folder
    build_manifests(out, out / 'images', sorted((out / 'records').glob('*.jsonl')), PairConfig(test_ratio=0.0),
                    faiss_pair_finder())
    for name in ('train.jsonl', 'test.jsonl'):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_reference_scan_finds_the_people(reference):
    lines = (reference / 'train.jsonl').read_text().splitlines()[1:]
    kept = {json.loads(line)['image'] for line in lines}
    assert len(kept) == 6  # five sample portraits and the generated one; camera, small and corrupt are not kept
    records = [json.loads(line) for p in sorted((reference / 'records').glob('*.jsonl'))
               for line in p.read_text().splitlines()]
    reasons = sorted((r['status'], (r['reason'] or '').split(':')[0]) for r in records if r['status'] != 'ok')
    assert reasons == [('error', 'unreadable'), ('rejected', 'no_face'), ('rejected', 'too_small')]
    assert all(r['score'] == 1.0 for r in records if r['status'] == 'ok')


def test_ray_scan_equals_the_single_machine_scan_after_a_worker_is_killed(shards, reference, tmp_path):
    marker = tmp_path / 'killed'
    env = dict(PYTHONPATH=str(REPO_ROOT), WEBSCALE_KILL_SIZE=KILL_SIZE, WEBSCALE_KILL_MARKER=str(marker))
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env=dict(env_vars=env))
    try:
        out = tmp_path / 'out'
        scan_shards_ray(shards, out, config(), RayScanOptions(workers=1, fallback=False))
    finally:
        ray.shutdown()
    assert marker.is_file()  # the scorer's worker was killed (SIGKILL) on hopper.png; Ray restarted it
    assert [s['engine'] for s in read_shard_stats(out)] == ['ray'] * 3
    assert_same_output(out, reference)


def test_a_photo_that_always_kills_its_worker_costs_one_record(shards, reference, tmp_path):
    """Ray gives up on hopper.png (every worker that scores it dies); its shard is scanned on this machine in a
    worker process, where only hopper.png gets a `crashed` record."""
    env = dict(PYTHONPATH=str(REPO_ROOT), WEBSCALE_KILL_SIZE=KILL_SIZE)
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env=dict(env_vars=env))
    os.environ['WEBSCALE_KILL_SIZE'] = KILL_SIZE  # the local fallback's worker process inherits it
    try:
        out = tmp_path / 'out'
        scan_shards_ray([shards / '00001.tar'], out, config(), RayScanOptions(workers=1, retries=0))
    finally:
        del os.environ['WEBSCALE_KILL_SIZE']
        ray.shutdown()
    assert [(s['shard'], s['engine']) for s in read_shard_stats(out)] == [('00001', 'local')]
    records = {json.loads(line)['image']: json.loads(line)
               for line in (out / 'records' / '00001.jsonl').read_text().splitlines()}
    expected = {json.loads(line)['image']: json.loads(line)
                for line in (reference / 'records' / '00001.jsonl').read_text().splitlines()}
    hopper = '00001/000011.png'
    assert records[hopper]['status'] == 'error' and records[hopper]['reason'].startswith('crashed: ')
    assert {k: v for k, v in records.items() if k != hopper} == {k: v for k, v in expected.items() if k != hopper}


def _run_driver(shards: Path, out: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), 'ray', str(shards), str(out)], cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_killed_driver_resumes_per_shard_to_the_same_output(shards, reference, tmp_path):
    out = tmp_path / 'out'
    driver = _run_driver(shards, out, WEBSCALE_STALL_SIZE=STALL_SIZE, WEBSCALE_STALL_SECONDS='600')
    first = out / 'records' / '00000.done.json'
    try:
        deadline = time.monotonic() + 400
        while not first.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.exists(), driver.stderr.read() if driver.poll() is not None else 'timed out'
        time.sleep(1.0)
    finally:
        # the driver and the local Ray it started (its process group): killed, as a crash or the OOM killer would
        family = [driver.pid] + [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        for pid in family[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    done = [s['shard'] for s in read_shard_stats(out)]
    assert '00000' in done and '00002' not in done  # killed in the middle: the last shard was stalled
    before = {name: (out / 'records' / f'{name}.done.json').read_bytes() for name in done}
    rerun = _run_driver(shards, out)
    try:
        _, stderr = rerun.communicate(timeout=540)
    finally:
        if rerun.poll() is None:
            os.killpg(rerun.pid, signal.SIGKILL)
    assert rerun.returncode == 0, stderr[-3000:]
    assert [s['shard'] for s in read_shard_stats(out)] == ['00000', '00001', '00002']
    for name, data in before.items():  # the shards finished before the kill were not scanned again
        assert (out / 'records' / f'{name}.done.json').read_bytes() == data
    assert_same_output(out, reference)
