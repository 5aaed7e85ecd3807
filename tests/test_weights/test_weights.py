"""Tests of the weights floor: local look-ups, downloads from a local HTTP server, hub-layout folders, loading.

Nothing here reaches the internet: an autouse fixture makes any connection outside 127.0.0.1 fail, and the
download tests use a threaded ``http.server`` on 127.0.0.1 that speaks HTTP Range like a real file host.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from portraitisr.weights import (CheckpointLoadError, ChecksumError, InsecureURLError, WeightsNotFoundError,
                                 check_download_url, load_state_dict, portraitisr_home, resolve_file,
                                 resolve_pretrained_dir)
from tests.helpers.data_files import REPO_ROOT


# ------------------------------------------------------------------------------------------------ fixtures
# The loopback Range server (fixture ``file_server``), ``no_internet`` and ``weight_env`` are shared with
# tests/test_apis/test_model_zoo.py through this plugin module.
pytest_plugins = ('tests.helpers.file_server',)


@pytest.fixture(autouse=True)
def offline(no_internet):
    """Every test here runs with connections beyond loopback refused."""


@pytest.fixture
def env(weight_env):
    return weight_env


def _serve(server, name, data):
    return server.serve(name, data)


def _payload(size=300_000, seed=0):
    return torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy(
    ).tobytes()


# ------------------------------------------------------------------------------------------------ local files
def test_import_is_light():
    code = ('import sys, portraitisr.weights; '
            "bad = [m for m in ('torch', 'huggingface_hub', 'safetensors') if m in sys.modules]; "
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO_ROOT)


def test_portraitisr_home_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'x'))
    assert portraitisr_home() == tmp_path / 'x'
    monkeypatch.delenv('PORTRAITISR_HOME')
    assert portraitisr_home() == Path('~/.cache/portraitisr').expanduser()


def test_explicit_path_returned_and_verified(env, tmp_path):
    data = b'weights' * 100
    target = tmp_path / 'elsewhere' / 'model.pth'
    target.parent.mkdir()
    target.write_bytes(data)
    assert resolve_file(target) == target
    assert resolve_file(str(target), sha256=hashlib.sha256(data).hexdigest()) == target
    with pytest.raises(ChecksumError, match='expected ' + '0' * 64):
        resolve_file(target, sha256='0' * 64)
    assert target.read_bytes() == data  # the user's own file is never deleted


def test_cache_hit_in_portraitisr_home(env):
    (env['home'] / 'sub').mkdir(parents=True)
    (env['home'] / 'RealESRGAN_x4plus.pth').write_bytes(b'a')
    (env['home'] / 'sub' / 'parsing.pth').write_bytes(b'b')
    assert resolve_file('RealESRGAN_x4plus.pth') == env['home'] / 'RealESRGAN_x4plus.pth'
    assert resolve_file('sub/parsing.pth') == env['home'] / 'sub' / 'parsing.pth'
    # A URL whose file is already cached needs no permission and no server.
    assert resolve_file('http://127.0.0.1:9/RealESRGAN_x4plus.pth') == env['home'] / 'RealESRGAN_x4plus.pth'


def test_other_tools_caches_count_only_with_a_matching_sha256(env):
    """torch hub, pyiqa and the Hugging Face cache hold whatever anything downloaded under a name: such a file is
    used when its sha256 matches, and never without one (it is named as present but not used)."""
    ckpt = env['torch_home'] / 'hub' / 'checkpoints' / 'vgg16-397923af.pth'
    pyiqa = env['torch_home'] / 'hub' / 'pyiqa' / 'LPIPS_v0.1_alex-df73285e.pth'
    for f in (ckpt, pyiqa):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f.name.encode())
    sha = {f: hashlib.sha256(f.name.encode()).hexdigest() for f in (ckpt, pyiqa)}
    assert resolve_file('vgg16-397923af.pth', sha256=sha[ckpt]) == ckpt
    assert resolve_file({'filename': 'LPIPS_v0.1_alex-df73285e.pth', 'sha256': sha[pyiqa]}) == pyiqa
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_file('vgg16-397923af.pth')
    assert f'{ckpt} (torch hub checkpoints: present but not used' in str(info.value)
    assert f'if you trust {ckpt}, copy it to {env["home"] / "vgg16-397923af.pth"}' in str(info.value)
    # Copied into PORTRAITISR_HOME it is the user's file and is used as is.
    env['home'].mkdir()
    (env['home'] / 'vgg16-397923af.pth').write_bytes(ckpt.read_bytes())
    assert resolve_file('vgg16-397923af.pth') == env['home'] / 'vgg16-397923af.pth'


def test_hf_url_found_in_hf_cache_only_when_verified(env):
    commit = 'a' * 40
    repo = env['hf_cache'] / 'models--chaofengc--IQA-PyTorch-Weights'
    snap = repo / 'snapshots' / commit
    snap.mkdir(parents=True)
    (snap / 'DISTS_weights-f5e65c96.pth').write_bytes(b'dists')
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    url = 'https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/DISTS_weights-f5e65c96.pth'
    assert resolve_file(url, sha256=hashlib.sha256(b'dists').hexdigest()).read_bytes() == b'dists'
    with pytest.raises(WeightsNotFoundError, match='Hugging Face cache.*present but not used'):
        resolve_file(url)


def test_missing_offline_error_names_file_places_and_remedies(env, file_server):
    url = f'{file_server.url}/codeformer.pth'
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_file({'url': url, 'sha256': '1' * 64})
    message = str(info.value)
    assert "'codeformer.pth'" in message
    hub = env['torch_home'] / 'hub'
    for place in (env['home'] / 'codeformer.pth', hub / 'checkpoints' / 'codeformer.pth',
                  hub / 'pyiqa' / 'codeformer.pth', env['torch_home'] / 'checkpoints' / 'codeformer.pth'):
        assert str(place) in message
        assert any(str(place) in looked for looked in info.value.looked)
    assert 'allow_download=True' in message and 'PORTRAITISR_ALLOW_DOWNLOAD=1' in message and url in message
    assert 'PORTRAITISR_HOME' in message and 'explicit path' in message
    assert isinstance(info.value, FileNotFoundError)
    assert file_server.requests == []  # not allowed, so never contacted


def test_missing_without_url_says_so(env):
    with pytest.raises(WeightsNotFoundError, match='no download URL is known'):
        resolve_file('arcface_ir50.pth', allow_download=True)


def test_missing_absolute_path_is_an_error(env, tmp_path):
    (env['home']).mkdir()
    (env['home'] / 'model.pth').write_bytes(b'x')
    # An absolute path names a place: a same-named cached file is not silently used instead.
    with pytest.raises(WeightsNotFoundError, match='does not exist'):
        resolve_file(tmp_path / 'nowhere' / 'model.pth')


def test_cached_copy_with_wrong_sha_is_skipped(env):
    env['home'].mkdir()
    (env['home'] / 'model.pth').write_bytes(b'old version')
    with pytest.raises(WeightsNotFoundError, match='present but sha256 is'):
        resolve_file('model.pth', sha256=hashlib.sha256(b'new version').hexdigest())


def test_bad_specs_rejected(env):
    with pytest.raises(ValueError, match='64 hexadecimal'):
        resolve_file('x.pth', sha256='abc')
    with pytest.raises(ValueError, match='unknown weight spec keys'):
        resolve_file({'pth': 'x'})
    with pytest.raises(ValueError, match='inside the cache'):
        resolve_file({'filename': '../escape.pth'})


# ------------------------------------------------------------------------------------------------ downloads
def test_download_full_with_sha256(env, file_server):
    data = _payload()
    url, sha = _serve(file_server, 'osediff.pkl', data)
    path = resolve_file(url, sha256=sha, allow_download=True, progress=False)
    assert path == env['home'] / 'osediff.pkl'
    assert path.read_bytes() == data
    assert file_server.requests == [('/osediff.pkl', None)]
    assert sorted(p.name for p in env['home'].iterdir()) == ['osediff.pkl']  # no .part or .lock left
    # Second time: a cache hit, the server is not asked again.
    assert resolve_file(url, sha256=sha, allow_download=True) == path
    assert len(file_server.requests) == 1


def test_download_permission_from_env(env, file_server, monkeypatch):
    url, sha = _serve(file_server, 'a.pth', b'abc')
    with pytest.raises(WeightsNotFoundError):
        resolve_file(url, sha256=sha)
    monkeypatch.setenv('PORTRAITISR_ALLOW_DOWNLOAD', '1')
    assert resolve_file(url, sha256=sha, progress=False).read_bytes() == b'abc'
    # An explicit False beats the environment.
    with pytest.raises(WeightsNotFoundError):
        resolve_file(f'{file_server.url}/b.pth', allow_download=False)


def test_download_dict_spec_with_filename(env, file_server):
    data = _payload(1000)
    url, sha = _serve(file_server, 'name_on_server.bin', data)
    path = resolve_file({'url': url, 'sha256': sha, 'filename': 'restorers/local_name.pth'}, allow_download=True,
                        progress=False)
    assert path == env['home'] / 'restorers' / 'local_name.pth'
    assert path.read_bytes() == data


def _leftovers(home, name):
    return sorted(p.name for p in home.iterdir() if p.name.startswith(name) and p.name != name)


def test_interrupted_download_resumes_with_if_range(env, file_server):
    data = _payload(250_000, seed=1)
    url, sha = _serve(file_server, 'big.pth', data)
    file_server.cut_after = 100_000  # the connection drops after 100 kB of the announced 250 kB
    with pytest.raises(WeightsNotFoundError, match='connection closed after 100000 of 250000 bytes') as info:
        resolve_file(url, sha256=sha, allow_download=True, progress=False)
    assert 'Running again resumes the download' in str(info.value)
    home = env['home']
    assert not (home / 'big.pth').exists()
    assert _leftovers(home, 'big.pth') == ['big.pth.part', 'big.pth.part.json']  # no .lock left behind
    path = resolve_file(url, sha256=sha, allow_download=True, progress=False)
    assert path.read_bytes() == data
    assert file_server.requests[-1] == ('/big.pth', 'bytes=100000-')
    assert file_server.if_range[-1].startswith('"')  # the ETag of the version the .part began with
    assert file_server.bytes_sent == len(data)  # 100 kB + the remaining 150 kB: nothing twice
    assert _leftovers(home, 'big.pth') == []


def test_cut_download_without_sha256_is_never_moved_into_place(env, file_server):
    data = _payload(50_000, seed=4)
    url, _ = _serve(file_server, 'cut.pth', data)
    # With Content-Length the cut is seen ...
    file_server.cut_after = 20_000
    with pytest.raises(WeightsNotFoundError, match='connection closed after 20000 of 50000'):
        resolve_file(url, allow_download=True, progress=False)
    assert not (env['home'] / 'cut.pth').exists()
    # ... without it, a cut body would look complete: refused unless a sha256 can tell.
    (env['home'] / 'cut.pth.part').unlink()
    (env['home'] / 'cut.pth.part.json').unlink()
    file_server.send_length, file_server.cut_after = False, 20_000
    with pytest.raises(WeightsNotFoundError, match='did not say how long the file is'):
        resolve_file(url, allow_download=True, progress=False)
    assert _leftovers(env['home'], 'cut.pth') == [] and not (env['home'] / 'cut.pth').exists()
    sha = hashlib.sha256(data).hexdigest()
    file_server.cut_after = 20_000
    with pytest.raises(ChecksumError):
        resolve_file(url, sha256=sha, allow_download=True, progress=False)
    assert resolve_file(url, sha256=sha, allow_download=True, progress=False).read_bytes() == data


@pytest.mark.parametrize('honour_if_range', [True, False])
def test_part_of_a_replaced_file_is_not_joined_to_the_new_one(env, file_server, honour_if_range):
    """The .part began with version A; the server now has B (same length). If-Range makes the server send all of
    B (200); a server that ignores If-Range sends B's tail with B's ETag (206), which is refused too."""
    old, new = _payload(60_000, seed=5), _payload(60_000, seed=6)
    url, _ = _serve(file_server, 'swap.pth', old)
    file_server.cut_after = 25_000
    with pytest.raises(WeightsNotFoundError):
        resolve_file(url, allow_download=True, progress=False)
    _serve(file_server, 'swap.pth', new)
    file_server.honour_if_range = honour_if_range
    with pytest.warns(UserWarning, match='without a sha256'):
        path = resolve_file(url, allow_download=True, progress=False)
    assert path.read_bytes() == new
    assert file_server.requests[1] == ('/swap.pth', 'bytes=25000-')  # a resume was tried ...
    assert file_server.requests[-1][0] == '/swap.pth'  # ... and all of B came in the end
    assert _leftovers(env['home'], 'swap.pth') == []


def test_part_without_a_validator_is_not_kept(env, file_server):
    """A server that sends neither ETag nor Last-Modified gives nothing to resume against: the .part of a cut
    download is deleted, and the next attempt downloads the whole file without a Range header."""
    data = _payload(40_000, seed=7)
    url, sha = _serve(file_server, 'nov.pth', data)
    file_server.validators, file_server.cut_after = False, 10_000
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_file(url, sha256=sha, allow_download=True, progress=False)
    assert 'resumes' not in str(info.value)
    assert _leftovers(env['home'], 'nov.pth') == []
    assert resolve_file(url, sha256=sha, allow_download=True, progress=False).read_bytes() == data
    assert file_server.requests[-1] == ('/nov.pth', None)


@pytest.mark.parametrize('pinned', [True, False])
def test_junk_part_on_a_416_reply_is_never_moved_into_place(env, file_server, pinned):
    """A .part (with a record) longer than the file now on a server that ignores If-Range: the range reply is
    416. The junk is thrown away and the real file downloaded, with or without a sha256."""
    data = _payload(5_000, seed=8)
    url, sha = _serve(file_server, 'j.pth', data)
    env['home'].mkdir()
    (env['home'] / 'j.pth.part').write_bytes(b'junk' * 2000)  # 8000 bytes
    (env['home'] / 'j.pth.part.json').write_text(json.dumps({'url': url, 'validator': '"old"', 'length': 9000}))
    file_server.honour_if_range = False
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        path = resolve_file(url, sha256=sha if pinned else None, allow_download=True, progress=False)
    assert path.read_bytes() == data
    assert [r[1] for r in file_server.requests] == ['bytes=8000-', None]
    assert _leftovers(env['home'], 'j.pth') == []


def test_redirects_may_not_downgrade_or_leave_http(env, file_server):
    data = b'the real file'
    real_url, sha = _serve(file_server, 'real.pth', data)
    file_server.redirects = {'/to_ftp.pth': (302, 'ftp://127.0.0.1/real.pth'),
                             '/to_remote_http.pth': (301, 'http://example.invalid/real.pth'),
                             '/to_loopback.pth': (302, '/real.pth')}
    for name, why in (('to_ftp.pth', 'ftp URL'), ('to_remote_http.pth', 'plain http from example.invalid')):
        with pytest.raises(WeightsNotFoundError, match=why) as info:
            resolve_file(f'{file_server.url}/{name}', sha256=sha, allow_download=True, progress=False)
        assert f'redirected from {file_server.url}/{name}' in str(info.value)
        assert _leftovers(env['home'], name) == [] and not (env['home'] / name).exists()
    # A redirect within the loopback server is followed.
    path = resolve_file(f'{file_server.url}/to_loopback.pth', sha256=sha, allow_download=True, progress=False)
    assert path.read_bytes() == data


def test_download_url_rules():
    check_download_url('https://github.com/x/y/releases/download/v1/w.pth')
    check_download_url('http://127.0.0.1:8000/w.pth')
    check_download_url('http://localhost/w.pth')
    check_download_url('https://cdn.example.com/w.pth', previous='http://127.0.0.1/w.pth')  # an upgrade is fine
    for url, previous, message in (('http://example.com/w.pth', None, 'plain http from example.com'),
                                   ('ftp://example.com/w.pth', None, 'ftp URL'),
                                   ('file:///etc/passwd', None, 'file URL'),
                                   ('http://127.0.0.1/w.pth', 'https://example.com/w.pth', 'from https to plain http'),
                                   ('ftp://example.com/w.pth', 'https://example.com/w.pth', 'ftp URL')):
        with pytest.raises(InsecureURLError, match=message):
            check_download_url(url, previous=previous)


def test_plain_http_to_a_remote_host_is_refused_before_connecting(env):
    # The no_internet fixture would fail the test if a connection were attempted.
    with pytest.raises(WeightsNotFoundError, match='plain http'):
        resolve_file('http://example.com/w.pth', allow_download=True, progress=False)
    assert not (env['home'] / 'w.pth').exists()


def test_download_restarts_when_server_ignores_range(env, file_server):
    data = _payload(50_000, seed=2)
    url, sha = _serve(file_server, 'm.pth', data)
    env['home'].mkdir()
    (env['home'] / 'm.pth.part').write_bytes(b'stale bytes from another file')
    file_server.honour_range = False
    assert resolve_file(url, sha256=sha, allow_download=True, progress=False).read_bytes() == data


def test_download_of_complete_part_file_is_finished(env, file_server):
    data = _payload(10_000, seed=3)
    url, sha = _serve(file_server, 'done.pth', data)
    env['home'].mkdir()
    (env['home'] / 'done.pth.part').write_bytes(data)  # a run that stopped right before the rename
    assert resolve_file(url, sha256=sha, allow_download=True, progress=False).read_bytes() == data
    assert file_server.bytes_sent == 0


def test_corrupted_download_rejected(env, file_server):
    url, _ = _serve(file_server, 'corrupt.pth', b'tampered bytes')
    expected = hashlib.sha256(b'the real bytes').hexdigest()
    got = hashlib.sha256(b'tampered bytes').hexdigest()
    with pytest.raises(ChecksumError) as info:
        resolve_file(url, sha256=expected, allow_download=True, progress=False)
    assert expected in str(info.value) and got in str(info.value)
    assert not (env['home'] / 'corrupt.pth').exists()
    assert not (env['home'] / 'corrupt.pth.part').exists()


def test_download_without_sha256_warns(env, file_server):
    url, _ = _serve(file_server, 'nosha.pth', b'xyz')
    with pytest.warns(UserWarning, match='without a sha256'):
        path = resolve_file(url, allow_download=True, progress=False)
    assert path.read_bytes() == b'xyz'


def test_server_down_gives_clear_error(env):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/weights.pth'
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_file(url, sha256='2' * 64, allow_download=True, progress=False)
    message = str(info.value)
    assert f'Downloading {url}' in message and 'failed' in message
    assert str(env['home'] / 'weights.pth') in message
    assert not (env['home'] / 'weights.pth').exists()


def test_http_404_gives_clear_error_and_leaves_no_lock(env, file_server):
    with pytest.raises(WeightsNotFoundError, match='404'):
        resolve_file(f'{file_server.url}/missing.pth', allow_download=True, progress=False)
    assert sorted(p.name for p in env['home'].iterdir()) == []


# ------------------------------------------------------------------------------------------------ trust on first use
def test_trust_on_first_use_records_the_first_download_and_refuses_a_different_one(env, file_server):
    first, second = b'weights as first published', b'weights swapped later'
    url, sha = _serve(file_server, 'tofu.pth', first)
    with pytest.warns(UserWarning, match='trust on first use'):
        path = resolve_file(url, allow_download=True, progress=False, trust_on_first_use=True)
    record = env['home'] / 'tofu.pth.sha256'
    assert path.read_bytes() == first and record.read_text() == f'{sha}  tofu.pth\n'
    # The file is lost and the server now serves other bytes: refused, and the record stays.
    path.unlink()
    _serve(file_server, 'tofu.pth', second)
    with pytest.raises(ChecksumError, match='differs from the one first downloaded') as info:
        resolve_file(url, allow_download=True, progress=False, trust_on_first_use=True)
    assert f'delete {record}' in str(info.value)
    assert not path.exists() and record.read_text() == f'{sha}  tofu.pth\n'
    # A different file put in place by hand is not used either.
    path.write_bytes(second)
    with pytest.raises(WeightsNotFoundError, match='recorded at its first download'):
        resolve_file(url, progress=False, trust_on_first_use=True)


def test_trust_on_first_use_of_a_file_already_in_portraitisr_home(env):
    env['home'].mkdir()
    (env['home'] / 'mine.pth').write_bytes(b'copied by hand')
    assert resolve_file('mine.pth', trust_on_first_use=True) == env['home'] / 'mine.pth'
    assert (env['home'] / 'mine.pth.sha256').read_text().split()[0] == hashlib.sha256(b'copied by hand').hexdigest()
    (env['home'] / 'mine.pth.sha256').write_text('not a digest')
    with pytest.raises(ChecksumError, match='does not hold a sha256'):
        resolve_file('mine.pth', trust_on_first_use=True)


# ------------------------------------------------------------------------------------------------ hub folders
SD_REQUIRED = ('unet/config.json', 'vae/config.json')


def _fake_snapshot(cache, repo_id, commit, files, ref='main'):
    """Build the huggingface_hub cache layout: blobs, snapshots/<commit>/ symlinks and refs/<ref>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / 'snapshots' / commit
    for i, rel in enumerate(files):
        blob = repo / 'blobs' / f'{commit[:8]}{i:04d}'
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text('{}')
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snap / rel).parent), snap / rel)
    if ref is not None:
        (repo / 'refs').mkdir(exist_ok=True)
        (repo / 'refs' / ref).write_text(commit)
    return snap


