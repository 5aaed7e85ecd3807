"""Stage 1 on a Ray cluster (Ray Data): the scan of webdataset shards as batched map stages, CPU or GPU per stage.

The pipeline, one Ray Data operator per step of :mod:`.stages`::

    shards -> read (tasks: stream each tar, metadata pre-filter)
           -> decode (header, pixel limit, size filter, decode)  -> score (optional, IMAGE_SCORERS)
           -> detect (FACE_DETECTORS, eye-distance filter)      -> align (crops written)
           -> embed (IDENTITY_EXTRACTORS, embeddings written)    -> the driver writes the records of each shard

The steps that hold a model (score, detect, embed) run in pools of long-lived actors, so each model is loaded once
per worker; read, decode and align are tasks. Each stage is its own operator with its own resources (a GPU for the
detector or the identity model, CPUs for the rest), so a photo crosses the object store between stages: as 8- or
16-bit integers (:func:`~.stages.to_integers`, exact; 33 MB for a 3840 x 2880 photo), and its faces as their
full-precision detections. Every stage thus computes what the single-machine scan computes, and the records are the
same (the test suite checks it, byte for byte).

The driver collects the records of each shard and writes them when the shard is complete (``shards.py``), so a
scan is resumable per shard: a killed driver loses only the shards in flight, and a rerun skips the finished ones. A
killed worker is restarted by Ray and its batch retried (``retries`` times). When Ray gives up (a photo that kills
its worker every time, e.g. for memory), the shards still in flight are scanned by the single-machine engine, which
isolates the guilty photo (a ``crashed`` record) and scans the others.

``ray`` is imported here, at the top: this module is imported only by the web-scale entry points, and
``portraitisr.datasets.builder`` imports without it.
"""
import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import ray
import ray.data
from mmengine.logging import print_log

import portraitisr
from portraitisr.registry import IDENTITY_EXTRACTORS

from .scan import ScanConfig, fail, new_record
from .shards import (STEPS, Shard, ShardResult, add_timings, log_shard, prepare_scan, read_shard, scan_shards,
                     shard_records_paths, write_shard)
from .stages import (AlignStep, DetectStep, EmbedStep, ScoreStep, check_header, decode, detections_from_state,
                     detections_to_state, identity_size_of, to_floats, to_integers, write_bytes_atomic)

PathLike = Union[str, os.PathLike]

__all__ = ['StageResources', 'RayScanOptions', 'scan_shards_ray', 'MODEL_STAGES']

#: the steps that hold a model, each in its own actor pool
MODEL_STAGES = ('score', 'detect', 'embed')
COLUMNS = ('shard', 'image', 'state', 'data', 'pixels', 'crops')


@dataclass
class StageResources:
    """Resources of one stage's workers (Ray's logical resources: they decide placement, not speed).

    Attributes:
        num_cpus: CPUs per worker of the stage; None: an equal share of one CPU per model stage (see
            :class:`RayScanOptions`).
        num_gpus: GPUs per worker (e.g. 1 for the detector or the identity model on a GPU node).
        workers: workers of the stage (actors, or concurrent tasks); None: ``RayScanOptions.workers``.
        batch_size: photos per batch; None: 1, and 16 for ``embed`` (the small identity crops of 16 photos in one
            call of the model).
    """

    num_cpus: Optional[float] = None
    num_gpus: float = 0.0
    workers: Optional[int] = None
    batch_size: Optional[int] = None


#: our defaults: read streams tar members (I/O), so it reserves no CPU and never waits behind the model stages for a
#: slot; embed batches the small identity crops of several photos (one model call, a GPU batch)
_DEFAULT_NUM_CPUS = dict(read=0.0)
_DEFAULT_BATCH_SIZE = dict(embed=16)


