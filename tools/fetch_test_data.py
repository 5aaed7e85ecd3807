"""Fetch the test data that others published (benchmark images, their logs, demo portraits) from its public source.

Tests that need such data find it under one folder, ``$PORTRAITISR_TEST_DATA`` (default: ``<repo>/../shared/fixtures``,
the folder CI has), as ``<root>/<dataset>/<path>``. What each data set holds, where every file comes from (a URL pinned
to a commit) and its sha256 are in ``tests/data/published_test_data.json``; the files themselves never enter the
repository. Usage::

    python tools/fetch_test_data.py [NAME ...] [--dest DIR]   # fetch what is missing or wrong (default: every set)
    python tools/fetch_test_data.py --list                    # data sets, file counts, sizes, what is present
    python tools/fetch_test_data.py --check [NAME ...]        # hash what is present, report mismatches (exit 1)

A fetch keeps every file that is already correct, downloads the others with the weights floor's downloader
(:func:`portraitisr.weights.download.download_file`: https only, resumable ``.part``, length and sha256 checked,
atomic rename; a wrong download is deleted, never left in place) and makes derived files (a csv of a log's scores)
from their source with a recipe below, checked against their own pinned sha256. A failed file is reported in one
line and the others go on. Exit status: 0 all present and correct, 1 something failed or differs, 2 a setup error
(unknown data set, a destination that cannot be written). Without a connection it ends in one paragraph that says
what was not fetched, from where, and how to provide it by hand.

The module is also the tests' API (``TEST_DATA_ENV``, :func:`test_data_root`, :func:`missing_files`, :func:`describe`).
"""
import argparse
import csv
import hashlib
import http.client
import io
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing the package, like the other tools

from tqdm import tqdm  # noqa: E402

from portraitisr.utils.atomic_files import write_bytes_atomically  # noqa: E402
from portraitisr.weights.checksums import sha256_of  # noqa: E402
from portraitisr.weights.download import download_file  # noqa: E402
from portraitisr.weights.errors import ChecksumError  # noqa: E402

__all__ = ['TEST_DATA_ENV', 'MANIFEST_PATH', 'test_data_root', 'load_manifest', 'dataset_names', 'dataset_files',
           'missing_files', 'describe', 'osediff_metrics_csv', 'fetch', 'check', 'main']

TEST_DATA_ENV = 'PORTRAITISR_TEST_DATA'
MANIFEST_PATH = REPO_ROOT / 'tests' / 'data' / 'published_test_data.json'
COMMAND = 'python tools/fetch_test_data.py'
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


class SetupError(ValueError):
    """A problem with what was asked (unknown data set, unwritable destination): exit status 2, one line."""


# ------------------------------------------------------------------------------------------------ the tests' API
def test_data_root() -> Path:
    """The folder that holds the data sets: ``$PORTRAITISR_TEST_DATA``, else ``<repo>/../shared/fixtures``."""
    value = os.environ.get(TEST_DATA_ENV, '').strip()
    if value:
        return Path(value).expanduser()
    return REPO_ROOT.parent / 'shared' / 'fixtures'


test_data_root.__test__ = False  # its name starts with test_: pytest must not collect it where a test imports it


def load_manifest() -> dict:
    """``tests/data/published_test_data.json`` (:data:`MANIFEST_PATH`): ``{'datasets': {name: {description,
    source, licence, files: [{path, size, sha256, url | derived_from + recipe + rows_for}]}}}``."""
    with open(MANIFEST_PATH, encoding='utf-8') as f:
        return json.load(f)


def dataset_names() -> List[str]:
    """The data sets the manifest describes, in its order."""
    return list(load_manifest()['datasets'])


def _dataset(name: str, manifest: Optional[dict] = None) -> dict:
    datasets = (manifest or load_manifest())['datasets']
    if name not in datasets:
        raise SetupError(f'unknown test data set {name!r}; known: {", ".join(datasets)}')
    return datasets[name]