def test_pretrained_explicit_folder(env, tmp_path):
    folder = tmp_path / 'sd21'
    for rel in SD_REQUIRED:
        (folder / rel).parent.mkdir(parents=True)
        (folder / rel).write_text('{}')
    assert resolve_pretrained_dir(folder, required=SD_REQUIRED) == folder
    with pytest.raises(WeightsNotFoundError, match='text_encoder/config.json'):
        resolve_pretrained_dir(str(folder), required=SD_REQUIRED + ('text_encoder/config.json',))


def test_pretrained_hub_id_in_portraitisr_home(env):
    folder = env['home'] / 'stabilityai--stable-diffusion-2-1-base'
    for rel in SD_REQUIRED:
        (folder / rel).parent.mkdir(parents=True)
        (folder / rel).write_text('{}')
    assert resolve_pretrained_dir('stabilityai/stable-diffusion-2-1-base', required=SD_REQUIRED) == folder


def test_pretrained_hub_id_in_hf_cache(env):
    old, new = '1' * 40, '2' * 40
    _fake_snapshot(env['hf_cache'], 'stabilityai/stable-diffusion-2-1-base', old, SD_REQUIRED, ref=None)
    snap = _fake_snapshot(env['hf_cache'], 'stabilityai/stable-diffusion-2-1-base', new,
                          SD_REQUIRED + ('model_index.json',))
    assert resolve_pretrained_dir('stabilityai/stable-diffusion-2-1-base', required=SD_REQUIRED) == snap
    # A commit pin picks that snapshot, not refs/main.
    pinned = resolve_pretrained_dir(f'stabilityai/stable-diffusion-2-1-base@{old}', required=SD_REQUIRED)
    assert pinned == snap.parent / old