@dataclass
class RayScanOptions:
    """How the scan runs on Ray.

    Attributes:
        address: a running cluster (``ray://host:10001`` or ``auto``); None starts Ray on this machine.
        workers: the default number of workers of every stage (actors of a model stage, concurrent tasks of the
            others): ``workers`` photos in flight per stage. With the default CPU shares, one worker of each stage
            together reserve one CPU (a quarter each, a fifth with a scorer), so on a cluster give as many workers
            as the CPUs to use (or set ``num_gpus`` on the model stages of GPU nodes).
        stages: per-stage overrides (keys from :data:`~.shards.STEPS`), e.g.
            ``{'detect': StageResources(num_gpus=1), 'embed': StageResources(num_gpus=1, batch_size=64)}``.
        num_cpus: CPUs of a local Ray (None: all of this machine's).
        object_store_memory: bytes of a local Ray's object store (None: Ray's default, 30% of the memory).
        retries: times a failed task is retried, or a dead actor restarted, before Ray gives up (then the shards in
            flight are scanned on this machine, see the module doc).
        fallback: scan the shards Ray gave up on with the single-machine engine (else raise).
    """

    address: Optional[str] = None
    workers: int = 1
    stages: Dict[str, StageResources] = field(default_factory=dict)
    num_cpus: Optional[int] = None
    object_store_memory: Optional[int] = None
    retries: int = 3
    fallback: bool = True

    def stage(self, name: str, with_score: bool) -> StageResources:
        """The resolved resources of one stage (every field set)."""
        resources = replace(self.stages.get(name) or StageResources())
        if resources.num_cpus is None:
            # one CPU per worker, shared by the stages that reserve one (all but read): an actor pool keeps its
            # reservation, so more than one CPU per worker would leave the task stages waiting for a free slot
            cpu_stages = len(STEPS) - 1 - (not with_score)
            resources.num_cpus = _DEFAULT_NUM_CPUS.get(name, round(1.0 / cpu_stages, 4))
        if resources.workers is None:
            resources.workers = self.workers
        if resources.batch_size is None:
            resources.batch_size = _DEFAULT_BATCH_SIZE.get(name, 1)
        return resources


