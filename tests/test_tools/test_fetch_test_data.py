"""tools/fetch_test_data.py: published test data fetched from a local HTTP server with sha256 checks, resumed after an
interruption, refused when wrong, one paragraph offline; its manifest agrees with the shared fixtures.

The fetch tests serve a small made-up data set from a loopback server (``tests.helpers.file_server``, which speaks HTTP
Range like a real file host) through a manifest of their own; nothing reaches the internet. The last tests read the
real data where :func:`test_data_root` has it.
"""
import hashlib
import json
import os

import pytest

from tests.helpers.data_files import REPO_ROOT, require_test_data
from tests.helpers.data_files import fetch_test_data as tool

pytest_plugins = ('tests.helpers.file_server',)

# OSEDiff's log format (test_metrics.py): one line per image; img_3 is scored but not part of the data set.
LOG = (b'24-10-23 17:28:54.191 - INFO: ===== Configuration =====\n'
       b'24-10-23 17:29:03.278 - INFO: results_osediff/img_1.png | PSNR: 25.793726; SSIM: 0.851268; NIQE: 5.673670 '
       b'| Runtime: 1.06 sec\n'
       b'24-10-23 17:29:03.687 - INFO: results_osediff/img_3.png | PSNR: 24.045864; SSIM: 0.735231; NIQE: 5.823664 '
       b'| Runtime: 0.41 sec\n'
       b'24-10-23 17:29:04.096 - INFO: results_osediff/img_2.png | PSNR: 23.226414; SSIM: 0.855968; NIQE: 7.759458 '
       b'| Runtime: 0.41 sec\n'
       b'24-10-23 17:30:04.504 - INFO: \n===== Average Metrics for [results_osediff] =====\n'
       b'PSNR: 24.3552; SSIM: 0.8141; NIQE: 6.4189 | FID: 123.493817 | FID Runtime: 6.79 sec\n')
CSV = (b'image,psnr,ssim,niqe\r\n'
       b'img_1.png,25.793726,0.851268,5.673670\r\n'
       b'img_2.png,23.226414,0.855968,7.759458\r\n')


def _bytes(n, seed):
    return bytes((i * 131 + seed * 17 + (i >> 8)) % 256 for i in range(n))


FILES = {'sr/img_1.png': _bytes(150_000, 1), 'sr/img_2.png': _bytes(3_000, 2), 'metrics.log': LOG}


@pytest.fixture(autouse=True)
def _offline(no_internet):
    """Any connection beyond 127.0.0.1 fails the test."""


@pytest.fixture
def demo(file_server, tmp_path, monkeypatch):
    """The data set 'demo' (two images, a log, a csv derived from it) on the loopback server, in a manifest of its
    own; returns (server, destination root)."""
    entries = []
    for path, data in FILES.items():
        url, sha = file_server.serve(path.replace('/', '_'), data)
        entries.append(dict(path=path, url=url, size=len(data), sha256=sha))
    entries.append(dict(path='metrics.csv', derived_from='metrics.log', recipe='osediff_metrics_csv', rows_for='sr',
                        size=len(CSV), sha256=hashlib.sha256(CSV).hexdigest()))
    manifest = {'datasets': {'demo': {
        'description': 'two made-up images and their scores',
        'source': {'repository': 'someone/demo', 'url': 'https://github.com/someone/demo', 'commit': 'ab' * 20},
        'licence': 'test only', 'files': entries}}}
    path = tmp_path / 'manifest.json'
    path.write_text(json.dumps(manifest), encoding='utf-8')
    monkeypatch.setattr(tool, 'MANIFEST_PATH', path)
    return file_server, tmp_path / 'data'


def _run(capsys, *argv):
    status = tool.main([*argv, '--no-progress'])
    out, err = capsys.readouterr()
    return status, out, err