def test_pretrained_hf_cache_without_refs_uses_complete_snapshot(env):
    snap = _fake_snapshot(env['hf_cache'], 'org/model', '3' * 40, SD_REQUIRED, ref=None)
    assert resolve_pretrained_dir('org/model', required=SD_REQUIRED) == snap


def test_pretrained_required_missing_is_named(env):
    _fake_snapshot(env['hf_cache'], 'org/model', '4' * 40, ('unet/config.json',))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_pretrained_dir('org/model', required=SD_REQUIRED)
    message = str(info.value)
    assert 'missing vae/config.json' in message
    assert str(env['home'] / 'org--model') in message
    assert 'allow_download=True' in message


def test_pretrained_not_found_offline_lists_places(env):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_pretrained_dir('stabilityai/stable-diffusion-2-1-base@main', required=SD_REQUIRED)
    message = str(info.value)
    assert "'stabilityai/stable-diffusion-2-1-base@main'" in message
    assert str(env['home'] / 'stabilityai--stable-diffusion-2-1-base') in message
    assert str(env['hf_cache'] / 'models--stabilityai--stable-diffusion-2-1-base') in message
    assert 'unet/config.json, vae/config.json' in message


def test_pretrained_download_uses_selected_files(env, monkeypatch):
    import huggingface_hub

    repo_files = ['model_index.json', 'v2-1_512-ema-pruned.ckpt', 'v2-1_512-ema-pruned.safetensors',
                  'unet/config.json', 'unet/diffusion_pytorch_model.bin',
                  'unet/diffusion_pytorch_model.safetensors', 'unet/diffusion_pytorch_model.fp16.safetensors',
                  'unet/diffusion_pytorch_model.non_ema.bin', 'vae/config.json', 'vae/diffusion_pytorch_model.bin',
                  'vae/diffusion_flax_model.msgpack', 'tokenizer/vocab.json', 'tokenizer/merges.txt']
    calls = {}

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            calls['listed'] = (repo_id, revision)
            return repo_files

    def fake_snapshot_download(repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                               allow_patterns=None, ignore_patterns=None, **_):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError('not cached')
        calls['download'] = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=allow_patterns)
        snap = Path(cache_dir) / 'downloaded'
        for rel in allow_patterns:
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            (snap / rel).write_text('{}')
        return str(snap)

    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', fake_snapshot_download)
    folder = resolve_pretrained_dir('org/sd@v1', required=SD_REQUIRED, allow_download=True)
    assert folder == env['hf_cache'] / 'downloaded'
    assert calls['listed'] == ('org/sd', 'v1')
    assert calls['download']['allow_patterns'] == [
        'model_index.json', 'tokenizer/merges.txt', 'tokenizer/vocab.json', 'unet/config.json',
        'unet/diffusion_pytorch_model.safetensors', 'vae/config.json', 'vae/diffusion_pytorch_model.bin']


