"""The model-zoo index (shipped entries validate, configs exist, docs list them) and its downloads, tested against
a loopback HTTP server: partial download resumed, corrupted file rejected, unpinned entries trusted on first use
(and never taken from another tool's cache), every failure reported in one paragraph.
"""
import dataclasses
import hashlib
import json
import re

import pytest

from portraitisr.apis import model_zoo
from portraitisr.apis.config_location import configs_root, zoo_config_path
from portraitisr.weights import WeightsNotFoundError
from tests.helpers.data_files import REPO_ROOT

pytest_plugins = ('tests.helpers.file_server',)


@pytest.fixture(autouse=True)
def offline(no_internet):
    """Connections beyond loopback fail."""


# ------------------------------------------------------------------------------------------------ shipped index
def test_shipped_index_validates_and_every_config_exists():
    zoo = model_zoo.load_index()
    assert {'headsup_sd21', 'osediff_sd21', 'osediff_face_sd21', 'realesrgan_codeformer',
            'osediff_osediff_face'} <= set(zoo.models)
    assert {'sd21_base', 'osediff', 'osediff_face', 'realesrgan_x2plus', 'realesrgan_x4plus', 'codeformer',
            'retinaface_resnet50', 'parsenet', 'arcface_ir_se50'} <= set(zoo.weights)
    for entry in zoo.models.values():
        assert (REPO_ROOT / entry.config).is_file(), entry.config
        assert zoo_config_path(entry.config, entry.name) == configs_root() / entry.config[len('configs/'):]
    # HeadsUp is not released: marked so, with how to train it, and with the paper's Table 2 numbers.
    headsup = zoo.models['headsup_sd21']
    assert not headsup.released and 'tools/dist_train.sh' in headsup.how_to_get
    assert 'Table 2' in headsup.paper['source'] and headsup.paper['PortraitISR']['PSNR'] == 25.64


def test_model_zoo_md_lists_every_entry_and_marks_pinned_and_tofu_hashes():
    text = (REPO_ROOT / 'model_zoo.md').read_text(encoding='utf-8')
    zoo = model_zoo.load_index()
    for name in zoo.models:
        assert f'`{name}`' in text, name
    for weights in zoo.weights.values():
        if weights.is_folder:
            assert weights.hub_id in text
            continue
        # The row of the weights table starts with the index name and says verified (hash prefix) or not.
        row = next((line for line in text.splitlines() if line.startswith(f'| `{weights.name}` |')), None)
        assert row is not None and f'`{weights.filename}`' in row, weights.name
        assert (weights.sha256[:12] in row) if weights.trust == 'pinned' else ('TOFU' in row), row


def _raw_index():
    return json.loads(model_zoo.INDEX_PATH.read_text(encoding='utf-8'))


@pytest.mark.parametrize('edit, message', [
    (lambda raw: raw['weights']['codeformer'].update(sha256='ABC'), 'sha256 must be 64'),
    (lambda raw: raw['weights']['codeformer'].pop('sha256'), 'sha256 must be given'),
    (lambda raw: raw['weights']['realesrgan_x4plus'].pop('sha256_source'), 'sha256_source'),
    (lambda raw: raw['weights']['codeformer'].update(url='http://example.com/c.pth'), 'https'),
    (lambda raw: raw['models']['osediff_sd21'].update(requires=['nope']), "'nope'"),
    (lambda raw: raw['models']['headsup_sd21'].pop('how_to_get'), 'how_to_get'),
    (lambda raw: raw['models']['osediff_sd21'].pop('checkpoint_option'), 'checkpoint_option'),
    (lambda raw: raw['models']['osediff_sd21'].pop('licence'), 'licence'),
])
def test_validation_rejects_bad_entries(edit, message):
    raw = _raw_index()
    edit(raw)
    with pytest.raises(ValueError, match=re.escape(message)):
        model_zoo.ModelZoo.from_dict(raw)


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match='headsup_sd21'):
        model_zoo.get_model('headsup_sd99')


# ------------------------------------------------------------------------------------------------ downloads
def _payload(size: int, seed: int) -> bytes:
    import random
    return random.Random(seed).randbytes(size)


