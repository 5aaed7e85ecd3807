"""The ``portraitisr`` command: ``restore`` photos, ``train`` a config, print or copy a packaged ``config``,
``download`` model-zoo weights, list ``models``, run a user ``study`` (:mod:`portraitisr.study.cli`).

A thin layer over :class:`~portraitisr.apis.portrait_restorer.PortraitRestorer` and
:mod:`~portraitisr.apis.model_zoo`; see ``docs/command_line.md``. Heavy imports (torch, the models) happen only
in the subcommand that needs them, and ``restore`` checks everything it can before it imports them: the inputs
(their image headers), the output names and folder, the device, the config, the scale and the reference face.
A setup error is one line on stderr and exit status 2 within about a second; 1 means some files failed, 0 that all
were restored.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# Only modules without torch: `portraitisr --help` and the setup checks answer in well under a second; the model
# (torch, diffusers) is imported when one is built.
from portraitisr.apis import model_zoo
from portraitisr.apis.config_location import config_name, config_names, resolve_config, zoo_config_path
from portraitisr.apis.memory_plan import MemoryBudgetError, format_bytes, parse_memory
from portraitisr.study.cli import add_study_subcommands, run as run_study
from portraitisr.utils.image_io import (IMAGE_EXTENSIONS, ImageReadError, check_image_size, list_images,
                                        output_suffix, read_image, read_image_size)
from portraitisr.utils.import_guards import hide_bitsandbytes
from portraitisr.version import __version__
from portraitisr.weights import CheckpointLoadError, ChecksumError, WeightsNotFoundError

__all__ = ['main', 'build_parser', 'add_train_arguments', 'run_train', 'collect_inputs', 'plan_outputs', 'SetupError',
           'RestoreJob']

#: Exit statuses of ``portraitisr restore`` (docs/command_line.md).
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
#: Devices ``--device`` accepts: a type and an optional index.
_DEVICE = re.compile(r'(cpu|cuda|mps|xpu)(?::(\d+))?')


class SetupError(Exception):
    """Something the run cannot start with (a missing input, a bad option, ...): one line, exit status 2."""


def _message(error: BaseException) -> str:
    """An exception's text (a ``KeyError``'s without the quotes ``str`` adds)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _positive(name: str, allow_zero: bool = False):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{name} must be a whole number, got {text!r}') from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f'{name} must be {"0 or more" if allow_zero else "at least 1"}, '
                                             f'got {value}')
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit status 2), not argparse's usage block."""

    def error(self, message: str):
        self.exit(EXIT_SETUP, f'{self.prog}: {message} (see {self.prog} --help)\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='portraitisr', description='Portrait image super-resolution')
    sub = parser.add_subparsers(dest='command', required=True)

    restore = sub.add_parser(
        'restore', help='restore image files and folders',
        epilog='exit status: 0 every image restored, 1 some files failed (each named on one line), 2 nothing '
               'could start (a bad option, a missing input, no model weights, ...)')
    restore.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders of images')
    restore.add_argument('-o', '--output', required=True,
                         help='output folder (not an input folder: inputs are never written)')
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument('--config', help='config of the model: a file, or the name of a packaged config (see '
                                        '`portraitisr config --list`); with --checkpoint for trained weights')
    which.add_argument('--model', help='model-zoo name (see `portraitisr models`); its config is the installed '
                                       'package\'s, never one in the current folder')
    restore.add_argument('--checkpoint', help='training checkpoint of this library for the config / model')
    restore.add_argument('--ref', help='reference face image (aligned, FFHQ template) for HeadsUp')
    restore.add_argument('--identity', help='fitted identity embedding (.safetensors of tools/fit_identity.py) for '
                         'IDFSR, used for every image')
    restore.add_argument('--scale', type=_positive('--scale'),
                         help='output size / input size (default: the model\'s, else 4)')
    restore.add_argument('--tile', type=_positive('--tile', allow_zero=True),
                         help='tile size in output pixels (default: chosen per image from its size, the model and '
                              'the free memory; 0: never tile)')
    restore.add_argument('--max-memory', metavar='SIZE',
                         help='memory budget for one image, e.g. 6G (default: 80%% of the memory free at the start '
                              'of each image; GPU memory on a GPU)')
    restore.add_argument('--max-pixels', type=_positive('--max-pixels', allow_zero=True),
                         help='refuse input images with more pixels than this (default: 134 MP, or '
                              '$PORTRAITISR_MAX_IMAGE_PIXELS; 0: no limit)')
    restore.add_argument('--name-collisions', choices=('refuse', 'suffix'), default='refuse',
                         help='when two inputs would get the same output name (x.bmp and x.png both give x.png, '
                              'or the same name in two folders): refuse (default) or add _2, _3, ... to the later')
    restore.add_argument('--precision', choices=('auto', 'bf16', 'fp32', 'unmerged'), default='auto',
                         help='one-step models: merged-LoRA copy in bf16 (auto on CUDA) or fp32 (auto on CPU), '
                              'or the unmerged training path')
    restore.add_argument('--device', help='cuda, cuda:1, cpu, ... (default: cuda when available)')
    restore.add_argument('--compare', action='store_true',
                         help='also write <name>_compare.png: input (nearest upscaled) | output')
    restore.add_argument('--recursive', action='store_true', help='also take images in sub-folders')
    restore.add_argument('--skip-existing', action='store_true',
                         help='leave images whose output exists (resume an interrupted folder; outputs are written '
                              'atomically, so an existing one is complete)')

    train = sub.add_parser(
        'train', help='train a model from a config file or a packaged config name (what tools/train.py runs)',
        epilog='exit status: 0 trained, 2 nothing could start (an unknown config, a refused checkpoint, ...)')
    add_train_arguments(train)

    config = sub.add_parser('config', help='print a packaged config with its _base_ files merged in, or copy it '
                                           'to a file for editing')
    config.add_argument('name', nargs='?', help='config name: osediff_tiny, osediff/osediff_sd21.py, a model-zoo '
                                                'name, ... (or a config file)')
    config.add_argument('-o', '--out', help='write it to this .py file (a standalone config: no _base_ includes, '
                                            'so it works outside the package) instead of printing it')
    config.add_argument('--force', action='store_true', help='overwrite --out when it exists')
    config.add_argument('--path', action='store_true',
                        help='print only the file the name stands for (the original, with its comments and '
                             '_base_ includes)')
    config.add_argument('--list', action='store_true', help='list the packaged configs')

    download = sub.add_parser('download', help='download the weights of a model-zoo entry')
    download.add_argument('name', help='model name (or a single weights entry), see `portraitisr models`')

    models = sub.add_parser('models', help='list the model zoo')
    models.add_argument('--weights', action='store_true', help='list the weight files instead')
    add_study_subcommands(sub)  # portraitisr study create | serve | results
    return parser


# ---------------------------------------------------------------------------------------------- inputs and outputs
def collect_inputs(inputs: Sequence[str], recursive: bool = False) -> List[Tuple[Path, Path]]:
    """``(image file, its path relative to the output folder before renaming)`` for files and folders, in order.

    Files of a folder keep their path relative to it. The same file named twice is taken once.

    Raises:
        SetupError: an input does not exist, or a folder has no images.
    """
    pairs: List[Tuple[Path, Path]] = []
    seen = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = list_images(path, recursive=recursive)
            if not found:
                hint = '' if recursive else ' (--recursive takes sub-folders too)'
                raise SetupError(f'no images in {path} (looked for {", ".join(IMAGE_EXTENSIONS)}){hint}')
            items = [(f, f.relative_to(path)) for f in found]
        elif path.is_file():
            items = [(path, Path(path.name))]
        elif path.exists():
            raise SetupError(f'input {path} is neither a file nor a folder')
        else:
            raise SetupError(f'input {path} does not exist')
        for source, relative in items:
            key = os.path.realpath(source)
            if key not in seen:
                seen.add(key)
                pairs.append((source, relative))
    return pairs


@dataclass
class RestoreJob:
    """One input and where its results go."""

    source: Path
    target: Path
    compare: Optional[Path] = None
    size: Tuple[int, int] = (0, 0)  # (width, height) from the header
    renamed_from: Optional[Path] = None


def _case_insensitive(folder: Path) -> bool:
    """Whether names in ``folder`` ignore case: a probe file answers to its upper-case name. A folder that does not
    exist yet is judged by its nearest existing parent (the disk it will be on); True when nothing can be probed."""
    while not folder.is_dir():
        if folder.parent == folder:
            return True
        folder = folder.parent
    probe = folder / f'.portraitisr-case-{uuid.uuid4().hex[:8]}'
    try:
        probe.touch()
        return Path(str(probe).upper()).exists() if probe.name != probe.name.upper() else False
    except OSError:
        return True  # cannot probe (read-only parent): assume the stricter case
    finally:
        probe.unlink(missing_ok=True)


def plan_outputs(pairs: Sequence[Tuple[Path, Path]], output: Path, compare: bool = False,
                 collisions: str = 'refuse', case_insensitive: bool = True) -> List[RestoreJob]:
    """Every output path, computed before anything runs (PNG for formats that cannot be written, ``_compare.png``
    beside them with ``compare``).

    Two inputs whose outputs would have the same path (or paths that differ only in case when
    ``case_insensitive``) are refused with the list of colliding inputs, or (``collisions='suffix'``) the later
    ones get ``_2``, ``_3``, ... before the suffix.

    Raises:
        SetupError: colliding outputs with ``collisions='refuse'``.
    """
    def key(path: Path) -> str:
        return str(path).casefold() if case_insensitive else str(path)

    def paths(relative: Path, stem: str) -> Tuple[Path, Optional[Path]]:
        target = output / relative.parent / (stem + output_suffix(relative))
        return target, (target.with_name(stem + '_compare.png') if compare else None)

    taken: Dict[str, Path] = {}  # output key -> the input that has it
    clashes: Dict[str, Tuple[Path, List[Path]]] = {}  # output key -> (output path, the inputs that want it)
    jobs: List[RestoreJob] = []
    for source, relative in pairs:
        target, compare_path = paths(relative, relative.stem)
        wanted = [p for p in (target, compare_path) if p is not None]
        clash = next((p for p in wanted if key(p) in taken), None)
        renamed_from = None
        if clash is not None:
            if collisions == 'refuse':
                clashes.setdefault(key(clash), (clash, [taken[key(clash)]]))[1].append(source)
                continue
            number = 2
            while any(key(p) in taken for p in paths(relative, f'{relative.stem}_{number}') if p is not None):
                number += 1
            renamed_from = target
            target, compare_path = paths(relative, f'{relative.stem}_{number}')
        for path in (target, compare_path):
            if path is not None:
                taken[key(path)] = source
        jobs.append(RestoreJob(source, target, compare_path, renamed_from=renamed_from))
    if clashes:
        lines = [f'{len(clashes)} output name(s) would be written by more than one input (nothing was restored):']
        lines += [f'  {path} <- {", ".join(str(s) for s in sources)}' for path, sources in list(clashes.values())[:20]]
        if len(clashes) > 20:
            lines.append(f'  ... and {len(clashes) - 20} more')
        lines.append('restore them into different output folders, rename them, or pass --name-collisions suffix')
        raise SetupError('\n'.join(lines))
    return jobs


def _check_output_folder(inputs: Sequence[str], output: Path, recursive: bool) -> None:
    """Refuse an output folder that is an input folder (also through a symlink), or lies inside one with
    ``--recursive``: results would mix with the originals, and a later run would take them as inputs."""
    out_real = Path(os.path.realpath(output))
    for text in inputs:
        folder = Path(text)
        if not folder.is_dir():
            continue
        real = Path(os.path.realpath(folder))
        same = out_real == real or (output.exists() and os.path.samefile(output, folder))
        if same or (recursive and real in out_real.parents):
            where = 'is' if same else 'is inside'
            raise SetupError(f'the output folder {output} {where} the input folder {folder}: the results would '
                             'mix with (and could replace) the originals; choose another -o')


def _check_outputs_not_inputs(jobs: Sequence[RestoreJob]) -> None:
    """Refuse any output path that is an input file: the same path, a symlink to it, another case of its name on a
    case-insensitive disk, a hard link. Inputs are never written."""
    identities = {}
    for job in jobs:
        info = job.source.stat()
        identities[(info.st_dev, info.st_ino)] = job.source
    for job in jobs:
        for path in (job.target, job.compare):
            if path is None or not path.exists():
                continue
            info = path.stat()
            original = identities.get((info.st_dev, info.st_ino))
            if original is not None:
                raise SetupError(f'the output {path} would overwrite the input {original}; choose another -o')


def _check_headers(jobs: List[RestoreJob], max_pixels: Optional[int]) -> Tuple[List[RestoreJob], List[str]]:
    """Read every input's header (no pixels): ``(readable jobs with their sizes, one line per bad file)``."""
    good, bad = [], []
    for job in jobs:
        try:
            width, height = read_image_size(job.source)
            check_image_size(width, height, str(job.source), max_pixels)
        except (ImageReadError, OSError) as error:
            bad.append(f'skipped {job.source}: {str(error).splitlines()[0]}')
            continue
        job.size = (width, height)
        good.append(job)
    return good, bad


def _prepare_output_folder(output: Path) -> List[Path]:
    """Create ``output`` and prove it writable with a probe file; returns the folders it created, deepest first
    (:func:`_remove_created_folders` takes them back when a later setup check fails)."""
    created = [folder for folder in [output, *output.parents] if not folder.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f'.portraitisr-write-{uuid.uuid4().hex[:8]}'
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as error:
        _remove_created_folders(created)
        raise SetupError(f'cannot write into the output folder {output}: {error.strerror or error}') from None
    return created


def _remove_created_folders(created: Sequence[Path]) -> None:
    """Remove the folders a refused run created, where they are still empty (a refused run leaves nothing)."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------------------------- the model
def _model_stack():
    """``(portraitisr.apis.portrait_restorer, portraitisr.apis.training)``, imported when a model is built: the
    setup checks before it answer in about a second without them. The restorer already loads everything training
    needs (the engine, mmengine's runner), so importing both costs ``restore`` nothing."""
    # torch, diffusers, mmengine's runner and every model: only after the setup checks
    from portraitisr.apis import portrait_restorer, training
    return portrait_restorer, training


def _cuda_device_count() -> int:
    """CUDA devices the driver sees (honours ``CUDA_VISIBLE_DEVICES``), asked without importing torch."""
    import ctypes

    for name in ('libcuda.so.1', 'libcuda.so', 'nvcuda.dll', 'libcuda.dylib'):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def _check_device(device: Optional[str]) -> None:
    if device is None:
        return
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise SetupError(f'unknown device {device!r}: use cpu, cuda, cuda:N, mps or xpu')
    if match.group(1) == 'cuda':
        count, index = _cuda_device_count(), int(match.group(2) or 0)
        if count == 0:
            raise SetupError(f'--device {device}: this machine has no CUDA GPU (use --device cpu)')
        if index >= count:
            raise SetupError(f'--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}')
    if match.group(1) == 'mps' and sys.platform != 'darwin':
        raise SetupError(f'--device {device}: Apple GPUs (mps) exist only on macOS')


@dataclass
class ModelFacts:
    """What the config says about the model, read without building it."""

    config: Path
    one_step: bool
    takes_reference: bool
    native_scale: Optional[int]
    cfg: object = field(repr=False, default=None)


def _model_facts(args: argparse.Namespace) -> ModelFacts:
    """Resolve ``--config`` / ``--model`` and read what the model takes from its config."""

    if args.model:
        try:
            entry = model_zoo.get_model(args.model)
            config = zoo_config_path(entry.config, args.model)
        except (KeyError, FileNotFoundError) as error:
            raise SetupError(_message(error)) from None
        try:  # every file the entry needs, looked up offline: all that is missing is named at once
            model_zoo.check_available(args.model, need_checkpoint=args.checkpoint is None)
        except FileNotFoundError as error:  # WeightsNotFoundError
            raise SetupError(f'cannot build the model:\n{_message(error)}') from None
    else:
        try:
            config = resolve_config(args.config)
        except FileNotFoundError as error:
            raise SetupError(_message(error)) from None
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(config))
        model = cfg.model
    except Exception as error:  # noqa: BLE001 - any config error is the user's to fix, shown in one line
        raise SetupError(f'cannot read config {config}: {type(error).__name__}: {error}'.splitlines()[0]) from None
    backbone = model.get('backbone') or {}
    one_step = isinstance(backbone, dict) and backbone.get('type') == 'OneStepSD'
    takes_reference = model.get('type') == 'HeadsUp' or (one_step and backbone.get('in_channels') == 9)
    native = None
    if model.get('general_restorer') is not None:  # blending baselines upscale by their own factor
        native = model.get('upscale') or (model.get('general_restorer') or {}).get('scale')
    return ModelFacts(config=config, one_step=one_step, takes_reference=takes_reference,
                      native_scale=int(native) if native else None, cfg=cfg)


def _reference_has_face(path: Path, max_pixels: Optional[int]) -> Optional[bool]:
    """Whether dlib's HOG frontal-face detector finds a face in the reference image, resized to 512 pixels on its
    longer side (an aligned face fills most of it; one upsampling finds faces down to about 40 pixels there);
    None when dlib is not installed."""
    try:
        import dlib
    except ImportError:
        return None
    import cv2
    import numpy as np


    rgb = read_image(path, max_pixels=max_pixels).rgb
    longest = max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * 512 / longest)), max(1, round(rgb.shape[0] * 512 / longest)))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if longest > 512 else cv2.INTER_CUBIC).clip(0, 1)
    pixels = np.ascontiguousarray(np.rint(rgb * 255).astype(np.uint8))
    return len(dlib.get_frontal_face_detector()(pixels, 1)) > 0