# ------------------------------------------------------------------------------------------------ loading
class CustomObject:
    def __init__(self):
        self.value = 3


def test_load_safetensors_round_trip(tmp_path):
    tensors = {'conv.weight': torch.randn(4, 3, 3, 3), 'conv.bias': torch.arange(4.)}
    save_file(tensors, tmp_path / 'w.safetensors')
    loaded = load_state_dict(tmp_path / 'w.safetensors')
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_load_torch_dict_round_trip(tmp_path):
    checkpoint = {'params_ema': {'w': torch.randn(2, 2)}, 'step': 7, 'names': ['a', 'b']}
    torch.save(checkpoint, tmp_path / 'w.pth')
    loaded = load_state_dict(tmp_path / 'w.pth')
    assert loaded['step'] == 7 and loaded['names'] == ['a', 'b']
    assert torch.equal(loaded['params_ema']['w'], checkpoint['params_ema']['w'])


def test_load_refuses_arbitrary_objects(tmp_path):
    torch.save({'w': torch.zeros(1), 'obj': CustomObject()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointLoadError, match='CustomObject') as info:
        load_state_dict(tmp_path / 'evil.pth')
    assert 'arbitrary code' in str(info.value)
    # Types the caller vouches for can be allow-listed explicitly.
    assert load_state_dict(tmp_path / 'evil.pth', safe_globals=[CustomObject])['obj'].value == 3


def test_load_rejects_garbage_and_non_dicts(tmp_path):
    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointLoadError, match='not a readable torch checkpoint'):
        load_state_dict(tmp_path / 'garbage.pth')
    (tmp_path / 'bad.safetensors').write_bytes(b'\x00' * 20)
    with pytest.raises(CheckpointLoadError, match='not a valid safetensors'):
        load_state_dict(tmp_path / 'bad.safetensors')
    torch.save(torch.zeros(2), tmp_path / 'tensor.pth')
    with pytest.raises(TypeError, match='not a dict'):
        load_state_dict(tmp_path / 'tensor.pth')


def test_pretrained_download_offline_is_one_clear_error(env, monkeypatch):
    # huggingface_hub on httpx raises httpx's ConnectError on a machine without network, which is not an OSError:
    # it must still end as WeightsNotFoundError (the CLI prints that as one paragraph), not as a traceback.
    import huggingface_hub
    import huggingface_hub.utils._http as hub_http

    httpx = sys.modules[next(name for name in ('httpx2', 'httpx') if hasattr(hub_http, name))]

    class OfflineApi:
        def list_repo_files(self, repo_id, revision=None):
            raise httpx.ConnectError('[Errno -2] Name or service not known')

    monkeypatch.setattr(huggingface_hub, 'HfApi', OfflineApi)
    with pytest.raises(WeightsNotFoundError, match=r'Downloading org/sd failed: \[Errno -2\] Name or service not'):
        resolve_pretrained_dir('org/sd', required=SD_REQUIRED, allow_download=True)
