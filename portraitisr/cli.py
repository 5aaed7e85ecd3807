"""The ``portraitisr`` command: ``restore`` photos, ``download`` model-zoo weights, list ``models``, run a user
``study`` (:mod:`portraitisr.study.cli`).

A thin layer over :class:`~portraitisr.apis.portrait_restorer.PortraitRestorer` and
:mod:`~portraitisr.apis.model_zoo`; see ``docs/command_line.md``. Heavy imports (torch, the models) happen only
in the subcommand that needs them, so ``portraitisr models`` and ``--help`` answer at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from portraitisr.study.cli import add_study_subcommands, run as run_study  # argparse only: cheap to import

__all__ = ['main', 'build_parser', 'collect_inputs']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='portraitisr', description='Portrait image super-resolution')
    sub = parser.add_subparsers(dest='command', required=True)

    restore = sub.add_parser('restore', help='restore image files and folders')
    restore.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders of images')
    restore.add_argument('-o', '--output', required=True, help='output folder')
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument('--config', help='config file of the model (with --checkpoint for trained weights)')
    which.add_argument('--model', help='model-zoo name (see `portraitisr models`)')
    restore.add_argument('--checkpoint', help='training checkpoint of this library for the config / model')
    restore.add_argument('--ref', help='reference face image (aligned, FFHQ template) for HeadsUp')
    restore.add_argument('--scale', type=int, help='output size / input size (default: the model\'s, else 4)')
    restore.add_argument('--tile', type=int, help='tile size in pixels for huge inputs (models with tiling)')
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

    download = sub.add_parser('download', help='download the weights of a model-zoo entry')
    download.add_argument('name', help='model name (or a single weights entry), see `portraitisr models`')

    models = sub.add_parser('models', help='list the model zoo')
    models.add_argument('--weights', action='store_true', help='list the weight files instead')
    add_study_subcommands(sub)  # portraitisr study create | serve | results
    return parser


def collect_inputs(inputs: Sequence[str], recursive: bool = False) -> list[tuple[Path, Path]]:
    """``(image file, output path relative to the output folder)`` for files and folders, in order.

    Files of a folder keep their path relative to it; a missing input raises ``FileNotFoundError``, two inputs
    that would land on the same output path raise ``ValueError`` (nothing is overwritten).
    """
    from portraitisr.utils.image_io import list_images

    pairs: list[tuple[Path, Path]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            pairs += [(f, f.relative_to(path)) for f in list_images(path, recursive=recursive)]
        elif path.is_file():
            pairs.append((path, Path(path.name)))
        else:
            raise FileNotFoundError(f'input {path} does not exist')
    seen: dict[Path, Path] = {}
    for source, relative in pairs:
        if relative in seen and seen[relative] != source:
            raise ValueError(f'{seen[relative]} and {source} would both be written as {relative}: restore them '
                             'into different output folders')
        seen[relative] = source
    return pairs


def _restore(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from portraitisr.apis.portrait_restorer import PortraitRestorer
    from portraitisr.utils.image_io import ImageReadError
    from portraitisr.weights import WeightsNotFoundError

    for what, path in (('checkpoint', args.checkpoint), ('reference face', args.ref)):
        if path is not None and not Path(path).is_file():
            print(f'portraitisr restore: {what} {path} does not exist', file=sys.stderr)
            return 2
    options = dict(checkpoint=args.checkpoint, device=args.device, scale=args.scale, tile=args.tile,
                   precision=args.precision)
    try:
        if args.model:
            restorer = PortraitRestorer.from_zoo(args.model, **options)
        else:
            restorer = PortraitRestorer(args.config, **options)
    except (WeightsNotFoundError, KeyError, ValueError, FileNotFoundError) as error:
        print(f'portraitisr restore: cannot build the model:\n{error}', file=sys.stderr)
        return 2
    # After the model: missing weights are reported before anything else (the model is what can be missing).
    try:
        pairs = collect_inputs(args.inputs, recursive=args.recursive)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        print(f'portraitisr restore: {error}', file=sys.stderr)
        return 2

    output = Path(args.output)
    failed = skipped = 0
    for source, relative in tqdm(pairs, desc='restore', unit='image'):
        target = output / relative.parent / PortraitRestorer.output_name(relative)
        compare = target.with_name(target.stem + '_compare.png') if args.compare else None
        if args.skip_existing and target.exists() and (compare is None or compare.exists()):
            skipped += 1
            continue
        try:
            restorer.restore_file(source, target, ref=args.ref, compare=compare)
        except (ImageReadError, ValueError, OSError) as error:
            # One line per bad file; the others still get restored.
            failed += 1
            tqdm.write(f'skipped {source}: {str(error).splitlines()[0]}', file=sys.stderr)
    print(f'{len(pairs) - failed - skipped} of {len(pairs)} images restored into {output}'
          + (f'; {skipped} already there' if skipped else '') + (f'; {failed} failed' if failed else ''))
    return 1 if failed else 0


def _download(args: argparse.Namespace) -> int:
    from portraitisr.apis import model_zoo
    from portraitisr.weights import ChecksumError, WeightsNotFoundError

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
    from portraitisr.apis import model_zoo

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
    handlers = {'restore': _restore, 'download': _download, 'models': _models, 'study': run_study}
    return handlers[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