def _leftovers(root):
    """Everything under ``root`` that is not a finished file of the data set (.part, .lock, temporary files)."""
    expected = set(FILES) | {'metrics.csv'}
    return sorted(str(p.relative_to(root / 'demo')) for p in (root / 'demo').rglob('*')
                  if p.is_file() and str(p.relative_to(root / 'demo')) not in expected)


# ------------------------------------------------------------------------------------------------ the tests' API
def test_root_setting_and_presence(demo, monkeypatch, tmp_path):
    monkeypatch.delenv(tool.TEST_DATA_ENV, raising=False)
    assert tool.TEST_DATA_ENV == 'PORTRAITISR_TEST_DATA'
    assert tool.test_data_root() == REPO_ROOT.parent / 'shared' / 'fixtures'
    monkeypatch.setenv(tool.TEST_DATA_ENV, str(tmp_path / 'elsewhere'))
    assert tool.test_data_root() == tmp_path / 'elsewhere'
    assert tool.dataset_names() == ['demo']
    assert tool.missing_files('demo') == ['sr/img_1.png', 'sr/img_2.png', 'metrics.log', 'metrics.csv']
    (tmp_path / 'elsewhere' / 'demo').mkdir(parents=True)
    (tmp_path / 'elsewhere' / 'demo' / 'metrics.log').write_bytes(b'not even the right bytes')  # presence only
    assert tool.missing_files('demo') == ['sr/img_1.png', 'sr/img_2.png', 'metrics.csv']
    assert tool.describe('demo') == ('demo: two made-up images and their scores; 4 files from '
                                     'https://github.com/someone/demo at commit abababababab')
    with pytest.raises(ValueError, match="unknown test data set 'nope'; known: demo"):
        tool.missing_files('nope')


# ------------------------------------------------------------------------------------------------ fetching
def test_fetch_downloads_what_is_missing_and_derives_the_csv(demo, capsys):
    server, root = demo
    status, out, err = _run(capsys, 'demo', '--dest', str(root))
    assert status == 0, err
    assert out.strip() == f'4 files of demo under {root}: 0 already correct, 3 downloaded, 1 derived'
    for path, data in FILES.items():
        assert (root / 'demo' / path).read_bytes() == data
    assert (root / 'demo' / 'metrics.csv').read_bytes() == CSV
    assert tool.missing_files('demo', root) == [] and _leftovers(root) == []
    # Run again: everything is correct, the server is not asked.
    asked = len(server.requests)
    status, out, _ = _run(capsys, 'demo', '--dest', str(root))
    assert status == 0 and len(server.requests) == asked
    assert '4 already correct, 0 downloaded, 0 derived' in out


def test_interrupted_run_resumes_and_keeps_what_is_correct(demo, capsys):
    server, root = demo
    server.cut_after = 60_000  # the first file's connection drops after 60 kB of its 150 kB
    status, _, err = _run(capsys, 'demo', '--dest', str(root))
    assert status == 1
    assert 'FAILED demo/sr/img_1.png: ' in err and 'connection closed after 60000 of 150000 bytes' in err
    assert '1 FAILED: demo/sr/img_1.png. Run the command again' in err
    assert not (root / 'demo' / 'sr' / 'img_1.png').exists()  # never a half file in place
    assert (root / 'demo' / 'sr' / 'img_1.png.part').stat().st_size == 60_000
    assert tool.missing_files('demo', root) == ['sr/img_1.png']
    server.requests.clear()
    status, out, err = _run(capsys, 'demo', '--dest', str(root))
    assert status == 0, err
    assert server.requests == [('/sr_img_1.png', 'bytes=60000-')]  # only the rest of the cut file
    assert server.bytes_sent == sum(len(d) for d in FILES.values())  # nothing twice
    assert '3 already correct, 1 downloaded, 0 derived' in out
    assert (root / 'demo' / 'sr' / 'img_1.png').read_bytes() == FILES['sr/img_1.png'] and _leftovers(root) == []