def _check_model_options(args: argparse.Namespace, facts: ModelFacts) -> None:

    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise SetupError(f'checkpoint {args.checkpoint} does not exist')
    if args.identity is not None and not Path(args.identity).is_file():
        raise SetupError(f'identity embedding {args.identity} does not exist')
    if facts.native_scale is not None and args.scale is not None and args.scale != facts.native_scale:
        raise SetupError(f'{facts.config} upscales by {facts.native_scale}; --scale {args.scale} is not possible')
    if args.ref is None:
        return
    if not facts.takes_reference:
        raise SetupError(f'--ref: {facts.config} takes no reference face (HeadsUp configs do)')
    ref = Path(args.ref)
    if not ref.is_file():
        raise SetupError(f'reference face {ref} does not exist')
    try:
        width, height = read_image_size(ref)
        check_image_size(width, height, str(ref), args.max_pixels)
        has_face = _reference_has_face(ref, args.max_pixels)
    except (ImageReadError, OSError) as error:
        raise SetupError(f'reference face {str(error).splitlines()[0]}') from None
    if has_face is False:
        raise SetupError(f'no face found in the reference {ref} (dlib\'s frontal-face detector): give a photo of '
                         'the same person\'s face, aligned to the FFHQ template')


def _memory_budget(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None

    try:
        return parse_memory(text)
    except ValueError as error:
        raise SetupError(f'--max-memory: {error}') from None


# ---------------------------------------------------------------------------------------------- restore
def _prepare(args: argparse.Namespace
             ) -> Tuple[ModelFacts, List[RestoreJob], List[str], Optional[int], List[Path]]:
    """Everything ``restore`` checks before building the model: returns the model facts, the jobs, the lines of
    inputs that failed their header check, the memory budget and the output folders it created."""
    budget = _memory_budget(args.max_memory)
    _check_device(args.device)
    facts = _model_facts(args)
    _check_model_options(args, facts)
    output = Path(args.output)
    pairs = collect_inputs(args.inputs, recursive=args.recursive)
    if output.exists() and not output.is_dir():
        raise SetupError(f'the output {output} exists and is not a folder')
    _check_output_folder(args.inputs, output, args.recursive)
    jobs = plan_outputs(pairs, output, compare=args.compare, collisions=args.name_collisions,
                        case_insensitive=_case_insensitive(output))
    _check_outputs_not_inputs(jobs)
    jobs, bad = _check_headers(jobs, args.max_pixels)
    if not jobs:
        raise SetupError(f'no readable image among the inputs ({len(bad)} skipped):\n' + '\n'.join(bad))
    created = _prepare_output_folder(output)
    return facts, jobs, bad, budget, created


def _build_restorer(args: argparse.Namespace, facts: ModelFacts, budget: Optional[int]):
    import warnings

    restorers, _ = _model_stack()
    PortraitRestorer, UntrainedModelWarning = restorers.PortraitRestorer, restorers.UntrainedModelWarning

    options = dict(checkpoint=args.checkpoint, device=args.device, scale=args.scale, tile=args.tile,
                   precision=args.precision, max_memory=budget)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', UntrainedModelWarning)
        try:
            if args.model:
                restorer = PortraitRestorer.from_zoo(args.model, **options)
            else:
                restorer = PortraitRestorer(facts.cfg, **options)
        except (WeightsNotFoundError, CheckpointLoadError, KeyError, ValueError, TypeError, FileNotFoundError,
                RuntimeError, ImportError) as error:
            raise SetupError(f'cannot build the model:\n{_message(error)}') from None
    for warning in caught:
        if issubclass(warning.category, UntrainedModelWarning):
            print(f'note: {warning.message}', file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if args.ref is not None and not restorer.takes_reference:
        raise SetupError(f'--ref: {type(restorer.model).__name__} takes no reference face (HeadsUp does)')
    try:
        restorer.set_identity(args.identity)
    except (ValueError, OSError) as error:
        raise SetupError(f'--identity: {_message(error)}') from None
    return restorer


def _tile_bar(tqdm, name: str):
    """A progress callback that shows a bar over the tiles of one image (with its ETA) once it has some."""
    state = {'bar': None}

    def update(done: int, total: int) -> None:
        bar = state['bar']
        if bar is None:
            if total < 2:
                return
            bar = state['bar'] = tqdm(total=total, desc=f'  {name}', unit='tile', leave=False, position=1,
                                      dynamic_ncols=True)
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        if state['bar'] is not None:
            state['bar'].close()
    return update, close


def _show_plan(tqdm, job: RestoreJob, plan) -> None:
    """One line for an image restored in tiles: its sizes, the tile, the memory estimate and the budget."""
    out_pixels = job.size[0] * job.size[1] * plan.scale**2
    if plan.tile is None and out_pixels <= 4_000_000:
        return
    budget = f' of a {format_bytes(plan.budget)} budget' if plan.budget else ''
    tiles = f'{plan.tile}-pixel tiles' if plan.tile else 'untiled'
    tqdm.write(f'{job.source}: {job.size[0]}x{job.size[1]}, {tiles}, about {format_bytes(plan.estimate.total)}'
               f'{budget}', file=sys.stderr)


def _restore(args: argparse.Namespace) -> int:
    # OpenMP threads that wait for work sleep instead of spinning (unless the user chose): on a CPU shared with
    # other programs, spinning threads steal the cores the working ones need. The tiny model on two shared cores
    # took 59 CPU-seconds (410 s wall) per output megapixel with spinning threads, 2.7 (4.5 s wall) without
    # (tools/benchmarks/restore_memory.py --speed). It must be set before torch loads its OpenMP runtime.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    facts, jobs, bad, budget, created = _prepare(args)
    for line in bad:
        print(line, file=sys.stderr)
    from tqdm import tqdm


    try:
        restorer = _build_restorer(args, facts, budget)
    except SetupError:
        _remove_created_folders(created)
        raise
    for job in jobs:
        if job.renamed_from is not None:
            print(f'{job.source} -> {job.target} ({job.renamed_from.name} is taken)', file=sys.stderr)
    output = Path(args.output)
    failed, skipped = len(bad), 0
    total = len(jobs) + len(bad)
    for job in tqdm(jobs, desc='restore', unit='image', dynamic_ncols=True):
        if args.skip_existing and job.target.exists() and (job.compare is None or job.compare.exists()):
            skipped += 1
            continue
        update, close = _tile_bar(tqdm, job.source.name)
        try:
            restorer.restore_file(job.source, job.target, ref=args.ref, compare=job.compare, progress=update,
                                  max_pixels=args.max_pixels, on_plan=lambda plan, job=job: _show_plan(tqdm, job, plan))
        except (ImageReadError, MemoryBudgetError, ValueError, OSError) as error:
            # One line per bad file; the others still get restored.
            failed += 1
            tqdm.write(f'skipped {job.source}: {str(error).splitlines()[0]}', file=sys.stderr)
        finally:
            close()
    print(f'{total - failed - skipped} of {total} images restored into {output}'
          + (f'; {skipped} already there' if skipped else '') + (f'; {failed} failed' if failed else ''))
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------- train
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portraitisr train`` (also ``tools/train.py``'s, which runs the same :func:`run_train`)."""
    parser.add_argument('config', help='config file, or the name of a packaged config (osediff_tiny, '
                                       'osediff/osediff_sd21.py; see `portraitisr config --list`)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from a checkpoint (a path, or an https URL ending in #sha256=<64 hex>); '
                             'without one, from the newest checkpoint in the work dir that loads')
    parser.add_argument('--trust-url', action='store_true',
                        help='download a --resume / load_from URL that has no #sha256= (you trust the server); '
                             'the file is still loaded with weights_only')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (bf16 where supported, else '
                                                           'fp16) for every optimizer wrapper')
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_iters=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (torchrun: pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def run_train(args: argparse.Namespace, prog: str = 'portraitisr train') -> int:
    """Train as ``args`` (of :func:`add_train_arguments`) say; a setup error is one line ``prog: ...`` on stderr and
    exit status 2."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    try:
        config = resolve_config(args.config)
    except FileNotFoundError as error:
        print(f'{prog}: {_message(error)}', file=sys.stderr)
        return EXIT_SETUP
    hide_bitsandbytes()  # before mmengine: see import_guards
    training = _model_stack()[1]
    try:
        options = training.parse_cfg_options(args.cfg_options)
    except ValueError as error:
        print(f'{prog}: --cfg-options: {error} (write KEY=VALUE)', file=sys.stderr)
        return EXIT_SETUP
    try:
        training.train(config, work_dir=args.work_dir, resume=args.resume, trust_url=args.trust_url, amp=args.amp,
                       cfg_options=options, launcher=args.launcher)
    except training.CHECKPOINT_ERRORS as error:
        print(f'{prog}: {error}', file=sys.stderr)
        return EXIT_SETUP
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    """``portraitisr config``: list the packaged configs, or print / copy one with its ``_base_`` files merged."""
    if args.list:
        for name in config_names():
            print(name)
        return EXIT_OK
    if args.name is None:
        raise SetupError('give a config name (or --list)')
    try:
        path = resolve_config(args.name)
    except FileNotFoundError as error:
        raise SetupError(_message(error)) from None
    if args.path:
        print(path)
        return EXIT_OK
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix != '.py':
            raise SetupError(f'--out {out}: write the config to a .py file')
        if out.exists() and not args.force:
            raise SetupError(f'--out {out} exists; choose another file or pass --force')
        if not out.parent.is_dir():
            raise SetupError(f'--out {out}: the folder {out.parent} does not exist')
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # noqa: BLE001 - any config error is shown in one line
        raise SetupError(f'cannot read config {path}: {type(error).__name__}: {error}'.splitlines()[0]) from None
    # The merged config (mmengine's pretty_text), not the file's text: a copy must run outside the package, where
    # the _base_ files its text includes by relative path do not exist. Loading it gives the same config.
    origin = config_name(path) or str(path)
    text = (f'# {origin} of portraitisr {__version__}, with its _base_ files merged in (`portraitisr config '
            f'{args.name} --path` shows the original, with its comments)\n{cfg.pretty_text}')
    if out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        out.write_text(text, encoding='utf-8')
    except OSError as error:
        raise SetupError(f'cannot write {out}: {error.strerror or error}') from None
    print(f'{origin} -> {out}')
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:

    try:
        paths = model_zoo.download(args.name)
    except (KeyError, WeightsNotFoundError, ChecksumError) as error:
        print(f'portraitisr download: {error}', file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f'{name}: {path}')
    entry = model_zoo.load_index().models.get(args.name)
    if entry is not None and not entry.released:
        print(f'note: {entry.how_to_get}')
    return 0


def _models(args: argparse.Namespace) -> int:

    zoo = model_zoo.load_index()
    if args.weights:
        for entry in (zoo.weights[name] for name in sorted(zoo.weights)):
            where = entry.hub_id if entry.is_folder else entry.url
            check = {'hub': 'hub', 'pinned': 'sha256 pinned', 'TOFU': 'TOFU (no sha256)'}[entry.trust]
            print(f'{entry.name:34s} {check:16s} {entry.licence}\n{"":34s} {where}')
        return 0
    for entry in model_zoo.list_models(zoo):
        state = 'released' if entry.released else 'NOT RELEASED (train it)'
        print(f'{entry.name:24s} {state:24s} {entry.config}\n{"":24s} {entry.description}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``portraitisr`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    hide_bitsandbytes()  # before any subcommand imports mmengine: see import_guards
    handlers = {'restore': _restore, 'train': run_train, 'config': _config, 'download': _download, 'models': _models,
                'study': run_study}
    try:
        return handlers[args.command](args)
    except SetupError as error:
        print(f'portraitisr {args.command}: {error}', file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        resume = ' (finished outputs are complete; --skip-existing resumes)' if args.command == 'restore' else ''
        print(f'portraitisr {args.command}: interrupted{resume}', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