def _zoo(server, files: dict) -> model_zoo.ModelZoo:
    """A zoo with model ``tiny`` needing ``files`` {filename: (served bytes, sha256 in the index or None)}."""
    raw = {'format': 'portraitisr.model_zoo/1', 'weights': {}, 'models': {}}
    for filename, (data, sha256) in files.items():
        url, _ = server.serve(filename, data)
        entry = dict(description='test file', filename=filename, url=url.replace('http://', 'https://'),
                     sha256=sha256, licence='MIT', source='tests')
        if sha256 is not None:
            entry['sha256_source'] = 'computed in the test'
        raw['weights'][filename.split('.')[0]] = entry
    raw['models']['tiny'] = dict(description='test', config='configs/debug/headsup_tiny.py', licence='MIT',
                                 released=True, requires=list(raw['weights']))
    zoo = model_zoo.ModelZoo.from_dict(raw)
    # The index insists on https; the loopback server speaks http.
    for name, weights in list(zoo.weights.items()):
        zoo.weights[name] = dataclasses.replace(weights, url=weights.url.replace('https://', 'http://'))
    return zoo


def test_offline_check_names_missing_files_and_the_command(weight_env, file_server):
    data = _payload(5000, 0)
    zoo = _zoo(file_server, {'a.pth': (data, None), 'b.pth': (b'bb', None)})
    with pytest.raises(WeightsNotFoundError) as info:
        model_zoo.check_available('tiny', zoo)
    message = str(info.value)
    assert 'a.pth' in message and 'b.pth' in message and 'portraitisr download tiny' in message
    assert file_server.requests == []  # checking never downloads


def test_training_only_weights_are_needed_only_to_train(weight_env, file_server):
    """An unreleased model's training needs (HeadsUp's recogniser) are checked when there is no checkpoint (the
    user must train) and left out when a trained checkpoint is brought; download fetches both."""
    zoo = _zoo(file_server, {'base.pth': (b'base', None), 'recogniser.pth': (b'rec', None)})
    zoo.models['tiny'] = dataclasses.replace(zoo.models['tiny'], released=False, how_to_get='train it',
                                             requires=('base', ), train_requires=('recogniser', ))
    with pytest.raises(WeightsNotFoundError, match='recogniser.pth'):
        model_zoo.check_available('tiny', zoo)
    with pytest.raises(WeightsNotFoundError) as info:
        model_zoo.check_available('tiny', zoo, need_checkpoint=False)
    assert 'base.pth' in str(info.value) and 'recogniser.pth' not in str(info.value)
    with pytest.warns(UserWarning):  # no sha256 in this index
        assert set(model_zoo.download('tiny', zoo, progress=False)) == {'base', 'recogniser'}
    assert set(model_zoo.check_available('tiny', zoo, need_checkpoint=False)) == {'base'}


def test_optional_weights_are_downloaded_but_never_required(weight_env, file_server):
    """OSEDiff's DAPE tagger: restoring uses it when present and goes on without it, so checking never asks for
    it; download fetches it with the rest."""
    zoo = _zoo(file_server, {'base.pth': (b'base', None), 'tagger.pth': (b'tag', None)})
    zoo.models['tiny'] = dataclasses.replace(zoo.models['tiny'], requires=('base', ), optional=('tagger', ))
    with pytest.raises(WeightsNotFoundError) as info:
        model_zoo.check_available('tiny', zoo)
    assert 'base.pth' in str(info.value) and 'tagger.pth' not in str(info.value)
    with pytest.warns(UserWarning):  # no sha256 in this index
        assert set(model_zoo.download('tiny', zoo, progress=False)) == {'base', 'tagger'}
    assert set(model_zoo.check_available('tiny', zoo)) == {'base'}
    index = model_zoo.load_index()
    for name in ('osediff_sd21', 'headsup_sd21', 'osediff_osediff_face'):  # the configs whose prompts are DAPE tags
        assert {'dape', 'ram_swin_large_14m', 'ram_tag_list', 'ram_tag_list_threshold'} <= set(
            index.models[name].optional), name