def test_a_file_with_the_wrong_digest_is_refused_and_not_left_in_place(demo, capsys):
    server, root = demo
    (server.root / 'sr_img_2.png').write_bytes(b'someone replaced it')
    wrong = root / 'demo' / 'sr' / 'img_2.png'
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(b'a stale local copy')
    status, _, err = _run(capsys, 'demo', '--dest', str(root))
    assert status == 1
    assert 'demo/sr/img_2.png had the wrong sha256: removed, fetching it again' in err
    assert f'FAILED demo/sr/img_2.png: {server.url}/sr_img_2.png sent a file with sha256 ' \
           f'{hashlib.sha256(b"someone replaced it").hexdigest()}, expected' in err
    assert 'refused and deleted' in err
    assert not wrong.exists() and _leftovers(root) == []
    assert tool.missing_files('demo', root) == ['sr/img_2.png']  # the others came, the csv too
    assert (root / 'demo' / 'metrics.csv').read_bytes() == CSV


def test_offline_ends_in_one_paragraph(demo, capsys, monkeypatch):
    _, root = demo
    manifest = json.loads(tool.MANIFEST_PATH.read_text(encoding='utf-8'))
    for entry in manifest['datasets']['demo']['files']:
        if 'url' in entry:
            entry['url'] = entry['url'].replace(demo[0].url, demo[0].down_url('').rstrip('/'))
    tool.MANIFEST_PATH.write_text(json.dumps(manifest), encoding='utf-8')
    monkeypatch.delenv(tool.TEST_DATA_ENV, raising=False)
    status, out, err = _run(capsys, 'demo', '--dest', str(root))
    assert status == 1 and out == ''
    assert 'Traceback' not in err and err.count('\n') == 1  # one paragraph, nothing else
    assert err.startswith("Could not fetch the published test data: 4 file(s) of 'demo' (https://github.com/someone"
                          "/demo at commit abababababab, via 127.0.0.1:")
    assert f'copy each data set folder from a machine that has it (CI keeps them in ../shared/fixtures) to {root}/' \
           '<name>/, or put them in any folder and set PORTRAITISR_TEST_DATA to it' in err
    assert '`python tools/fetch_test_data.py --check demo`' in err
    assert _leftovers(root) == []


def test_setup_errors_exit_2(demo, capsys, tmp_path):
    status, _, err = _run(capsys, 'demo', 'nope')
    assert status == 2 and err == "error: unknown test data set 'nope'; known: demo\n"
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    status, _, err = _run(capsys, 'demo', '--dest', str(blocker / 'sub'))
    assert status == 2 and err.startswith(f'error: cannot write to {blocker}/sub/demo (')
    assert err.endswith('choose another --dest or set PORTRAITISR_TEST_DATA\n')
    assert _run(capsys, '--check', 'nope')[0] == 2 and _run(capsys, '--list', 'nope')[0] == 2


def test_check_finds_a_corrupted_file_and_fetch_repairs_it(demo, capsys):
    _, root = demo
    assert _run(capsys, 'demo', '--dest', str(root))[0] == 0
    status, out, _ = _run(capsys, '--check', '--dest', str(root))
    assert status == 0 and out == f'demo: 4 of 4 files correct under {root}/demo\n'
    image = root / 'demo' / 'sr' / 'img_2.png'
    data = bytearray(image.read_bytes())
    data[100] ^= 1
    image.write_bytes(bytes(data))
    os.utime(image, ns=(1, 1))  # a new modification time, whatever the file system's clock resolution
    (root / 'demo' / 'metrics.csv').unlink()
    status, out, _ = _run(capsys, '--check', '--dest', str(root))
    assert status == 1
    assert out.splitlines() == [
        'MISMATCH demo/sr/img_2.png: its sha256 is not the pinned one (fetch it again: '
        'python tools/fetch_test_data.py demo)',
        f'demo: 2 of 4 files correct under {root}/demo, 1 differ, 1 missing (run python tools/fetch_test_data.py '
        'demo)']
    assert _run(capsys, 'demo', '--dest', str(root))[0] == 0
    assert _run(capsys, '--check', '--dest', str(root))[0] == 0


