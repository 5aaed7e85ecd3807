"""``portraitisr study create | serve | results``.

``add_study_subcommands(subparsers)`` adds the ``study`` command to a parser (``portraitisr/cli.py`` does); each
parsed command carries its handler as ``args.study_handler``, run by :func:`run`. ``python -m portraitisr.study``
runs :func:`main` alone. This module imports only argparse and the study's errors: the web framework, SQLAlchemy,
numpy and (for face crops) torch are imported by the subcommand that needs them, one module each.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import StudyFileError, StudyFolderError

__all__ = ['add_study_subcommands', 'build_parser', 'run', 'main', 'ADMIN_TOKEN_ENV']

#: Where ``serve`` reads the admin token from (a command-line option would show it in ``ps``).
ADMIN_TOKEN_ENV = 'PORTRAITISR_STUDY_ADMIN_TOKEN'


def add_study_subcommands(subparsers) -> argparse.ArgumentParser:
    """Add ``study`` with its ``create``, ``serve`` and ``results`` subcommands to ``subparsers``."""
    study = subparsers.add_parser('study', help='user studies: make, serve and analyse questionnaires',
                                  description='User studies (HeadsUp WR_id / WR_N, AuthFace A/B); see '
                                              'docs/user_study.md')
    sub = study.add_subparsers(dest='study_command', required=True)

    create = sub.add_parser('create', help='make a study folder from restored folders')
    create.add_argument('-o', '--output', required=True, help='the study folder to create (must not exist)')
    create.add_argument('--kind', required=True, choices=('wr_id', 'wr_n', 'ab'),
                        help='wr_id: most similar to the ground truth; wr_n: most natural; ab: A/B with three answers')
    create.add_argument('--method', action='append', required=True, metavar='[NAME=]FOLDER',
                        help='a method and the folder of its restored images (repeat; NAME defaults to the folder '
                             'name; use the names tools/test.py gives the rows)')
    create.add_argument('--gt', help='the ground-truth folder (required by wr_id)')
    create.add_argument('--questions', type=int, default=20, help='questions per participant (default 20)')
    create.add_argument('--attention-checks', type=int, default=2,
                        help='attention checks per participant (default 2; 0 for none)')
    create.add_argument('--seed', type=int, default=0, help='seed of the questionnaires (default 0)')
    create.add_argument('--face-crops', action='store_true', help='show aligned face crops (FFHQ template)')
    create.add_argument('--crop-size', type=int, default=512, help='face crop size in pixels (default 512)')
    create.add_argument('--detector', default='auto', choices=('auto', 'hog', 'mmod'),
                        help='face detector for the crops (default: the best offline one)')
    create.add_argument('--max-side', type=int, help='shrink images whose longer side is larger (all alike)')
    create.add_argument('--image-format', default='png', choices=('png', 'jpg'),
                        help='format of the images participants download (default png; jpg is quality 95)')
    create.add_argument('--ab-reference', metavar='METHOD',
                        help='ab: compare METHOD with each other method (default: every pair)')
    create.add_argument('--title', help='title shown to participants (default "Image study"; never name the '
                                        'methods)')
    create.add_argument('--prompt', help='the question (default from the kind)')
    create.set_defaults(study_handler=_create)

    serve = sub.add_parser('serve', help='serve a study to participants (one question per screen)')
    serve.add_argument('study', help='a study folder made by `portraitisr study create`')
    serve.add_argument('--db', help='SQLite file of the answers (default STUDY/responses.sqlite)')
    serve.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
    serve.add_argument('--port', type=int, default=8000, help='port (default 8000; 0 takes a free one)')
    serve.add_argument('--admin-token-file', help=f'file holding the admin token (else ${ADMIN_TOKEN_ENV}, else a '
                                                  'random token printed at start)')
    serve.add_argument('--max-participants', type=int, help='refuse new participants after this many')
    serve.add_argument('--access-log', action='store_true', help="print every request (uvicorn's access log)")
    serve.set_defaults(study_handler=_serve)

    results = sub.add_parser('results', help='win rates, Bradley-Terry ranking, agreement, CSV and plot')
    results.add_argument('study', help='the study folder')
    results.add_argument('--db', help='SQLite file of the answers (default STUDY/responses.sqlite)')
    results.add_argument('-o', '--output', help='output folder (default STUDY/results)')
    results.add_argument('--bootstrap', type=int, default=2000, help='bootstrap replicates (default 2000)')
    results.add_argument('--seed', type=int, default=0, help='bootstrap seed (default 0)')
    results.add_argument('--max-attention-failures', type=int, default=0,
                         help='exclude participants failing more attention checks (default 0)')
    results.add_argument('--include-incomplete', action='store_true', help='also count unfinished questionnaires')
    results.add_argument('--bt-alpha', type=float, default=0.01, help='Bradley-Terry regularisation (default 0.01)')
    results.add_argument('--no-plot', action='store_true', help='do not write win_rates.png')
    results.set_defaults(study_handler=_results)
    return study


def _fail(command: str, error: BaseException) -> int:
    print(f'portraitisr study {command}: {error}', file=sys.stderr)
    return 2


def _create(args: argparse.Namespace) -> int:
    # cv2 and the image I/O (and, for face crops, torch): `portraitisr --help` must not load them
    from .create import create_study

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc='study images', unit='image', file=sys.stderr)
        bar.n = done
        bar.refresh()

    try:
        design = create_study(args.output, args.kind, args.method, gt=args.gt, questions=args.questions,
                              attention_checks=args.attention_checks, seed=args.seed, face_crops=args.face_crops,
                              crop_size=args.crop_size, detector=args.detector, max_side=args.max_side,
                              image_format=args.image_format, ab_reference=args.ab_reference, title=args.title,
                              prompt=args.prompt, progress=progress)
    except (StudyFolderError, ValueError, FileExistsError, ImportError) as error:
        return _fail('create', error)
    finally:
        if bar is not None:
            bar.close()
    dropped = design.source.get('dropped_no_face') or []
    print(f'study {args.output}: {design.kind}, {len(design.methods)} methods, {len(design.items)} images'
          + (f' ({len(dropped)} without a face left out)' if dropped else '')
          + f', {design.questions_per_participant} questions + {design.attention_per_participant} attention checks '
          f'per participant\nserve it with: portraitisr study serve {args.output}')
    return 0


def _admin_token(args: argparse.Namespace) -> Optional[str]:
    if args.admin_token_file:
        with open(args.admin_token_file, encoding='utf-8') as f:
            return f.read().strip()
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def _serve(args: argparse.Namespace) -> int:
    # the study extra (Starlette, uvicorn) and numpy: optional, loaded only to serve a study
    from .server import open_study_server, serve_forever

    try:
        server = open_study_server(args.study, db_path=args.db, admin_token=_admin_token(args),
                                   max_participants=args.max_participants, host=args.host, port=args.port)
    except (StudyFileError, ValueError, OSError) as error:
        return _fail('serve', error)
    study, url = server.app.state.study, server.url
    print(f'serving {study.design.title!r} ({study.design.kind}) at {url}/\nanswers: {study.store.path}\n'
          f'admin: {url}/admin', flush=True)
    if not (args.admin_token_file or os.environ.get(ADMIN_TOKEN_ENV)):
        print(f'admin token (random, this run only; set ${ADMIN_TOKEN_ENV} to keep one): {study.admin_token}',
              flush=True)
    if args.host not in ('127.0.0.1', 'localhost', '::1'):
        print('note: for participants on other machines, put the server behind an HTTPS reverse proxy',
              file=sys.stderr)
    try:
        serve_forever(server.app, server.sock, access_log=args.access_log)
    finally:
        server.sock.close()
    return 0


def _results(args: argparse.Namespace) -> int:
    # the study extra (SQLAlchemy; choix in the analysis) and numpy: optional, loaded only to analyse answers
    from .analysis import analyse, load_responses, write_results

    try:
        design, responses = load_responses(args.study, args.db)
        results = analyse(design, responses, bootstrap=args.bootstrap, seed=args.seed,
                          max_attention_failures=args.max_attention_failures,
                          include_incomplete=args.include_incomplete, bt_alpha=args.bt_alpha)
        paths = write_results(results, args.output or Path(args.study) / 'results', plot=not args.no_plot)
    except (StudyFileError, ValueError, OSError) as error:
        return _fail('results', error)
    counted = sum(s.included for s in results.participants)
    print(f'{results.title}: {counted} of {len(results.participants)} participants counted, Fleiss kappa '
          f'{results.kappa:.3f} over {results.kappa_items} items')
    for row in results.win_rates:
        print(f'  {row.method:24s} {results.metric} {row.value:.3f}  [{row.ci_low:.3f}, {row.ci_high:.3f}]  '
              f'({row.selections} of {row.answers})')
    for row in results.bradley_terry:
        print(f'  BT rank {row.rank}: {row.method} (log-strength {row.log_strength:+.3f})')
    print('written: ' + ', '.join(str(p) for p in paths))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='portraitisr')
    add_study_subcommands(parser.add_subparsers(dest='command', required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``study`` command; returns the exit status."""
    return args.study_handler(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m portraitisr.study create|serve|results ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(['study'] + argv))