def test_download_resumes_partial_file_and_verifies(weight_env, file_server):
    data = _payload(200_000, 1)
    zoo = _zoo(file_server, {'a.pth': (data, hashlib.sha256(data).hexdigest())})
    home = weight_env['home']
    file_server.cut_after = 80_000  # an interrupted earlier download
    with pytest.raises(WeightsNotFoundError, match='connection closed after 80000 of 200000'):
        model_zoo.download('tiny', zoo, progress=False)
    paths = model_zoo.download('tiny', zoo, progress=False)
    assert paths['a'] == home / 'a.pth' and paths['a'].read_bytes() == data
    assert file_server.requests == [('/a.pth', None), ('/a.pth', 'bytes=80000-')]
    assert file_server.bytes_sent == len(data)
    assert sorted(p.name for p in home.iterdir()) == ['a.pth']  # no .part, record or .lock left
    assert model_zoo.check_available('tiny', zoo) == {'a': home / 'a.pth'}
    model_zoo.download('tiny', zoo, progress=False)  # present and verified: nothing fetched again
    assert len(file_server.requests) == 2


def test_corrupted_download_is_rejected(weight_env, file_server):
    zoo = _zoo(file_server, {'c.pth': (b'tampered bytes', '0' * 64)})
    with pytest.raises(WeightsNotFoundError, match='sha256 mismatch'):
        model_zoo.download('tiny', zoo, progress=False)
    home = weight_env['home']
    assert not (home / 'c.pth').exists() and not (home / 'c.pth.part').exists()


def test_unpinned_entry_is_trusted_on_first_use(weight_env, file_server):
    zoo = _zoo(file_server, {'u.pth': (b'some weights', None)})
    assert zoo.weights['u'].trust == 'TOFU'
    with pytest.warns(UserWarning, match='trust on first use'):
        paths = model_zoo.download('u', zoo, progress=False)  # a single weights entry by name
    home = weight_env['home']
    assert paths['u'].read_bytes() == b'some weights'
    assert (home / 'u.pth.sha256').read_text() == f'{hashlib.sha256(b"some weights").hexdigest()}  u.pth\n'
    # The publisher's file changes, or someone swaps the local one: both refused from now on.
    (home / 'u.pth').unlink()
    file_server.serve('u.pth', b'other weights')
    with pytest.raises(WeightsNotFoundError, match='differs from the one first downloaded'):
        model_zoo.download('u', zoo, progress=False)
    (home / 'u.pth').write_bytes(b'other weights')
    with pytest.raises(WeightsNotFoundError, match='recorded at its first download'):
        model_zoo.check_available('tiny', zoo)


def test_unpinned_entry_ignores_files_other_tools_cached(weight_env, file_server):
    """A file another tool downloaded under the zoo's file name (e.g. mmengine's `--resume URL` into the torch hub
    cache) is not the zoo's file: the unpinned entry does not use it."""
    zoo = _zoo(file_server, {'osediff.pkl': (b'the release', None)})
    planted = weight_env['torch_home'] / 'hub' / 'checkpoints' / 'osediff.pkl'
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b'whatever a URL put there')
    with pytest.raises(WeightsNotFoundError, match='portraitisr download tiny'):
        model_zoo.check_available('tiny', zoo)
    with pytest.warns(UserWarning, match='trust on first use'):
        assert model_zoo.download('tiny', zoo, progress=False)['osediff'].read_bytes() == b'the release'


def test_failed_downloads_are_reported_in_one_paragraph(weight_env, file_server, monkeypatch, capsys):
    from portraitisr import cli

    zoo = _zoo(file_server, {'d.pth': (b'x', None), 'e.pth': (b'y', None)})
    down = {name: file_server.down_url(f'{name}.pth') for name in ('d', 'e')}
    for name, url in down.items():
        zoo.weights[name] = dataclasses.replace(zoo.weights[name], url=url)
    with pytest.raises(WeightsNotFoundError) as info:
        model_zoo.download('tiny', zoo, progress=False)
    lines = str(info.value).splitlines()
    assert lines[0] == "Could not download 2 of the 2 weights 'tiny' needs:"
    for name, url in down.items():
        assert any(line.startswith(f'  - {name} ({name}.pth from {url}): Downloading {url}') for line in lines)
    assert 'portraitisr download tiny' in lines[-1] and str(weight_env['home']) in lines[-1]
    # The command: the same paragraph, no traceback, exit status 1.
    monkeypatch.setattr(model_zoo, 'load_index', lambda path=None: zoo)
    assert cli.main(['download', 'tiny']) == 1
    err = capsys.readouterr().err
    assert 'Could not download 2 of the 2' in err and 'Traceback' not in err