def missing_files(name: str, root: Optional[Path] = None) -> List[str]:
    """Paths (relative to ``root/name``) of the data set's files that are absent; presence only, nothing is hashed.

    ``root`` defaults to :func:`test_data_root`. An unknown ``name`` raises :class:`SetupError` (a ``ValueError``)
    naming the known ones.
    """
    files = _dataset(name)['files']
    folder = Path(root if root is not None else test_data_root()) / name
    return [f['path'] for f in files if not (folder / f['path']).is_file()]


def dataset_files(name: str) -> List[str]:
    """Paths (relative to ``<root>/<name>``) of every file the data set has, fetched or derived; known without the
    data, so tests can be parametrised by them."""
    return [f['path'] for f in _dataset(name)['files']]


def describe(name: str) -> str:
    """One line: what the data set is and where it comes from."""
    dataset = _dataset(name)
    source = dataset['source']
    return (f'{name}: {dataset["description"]}; {len(dataset["files"])} files from {source["url"]} at commit '
            f'{source["commit"][:12]}')


# ------------------------------------------------------------------------------------------------ derived files
# OSEDiff's test_metrics.py logs one line per image (pyiqa scores, 6 decimals), e.g.
#   24-10-23 17:29:03.278 - INFO: results_osediff/Canon_001_LR4.png | PSNR: 25.793726; SSIM: 0.851268; ... | Runtime: ..
_OSEDIFF_SCORE_LINE = re.compile(r' - INFO: results_osediff/(?P<image>[^\s|]+) \| (?P<scores>[^|]+?) \| Runtime:')


def osediff_metrics_csv(log: bytes, images: Iterable[str]) -> bytes:
    """The per-image scores of ``images`` from OSEDiff's metric log, as csv bytes.

    Header ``image`` plus the logged metric names in lower case (``psnr,ssim,lpips,dists,clipiqa,niqe,musiq,maniqa``);
    one row per image in the log's order, the values exactly as logged; written by :mod:`csv` with its default
    ``\\r\\n`` line ends. This reproduces the csv of the shared fixtures byte for byte.

    Raises:
        ValueError: an image has no score line, or the lines name different metrics.
    """
    wanted = set(images)
    header: Optional[List[str]] = None
    rows = []
    for match in _OSEDIFF_SCORE_LINE.finditer(log.decode('utf-8')):
        if match['image'] not in wanted:
            continue
        pairs = [item.split(': ', 1) for item in match['scores'].split('; ')]
        names = ['image'] + [metric.strip().lower() for metric, _ in pairs]
        if header is not None and names != header:
            raise ValueError(f'the log scores {match["image"]} with {names[1:]}, other images with {header[1:]}')
        header = names
        rows.append([match['image']] + [value.strip() for _, value in pairs])
    found = {row[0] for row in rows}
    if wanted - found or header is None:
        raise ValueError(f'the log has no score line for {sorted(wanted - found) or sorted(wanted)}')
    out = io.StringIO(newline='')
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode('utf-8')


#: recipe name (the manifest's ``recipe``) -> (source bytes, file names of the ``rows_for`` folder) -> bytes
RECIPES: Dict[str, Callable[[bytes, List[str]], bytes]] = {'osediff_metrics_csv': osediff_metrics_csv}


def _derive(entry: dict, files: Sequence[dict], folder: Path) -> bytes:
    prefix = entry['rows_for'].rstrip('/') + '/'
    images = [f['path'][len(prefix):] for f in files if f['path'].startswith(prefix)]
    return RECIPES[entry['recipe']]((folder / entry['derived_from']).read_bytes(), images)


# ------------------------------------------------------------------------------------------------ fetching
def _is_correct(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


def _unreachable(error: BaseException) -> bool:
    """A failure to reach the host at all (no network, DNS, refused, timed out), as opposed to one file's failure."""
    return isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)