def test_list_shows_counts_sizes_and_presence(demo, capsys):
    _, root = demo
    (root / 'demo').mkdir(parents=True)
    (root / 'demo' / 'metrics.log').write_bytes(LOG)
    status, out, _ = _run(capsys, '--list', '--dest', str(root))
    size = (sum(len(d) for d in FILES.values()) + len(CSV)) / 2 ** 20
    assert status == 0
    assert out.splitlines() == [
        f'demo: 4 files, {size:.1f} MiB, 1 present under {root}/demo',
        '    two made-up images and their scores',
        f'    source: https://github.com/someone/demo at commit {"ab" * 20}',
        '    licence: test only']


def test_osediff_metrics_csv():
    assert tool.osediff_metrics_csv(LOG, ['img_2.png', 'img_1.png']) == CSV  # the log's order
    with pytest.raises(ValueError, match=r"the log has no score line for \['img_9.png'\]"):
        tool.osediff_metrics_csv(LOG, ['img_1.png', 'img_9.png'])


# ------------------------------------------------------------------------------------------------ the real data
@pytest.mark.parametrize('name', tool.dataset_names())
def test_manifest_matches_the_shared_folder(name):
    dataset = tool.load_manifest()['datasets'][name]
    folder = require_test_data(name)
    repository, commit = dataset['source']['repository'], dataset['source']['commit']
    for entry in dataset['files']:
        data = (folder / entry['path']).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry['size'], entry['sha256']), entry['path']
        if 'url' in entry:
            assert entry['url'].startswith(f'https://raw.githubusercontent.com/{repository}/{commit}/'), entry['url']
        else:
            assert entry['recipe'] in tool.RECIPES and entry['derived_from'] in {f['path'] for f in dataset['files']}
    # every file of the folder is in the manifest (README.md aside)
    listed = {e['path'] for e in dataset['files']}
    present = {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()}
    assert present - listed == set()


@pytest.mark.parametrize('subset', ['realsr', 'drealsr'])
def test_csv_derivation_reproduces_the_shared_csv(subset):
    folder = require_test_data('osediff_bench') / subset
    images = sorted(p.name for p in (folder / 'sr').iterdir())
    assert len(images) == 20
    made = tool.osediff_metrics_csv((folder / 'osediff_metrics.log').read_bytes(), images)
    assert made == (folder / 'osediff_metrics.csv').read_bytes()  # byte for byte


def test_the_real_manifest_fetches_from_a_copy_of_its_source(file_server, tmp_path, monkeypatch, capsys):
    """osediff_bench as the manifest describes it, served at the manifest's own URL paths from the shared files: every
    file arrives with its pinned digest, and both csv files are derived from the logs."""
    folder = require_test_data('osediff_bench')
    manifest = tool.load_manifest()
    github = 'https://raw.githubusercontent.com'
    for entry in manifest['datasets']['osediff_bench']['files']:
        if 'url' in entry:
            served = file_server.root / entry['url'][len(github) + 1:]
            served.parent.mkdir(parents=True, exist_ok=True)
            served.symlink_to(folder / entry['path'])
            entry['url'] = file_server.url + entry['url'][len(github):]
    path = tmp_path / 'manifest.json'
    path.write_text(json.dumps(manifest), encoding='utf-8')
    monkeypatch.setattr(tool, 'MANIFEST_PATH', path)
    status, out, err = _run(capsys, 'osediff_bench', '--dest', str(tmp_path / 'data'))
    assert status == 0, err
    assert out == f'124 files of osediff_bench under {tmp_path}/data: 0 already correct, 122 downloaded, 2 derived\n'
    assert _run(capsys, '--check', 'osediff_bench', '--dest', str(tmp_path / 'data'))[0] == 0