# ---------------------------------------------------------------------------------------------------- rows
def _pack(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (shape and dtype included; nothing pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _row(shard: str, image: str, state: dict, data: bytes = b'') -> dict:
    return dict(shard=shard, image=image, state=json.dumps(state), data=data, pixels=b'', crops=b'')


def _rows(batch: Dict[str, np.ndarray]) -> List[dict]:
    count = len(batch['state'])
    return [{column: batch[column][n] for column in COLUMNS} for n in range(count)]


def _batch(rows: List[dict]) -> Dict[str, np.ndarray]:
    out = {}
    for column in COLUMNS:
        values = np.empty(len(rows), dtype=object)
        values[:] = [bytes(row[column]) if column in ('data', 'pixels', 'crops') else str(row[column])
                     for row in rows]
        out[column] = values
    return out


def _in_progress(state: dict) -> bool:
    return '_end' not in state and state.get('status') == 'ok'


def read_rows(shard_row: Dict[str, Any], config: ScanConfig) -> Iterator[dict]:
    """The ``read`` stage: one row per sample of a shard, then one end row (``_end``) with the shard's count."""
    shard = Shard(**json.loads(shard_row['shard']))
    items = read_shard(shard, config)
    while True:
        start = time.perf_counter()
        kind, item = next(items)
        seconds = time.perf_counter() - start
        if kind == 'end':
            yield _row(shard.name, '', dict(_end=item))
            return
        if kind == 'record':
            item['_timings'] = dict(read=seconds)
            yield _row(shard.name, item['image'], item)
            continue
        record = new_record(item.image)
        record.update(file_size=len(item.data), file_mtime_ns=item.file_mtime_ns, _keep_as=item.keep_as,
                      _timings=dict(read=seconds))
        yield _row(shard.name, item.image, record, item.data)


class _Stage:
    """A batched map stage: runs :meth:`process` on each row still in progress, times it, turns its exceptions
    into ``error`` records and drops the pixels of a photo once it is decided."""

    step = ''

    def __init__(self, config_dict: dict, out_dir: str, threads: int, identity_size: int = 0) -> None:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.config = ScanConfig(**config_dict)
        self.out_dir = Path(out_dir)
        self.identity_size = identity_size
        self.setup()

    def setup(self) -> None:
        """Build the stage's model."""

    def wants(self, row: dict, state: dict) -> bool:
        return _in_progress(state)

    def process(self, row: dict, state: dict) -> None:
        raise TypeError(f'{type(self).__name__} is not a stage')

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rows = _rows(batch)
        for row in rows:
            state = json.loads(row['state'])
            if not self.wants(row, state):
                continue
            start = time.perf_counter()
            try:
                self.process(row, state)
            except Exception as error:  # noqa: BLE001 - one bad photo never stops a scan
                fail(state, error)
            timings = state.setdefault('_timings', {})
            timings[self.step] = timings.get(self.step, 0.0) + time.perf_counter() - start
            self.finish(row, state)
        return _batch(rows)

    @staticmethod
    def finish(row: dict, state: dict) -> None:
        if state.get('status') != 'ok':  # decided: nothing more to carry
            row['data'] = row['pixels'] = row['crops'] = b''
            state.pop('_dets', None)
        row['state'] = json.dumps(state)

    @staticmethod
    def rgb(row: dict) -> np.ndarray:
        return to_floats(_unpack(row['pixels']))


class DecodeStage(_Stage):
    step = 'decode'

    def wants(self, row: dict, state: dict) -> bool:
        return _in_progress(state) and bool(row['data']) and not row['pixels']

    def process(self, row: dict, state: dict) -> None:
        data, name = bytes(row['data']), state['image']
        if not check_header(state, data, name, self.config):
            return
        decoded = decode(state, data, name, self.config)
        if decoded is not None:
            row['pixels'] = _pack(to_integers(*decoded))


class ScoreStage(_Stage):
    step = 'score'

    def setup(self) -> None:
        self.score = ScoreStep(self.config)

    def wants(self, row: dict, state: dict) -> bool:
        return _in_progress(state) and bool(row['pixels'])

    def process(self, row: dict, state: dict) -> None:
        self.score(state, self.rgb(row))


class DetectStage(_Stage):
    step = 'detect'

    def setup(self) -> None:
        self.detect = DetectStep(self.config)

    def wants(self, row: dict, state: dict) -> bool:
        return _in_progress(state) and bool(row['pixels'])

    def process(self, row: dict, state: dict) -> None:
        dets = self.detect(state, self.rgb(row))
        if dets is not None:
            state['_dets'] = detections_to_state(dets)


class AlignStage(_Stage):
    step = 'align'

    def setup(self) -> None:
        self.align = AlignStep(self.config, self.out_dir, self.identity_size)

    def wants(self, row: dict, state: dict) -> bool:
        return _in_progress(state) and '_dets' in state and bool(row['pixels'])

    def process(self, row: dict, state: dict) -> None:
        crops = self.align(state, self.rgb(row), detections_from_state(state.pop('_dets')))
        row['pixels'] = b''
        if state.get('_keep_as'):
            write_bytes_atomic(self.out_dir / state['_keep_as'], bytes(row['data']), state['file_mtime_ns'])
        row['data'] = b''
        row['crops'] = _pack(crops.numpy())


class EmbedStage(_Stage):
    """The identity model, once per batch on the crops of all its photos (a GPU batch); when that call fails, each
    photo is embedded alone, so only the photo at fault gets an ``error`` record."""

    step = 'embed'

    def setup(self) -> None:
        self.embed = EmbedStep(self.config, self.out_dir)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        rows = _rows(batch)
        states = [json.loads(row['state']) for row in rows]
        todo = [n for n, (row, state) in enumerate(zip(rows, states)) if _in_progress(state) and row['crops']]
        start = time.perf_counter()
        crops = [torch.from_numpy(_unpack(rows[n]['crops'])) for n in todo]
        try:
            embeddings = self.embed.embed_many(crops)
        except Exception:  # noqa: BLE001 - find the photo at fault below
            embeddings = None
        share = (time.perf_counter() - start) / max(len(todo), 1)
        for k, n in enumerate(todo):
            state, start = states[n], time.perf_counter()
            try:
                self.embed.save(state, embeddings[k] if embeddings is not None else self.embed.embed(crops[k]))
            except Exception as error:  # noqa: BLE001 - one bad photo never stops a scan
                fail(state, error)
            timings = state.setdefault('_timings', {})
            timings['embed'] = timings.get('embed', 0.0) + share + time.perf_counter() - start
            rows[n]['crops'] = b''
        for row, state in zip(rows, states):
            self.finish(row, state)
        return _batch(rows)


# ---------------------------------------------------------------------------------------------------- driver
def _threads(resources: StageResources) -> int:
    return max(1, int(round(resources.num_cpus or 1)))


def _map(dataset: 'ray.data.Dataset', stage: type, resources: StageResources, args: tuple,
         retries: int) -> 'ray.data.Dataset':
    is_actor = stage.step in MODEL_STAGES
    kwargs: Dict[str, Any] = dict(batch_size=resources.batch_size, batch_format='numpy', num_cpus=resources.num_cpus,
                                  num_gpus=resources.num_gpus or None, zero_copy_batch=False)
    with _remote_args():
        if is_actor:
            return dataset.map_batches(stage, fn_constructor_args=args, compute=ray.data.ActorPoolStrategy(
                size=resources.workers), max_restarts=retries, max_task_retries=retries, **kwargs)
        return dataset.map_batches(partial(_run_task_stage, stage, args),
                                   compute=ray.data.TaskPoolStrategy(size=resources.workers), max_retries=retries,
                                   **kwargs)


@contextlib.contextmanager
def _remote_args() -> Iterator[None]:
    """Ray 2.60 deprecates ``**ray_remote_args`` (removal in 2.64, hence the extra's bound) but has no named
    parameter for the retries and restarts yet: its warning is silenced where they are set."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='`ray_remote_args', category=DeprecationWarning)
        yield


_TASK_STAGES: Dict[tuple, _Stage] = {}


def _run_task_stage(stage: type, args: tuple, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A task stage: its state (an aligner) is built once per Ray worker process and kept for the next batches."""
    key = (stage.__name__, json.dumps(args, sort_keys=True, default=repr))
    if key not in _TASK_STAGES:
        _TASK_STAGES[key] = stage(*args)
    return _TASK_STAGES[key](batch)


def _runtime_env() -> dict:
    """Local Ray: the workers import this checkout's ``portraitisr`` (a tool run from a clone, not installed)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(portraitisr.__file__)))
    paths = [root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and p != root]
    return dict(env_vars=dict(PYTHONPATH=os.pathsep.join(paths)))


def _identity_size(config: ScanConfig) -> int:
    """The identity crop size (builds the identity model once here: a wrong config or missing weights fail now,
    with their reason, not in every worker)."""
    return identity_size_of(config, IDENTITY_EXTRACTORS.build(dict(config.extractor)))


def build_pipeline(pending: Sequence[Shard], out_dir: Path, config: ScanConfig,
                   options: RayScanOptions) -> 'ray.data.Dataset':
    """The Ray Data pipeline over the pending shards (see the module doc); the driver reads ``shard`` and ``state``
    of its rows (the other columns are empty by then)."""
    with_score = config.scorer is not None
    config_dict = asdict(config)
    identity_size = _identity_size(config)
    read = options.stage('read', with_score)
    items = [dict(shard=json.dumps(asdict(shard))) for shard in pending]
    dataset = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
    with _remote_args():
        dataset = dataset.flat_map(read_rows, fn_kwargs=dict(config=config), num_cpus=read.num_cpus,
                                   compute=ray.data.TaskPoolStrategy(size=read.workers), max_retries=options.retries)
    stages = [('decode', DecodeStage)] + ([('score', ScoreStage)] if with_score else []) + [
        ('detect', DetectStage), ('align', AlignStage), ('embed', EmbedStage)]
    for name, stage in stages:
        resources = options.stage(name, with_score)
        args = (config_dict, str(out_dir), _threads(resources), identity_size)
        dataset = _map(dataset, stage, resources, args, options.retries)
    # no projection operator at the end: Ray would reserve a CPU for it; the driver reads shard and state
    return dataset


class _Collector:
    """The driver's side: gathers each shard's records and writes them once the shard is complete."""

    def __init__(self, out_dir: Path, pending: Sequence[Shard]) -> None:
        self.out_dir = out_dir
        self.shards = {shard.name: shard for shard in pending}
        self.records: Dict[str, Dict[str, dict]] = {name: {} for name in self.shards}
        self.ends: Dict[str, dict] = {}
        self.results = {name: ShardResult(name, shard.file_size, shard.file_mtime_ns, 0, None, 'ray', 0.0, {}, {})
                        for name, shard in self.shards.items()}
        self.start = time.perf_counter()
        self.done: List[str] = []

    def add(self, row: Dict[str, Any]) -> None:
        name, state = str(row['shard']), json.loads(row['state'])
        if name not in self.records:
            return  # a retried task's row of a shard already written
        if '_end' in state:
            self.ends[name] = state['_end']
        else:
            add_timings(self.results[name], state.pop('_timings', {}) or {})
            state.pop('_keep_as', None)
            self.records[name][state['image']] = state  # a retried batch's repeat replaces the first
        end = self.ends.get(name)
        if end is not None and len(self.records[name]) == end['samples']:
            self.write(name)

    def write(self, name: str) -> None:
        result, records = self.results[name], list(self.records.pop(name).values())
        result.samples, result.error = self.ends[name]['samples'], self.ends[name]['error']
        result.wall_seconds = time.perf_counter() - self.start
        write_shard(self.out_dir, self.shards[name], records, result)
        log_shard(result, records)
        self.done.append(name)

    @property
    def unfinished(self) -> List[str]:
        return sorted(self.records)


def scan_shards_ray(shards_source: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                    config: Optional[ScanConfig] = None, options: Optional[RayScanOptions] = None,
                    limit: Optional[int] = None) -> List[Path]:
    """Stage 1 on webdataset shards with Ray Data; the same files as :func:`~.shards.scan_shards`.

    Args:
        shards_source: a folder of ``.tar`` shards or a list of shard files. On a cluster, the shards and
            ``out_dir`` must be on storage every node sees at the same path (a shared file system).
        out_dir: output folder (``scan.json``, ``records/``, ``faces/``, ``embeddings/``, ``images/``).
        config: scan options.
        options: the cluster, workers and per-stage resources.
        limit: scan at most this many pending shards.

    Returns:
        The records files of all finished shards.
    """
    config = config or ScanConfig()
    options = options or RayScanOptions()
    unknown = sorted(set(options.stages) - set(STEPS))
    if unknown:
        raise ValueError(f'unknown stage(s) {unknown}; the stages are {list(STEPS)}')
    out_dir = Path(out_dir).resolve()
    _, pending = prepare_scan(shards_source, out_dir, config, limit)
    if not pending:
        return shard_records_paths(out_dir)
    started = not ray.is_initialized()
    if started:
        if options.address is not None:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=options.num_cpus, object_store_memory=options.object_store_memory,
                     include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env())
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    collector = _Collector(out_dir, pending)
    try:
        for row in build_pipeline(pending, out_dir, config, options).iter_rows():
            collector.add(row)
    except ray.exceptions.RayError as error:
        if not options.fallback:
            raise
        print_log(f'scan: Ray gave up ({type(error).__name__}: {str(error).splitlines()[0]}); scanning the '
                  f'{len(collector.unfinished)} shard(s) in flight on this machine', logger='current', level=30)
    finally:
        if started:
            ray.shutdown()
    if collector.unfinished:  # in worker processes: a photo that kills its worker gets a `crashed` record
        scan_shards(shards_source, out_dir, config, workers=max(options.workers, 1), only=collector.unfinished,
                    isolate=True)
    return shard_records_paths(out_dir)