def _one_line(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f'HTTP {error.code} {error.reason}'
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise SetupError(f'cannot write to {folder} ({error.strerror or error}); choose another --dest or set '
                         f'{TEST_DATA_ENV}') from None


class _Report:
    """What one run did: counts, the one-line failures, the hosts that could not be reached."""

    def __init__(self) -> None:
        self.kept = self.fetched = self.derived = 0
        self.failed: List[str] = []  # '<dataset>/<path>'
        self.dead_hosts: Dict[str, str] = {}  # host -> why it could not be reached
        self.unreachable: Dict[str, dict] = {}  # dataset -> {'host', 'count'}: files not tried or not reached

    def not_reached(self, name: str, host: str) -> None:
        self.unreachable.setdefault(name, dict(host=host, count=0))['count'] += 1

    def fail(self, name: str, path: str, why: str) -> None:
        self.failed.append(f'{name}/{path}')
        tqdm.write(f'FAILED {name}/{path}: {why}', file=sys.stderr)


def _fetch_dataset(name: str, dataset: dict, root: Path, report: _Report, progress: bool) -> None:
    folder = root / name
    files = dataset['files']
    todo = [f for f in files if 'url' in f and not _is_correct(folder / f['path'], f['sha256'])]
    derived_todo = [f for f in files if 'derived_from' in f and not _is_correct(folder / f['path'], f['sha256'])]
    report.kept += len(files) - len(todo) - len(derived_todo)
    if not todo and not derived_todo:
        return
    _ensure_writable(folder)
    with tqdm(total=sum(f['size'] for f in todo), unit='B', unit_scale=True, unit_divisor=1024, desc=name,
              disable=not progress or not todo, file=sys.stderr) as bar:
        for entry in todo:
            target = folder / entry['path']
            host = urllib.parse.urlsplit(entry['url']).netloc
            if host in report.dead_hosts:  # no connection: the other files from there would fail the same way
                report.not_reached(name, host)
                continue
            try:
                if target.is_file():
                    # The wrong file goes now, not after the download: if that fails, a presence check must not pass.
                    target.unlink()
                    tqdm.write(f'{name}/{entry["path"]} had the wrong sha256: removed, fetching it again',
                               file=sys.stderr)
                download_file(entry['url'], target, sha256=entry['sha256'], progress=False)
            except ChecksumError as error:
                report.fail(name, entry['path'], f'{entry["url"]} sent a file with sha256 {error.got}, expected '
                                                 f'{error.expected}; refused and deleted')
            except (OSError, http.client.HTTPException) as error:
                if _unreachable(error):
                    report.dead_hosts[host] = _one_line(error)
                    report.not_reached(name, host)
                else:
                    report.fail(name, entry['path'], f'{_one_line(error)} ({entry["url"]})')
            else:
                report.fetched += 1
                bar.update(entry['size'])
    for entry in derived_todo:
        _make_derived(name, entry, files, folder, report)


def _make_derived(name: str, entry: dict, files: Sequence[dict], folder: Path, report: _Report) -> None:
    source = next(f for f in files if f['path'] == entry['derived_from'])
    if not _is_correct(folder / source['path'], source['sha256']):
        if name not in report.unreachable:
            report.fail(name, entry['path'], f'its source {source["path"]} is missing or wrong')
        else:
            report.unreachable[name]['count'] += 1
        return
    try:
        data = _derive(entry, files, folder)
    except ValueError as error:
        report.fail(name, entry['path'], f'cannot be made from {source["path"]}: {error}')
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry['sha256']:
        report.fail(name, entry['path'], f'made from {source["path"]} with sha256 {digest}, expected '
                                         f'{entry["sha256"]}; not written')
        return
    write_bytes_atomically(folder / entry['path'], data)
    report.derived += 1


def _offline_paragraph(report: _Report, manifest: dict, root: Path) -> str:
    parts = []
    for name, info in report.unreachable.items():
        source = manifest['datasets'][name]['source']
        parts.append(f'{info["count"]} file(s) of {name!r} ({source["url"]} at commit {source["commit"][:12]}, '
                     f'via {info["host"]}: {report.dead_hosts[info["host"]]})')
    names = ' '.join(report.unreachable)
    return (f'Could not fetch the published test data: {"; ".join(parts)}. The files already in place were kept. To '
            f'provide the data without a connection, copy each data set folder from a machine that has it (CI '
            f'keeps them in ../shared/fixtures) to {root}/<name>/, or put them in any folder and set {TEST_DATA_ENV} '
            f'to it; then `{COMMAND} --check {names}` verifies every file against its pinned sha256, and '
            f'`{COMMAND} {names}` run again with a connection fetches only what is still missing.')


def fetch(names: Sequence[str], root: Path, *, progress: bool = True) -> int:
    """Fetch the data sets ``names`` into ``root/<name>/``; returns the exit status (0, 1) and prints a summary."""
    manifest = load_manifest()
    for name in names:
        _dataset(name, manifest)
    report = _Report()
    for name in names:
        _fetch_dataset(name, manifest['datasets'][name], root, report, progress)
    total = sum(len(manifest['datasets'][n]['files']) for n in names)
    summary = (f'{total} files of {", ".join(names)} under {root}: {report.kept} already correct, {report.fetched} '
               f'downloaded, {report.derived} derived')
    if report.failed:
        print(f'{summary}; {len(report.failed)} FAILED: {", ".join(report.failed)}. Run the command again to retry '
              'them (files already correct are kept).', file=sys.stderr)
    if report.unreachable:
        print(_offline_paragraph(report, manifest, root), file=sys.stderr)
    if report.failed or report.unreachable:
        return EXIT_FAILED
    print(summary)
    return EXIT_OK


def check(names: Sequence[str], root: Path) -> int:
    """Hash every present file of ``names`` against the manifest; 1 when one differs or is missing, else 0."""
    manifest = load_manifest()
    for name in names:
        _dataset(name, manifest)
    status = EXIT_OK
    for name in names:
        files = manifest['datasets'][name]['files']
        folder = root / name
        wrong = [f['path'] for f in files
                 if (folder / f['path']).is_file() and sha256_of(folder / f['path']) != f['sha256']]
        missing = missing_files(name, root)
        for path in wrong:
            print(f'MISMATCH {name}/{path}: its sha256 is not the pinned one (fetch it again: {COMMAND} {name})')
        line = f'{name}: {len(files) - len(wrong) - len(missing)} of {len(files)} files correct under {folder}'
        if wrong:
            line += f', {len(wrong)} differ'
        if missing:
            line += f', {len(missing)} missing (run {COMMAND} {name})'
        print(line)
        if wrong or missing:
            status = EXIT_FAILED
    return status


def list_datasets(names: Sequence[str], root: Path) -> int:
    """Print each data set: file count, size, how many files are present under ``root``, source and licence."""
    manifest = load_manifest()
    for name in names:
        _dataset(name, manifest)
    for name in names:
        dataset = manifest['datasets'][name]
        files = dataset['files']
        present = len(files) - len(missing_files(name, root))
        size = sum(f['size'] for f in files) / 2 ** 20
        print(f'{name}: {len(files)} files, {size:.1f} MiB, {present} present under {root / name}')
        print(f'    {dataset["description"]}')
        print(f'    source: {dataset["source"]["url"]} at commit {dataset["source"]["commit"]}')
        print(f'    licence: {dataset["licence"]}')
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='*', metavar='NAME', help='data sets (default: all); see --list')
    parser.add_argument('--dest', type=Path, default=None,
                        help=f'the folder that holds the data sets (default: ${TEST_DATA_ENV}, else '
                             '../shared/fixtures beside the repository)')
    action = parser.add_mutually_exclusive_group()
    action.add_argument('--list', action='store_true', help='list the data sets, their sizes and what is present')
    action.add_argument('--check', action='store_true', help='hash the present files against their pinned sha256')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    root = args.dest.expanduser() if args.dest is not None else test_data_root()
    try:
        names = args.names or dataset_names()
        if args.list:
            return list_datasets(names, root)
        if args.check:
            return check(names, root)
        return fetch(names, root, progress=not args.no_progress)
    except SetupError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_SETUP


if __name__ == '__main__':
    sys.exit(main())
