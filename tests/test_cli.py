"""The ``portraitisr`` command: restore a folder end to end, fail fast without weights, list and download the zoo."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from portraitisr import cli
from portraitisr.apis import model_zoo
from portraitisr.utils.image_io import write_image
from tests.helpers.data_files import REPO_ROOT
from tests.helpers.images import png_bomb, smooth_image

pytest_plugins = ('tests.helpers.file_server',)

TINY_HEADSUP = REPO_ROOT / 'configs' / 'debug' / 'headsup_tiny.py'
TINY_OSEDIFF = REPO_ROOT / 'configs' / 'debug' / 'osediff_tiny.py'


@pytest.fixture(autouse=True)
def offline(no_internet):
    """Connections beyond loopback fail."""


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A trainable-only checkpoint of the tiny HeadsUp config, in the layout TrainableCheckpointHook saves."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.registry import MODELS

    init_default_scope('portraitisr')
    model = MODELS.build(Config.fromfile(str(TINY_HEADSUP)).model)
    names = trainable_names(model)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items() if k in names}
    path = tmp_path_factory.mktemp('run') / 'iter_2.pth'
    torch.save({'meta': {'trainable_only': True}, 'state_dict': state}, path)
    return path


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*'))
            if p.is_file()}


def test_restore_folder_keeps_modes_reports_corrupt_file(tiny_checkpoint, tmp_path, capsys):
    photos = tmp_path / 'photos'
    alpha = np.ones((20, 24), np.float32)
    alpha[:, :6] = 0
    write_image(photos / 'rgba16.png', smooth_image(20, 24, 0), alpha, bit_depth=16)
    write_image(photos / 'photo.jpg', smooth_image(16, 12, 1))
    write_image(photos / 'gray.png', smooth_image(12, 12, 2)[..., 0])
    (photos / 'broken.jpg').write_bytes((photos / 'photo.jpg').read_bytes()[:200])  # truncated JPEG
    assert png_bomb(photos / 'bomb.png').stat().st_size < 100
    write_image(photos / 'nested' / 'deep.png', smooth_image(8, 8, 3))  # only with --recursive
    out = tmp_path / 'out'
    before = _hashes(photos)
    status = cli.main(['restore', str(photos), '-o', str(out), '--config', str(TINY_HEADSUP),
                       '--checkpoint', str(tiny_checkpoint), '--device', 'cpu', '--compare'])
    captured = capsys.readouterr()
    assert status == 1  # two files failed, one line each, the others were restored
    assert 'skipped' in captured.err and 'broken.jpg' in captured.err and 'Traceback' not in captured.err
    assert [line for line in captured.err.splitlines() if 'bomb.png' in line] == [
        f'skipped {photos / "bomb.png"}: {photos / "bomb.png"}: 60000x60000 = 3600.0 MP is more than the limit of '
        '134.2 MP (a decompression bomb, or a photo too large to decode safely); raise the limit with '
        'PORTRAITISR_MAX_IMAGE_PIXELS or max_pixels= if you trust the file']
    assert '3 of 5 images restored' in captured.out
    assert _hashes(photos) == before

    rgba = cv2.imread(str(out / 'rgba16.png'), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (80, 96, 4) and rgba.dtype == np.uint16
    assert rgba[:, :20, 3].max() == 0 and rgba[:, 28:, 3].min() == 65535
    assert cv2.imread(str(out / 'photo.jpg'), cv2.IMREAD_UNCHANGED).shape == (64, 48, 3)
    assert cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED).shape == (48, 48)
    assert cv2.imread(str(out / 'photo_compare.png')).shape == (64, 96, 3)
    assert not (out / 'broken.jpg').exists() and not (out / 'nested').exists()

    # resume: only the missing output is made again; the others are not rewritten
    (out / 'photo.jpg').unlink()
    before = {name: (out / name).stat().st_mtime_ns for name in ('rgba16.png', 'gray.png', 'rgba16_compare.png')}
    status = cli.main(['restore', str(photos), '-o', str(out), '--config', str(TINY_HEADSUP),
                       '--checkpoint', str(tiny_checkpoint), '--device', 'cpu', '--compare', '--skip-existing'])
    captured = capsys.readouterr()
    assert status == 1 and '1 of 5 images restored' in captured.out and '2 already there' in captured.out
    assert (out / 'photo.jpg').is_file()
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before


def test_output_names_are_planned_up_front(tmp_path):
    for folder in ('a', 'b'):
        write_image(tmp_path / folder / 'same.png', smooth_image(8, 8, 0))
    write_image(tmp_path / 'a' / 'x.bmp', smooth_image(8, 8, 1))
    write_image(tmp_path / 'a' / 'x.png', smooth_image(8, 8, 2))
    write_image(tmp_path / 'b' / 'X.PNG', smooth_image(8, 8, 3))
    out = tmp_path / 'out'
    pairs = cli.collect_inputs([str(tmp_path / 'a'), str(tmp_path / 'b')])
    assert len(cli.collect_inputs([str(tmp_path / 'a'), str(tmp_path / 'a' / 'same.png')])) == 3  # same file once
    with pytest.raises(cli.SetupError) as refused:
        cli.plan_outputs(pairs, out, case_insensitive=True)
    message = str(refused.value)
    assert message.startswith('2 output name(s) would be written by more than one input')
    assert f'{out / "x.png"} <- {tmp_path / "a" / "x.bmp"}, {tmp_path / "a" / "x.png"}, {tmp_path / "b" / "X.PNG"}' \
        in message  # a format rewrite (bmp -> png) and another case of the same name
    assert f'{out / "same.png"} <- {tmp_path / "a" / "same.png"}, {tmp_path / "b" / "same.png"}' in message
    # on a case-sensitive disk X.PNG is its own name; with --compare the comparison pictures join the names
    jobs = cli.plan_outputs(pairs, out, compare=True, collisions='suffix', case_insensitive=False)
    assert [(j.source.relative_to(tmp_path).as_posix(), j.target.name, j.compare.name) for j in jobs] == [
        ('a/same.png', 'same.png', 'same_compare.png'), ('a/x.bmp', 'x.png', 'x_compare.png'),
        ('a/x.png', 'x_2.png', 'x_2_compare.png'), ('b/X.PNG', 'X.PNG', 'X_compare.png'),
        ('b/same.png', 'same_2.png', 'same_2_compare.png')]
    assert jobs[2].renamed_from == out / 'x.png'


def _setup_errors(cases, cwd):
    """Run ``portraitisr restore`` for each case in one fresh interpreter: ``[(status, stderr, seconds)]``, and
    whether torch or diffusers were imported (they must not be: every check comes before the model)."""
    import json

    script = ('import contextlib, io, json, sys, time\n'
              'start = time.time()\n'
              'from portraitisr import cli\n'
              'results = []\n'
              'for argv in json.loads(sys.argv[1]):\n'
              '    err = io.StringIO()\n'
              '    with contextlib.redirect_stderr(err):\n'
              '        try:\n'
              '            status = cli.main(argv)\n'
              '        except SystemExit as exit:\n'
              '            status = exit.code\n'
              '    results.append([status, err.getvalue(), time.time() - start])\n'
              '    start = time.time()\n'
              'print(json.dumps([results, "torch" in sys.modules, "diffusers" in sys.modules]))\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, '-c', script, json.dumps(cases)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_setup_errors_exit_2_in_one_line_before_the_model(tmp_path):
    photos = tmp_path / 'photos'
    write_image(photos / 'a.jpg', smooth_image(16, 16, 0))
    write_image(photos / 'b.png', smooth_image(16, 16, 1))
    collide = tmp_path / 'collide'
    write_image(collide / 'x.bmp', smooth_image(8, 8, 2))
    write_image(collide / 'x.png', smooth_image(8, 8, 3))
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'linked').symlink_to(photos, target_is_directory=True)
    (tmp_path / 'a_file').write_text('not a folder')
    no_face = write_image(tmp_path / 'no_face.png', smooth_image(64, 64, 4))
    before = _hashes(photos), _hashes(collide)
    out = str(tmp_path / 'out')
    osediff, headsup = ['--config', str(TINY_OSEDIFF)], ['--config', str(TINY_HEADSUP)]
    cases = {
        'does not exist': [str(tmp_path / 'missing.jpg'), '-o', out] + osediff,
        'no images in': [str(tmp_path / 'empty'), '-o', out] + osediff,
        'is the input folder': [str(photos), '-o', str(photos)] + osediff,
        'is the input folder ': [str(photos), '-o', str(tmp_path / 'linked')] + osediff,
        'would be written by more than one input': [str(collide), '-o', out] + osediff,
        'cannot write into the output folder': [str(photos), '-o', str(tmp_path / 'a_file' / 'out')] + osediff,
        'CUDA': [str(photos), '-o', out, '--device', 'cuda:99'] + osediff,
        'unknown device': [str(photos), '-o', out, '--device', 'tpu'] + osediff,
        '--scale must be at least 1': [str(photos), '-o', out, '--scale', '0'] + osediff,
        'takes no reference face': [str(photos), '-o', out, '--ref', str(no_face)] + osediff,
        'no face found in the reference': [str(photos), '-o', out, '--ref', str(no_face)] + headsup,
        'cannot read \'lots\' as an amount of memory': [str(photos), '-o', out, '--max-memory', 'lots'] + osediff,
        'config nope.py is neither a file nor a config of the installed package': [str(photos), '-o', out,
                                                                                    '--config', 'nope.py'],
        "no config or model called 'osediff_tinyy'": [str(photos), '-o', out, '--config', 'osediff_tinyy'],
        'checkpoint': [str(photos), '-o', out, '--checkpoint', str(tmp_path / 'nope.pth')] + osediff,
        'no_such_model': [str(photos), '-o', out, '--model', 'no_such_model'],
    }
    results, imported_torch, imported_diffusers = _setup_errors([['restore'] + argv for argv in cases.values()],
                                                                tmp_path)
    for (expected, _), (status, err, _) in zip(cases.items(), results):
        lines = err.strip().splitlines()
        assert status == 2, (expected, err)
        assert expected.strip() in lines[0] and 'Traceback' not in err, (expected, err)
        if 'more than one input' not in expected:  # the collision lists the inputs, one line per output
            assert len(lines) == 1, err
    assert not imported_torch and not imported_diffusers
    assert not (tmp_path / 'out').exists()
    assert (_hashes(photos), _hashes(collide)) == before


def test_colliding_names_resolved_with_suffix_and_inputs_kept(tiny_checkpoint, tmp_path, capsys):
    photos = tmp_path / 'photos'
    write_image(photos / 'x.bmp', smooth_image(8, 12, 0))
    write_image(photos / 'x.png', smooth_image(12, 8, 1))
    before = _hashes(photos)
    out = tmp_path / 'out'
    status = cli.main(['restore', str(photos), '-o', str(out), '--config', str(TINY_HEADSUP), '--checkpoint',
                       str(tiny_checkpoint), '--device', 'cpu', '--name-collisions', 'suffix'])
    captured = capsys.readouterr()
    assert status == 0 and '2 of 2 images restored' in captured.out
    assert f'{photos / "x.png"} -> {out / "x_2.png"} (x.png is taken)' in captured.err
    assert cv2.imread(str(out / 'x.png')).shape == (32, 48, 3)  # from x.bmp (12 x 8)
    assert cv2.imread(str(out / 'x_2.png')).shape == (48, 32, 3)
    assert _hashes(photos) == before


def test_untrained_checkpoint_is_reported_once(tmp_path, capsys):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from portraitisr.apis.portrait_restorer import without_training_parts
    from portraitisr.engine.hooks.trainable_checkpoint_hook import trainable_names
    from portraitisr.registry import MODELS

    init_default_scope('portraitisr')
    model = MODELS.build(without_training_parts(Config.fromfile(str(TINY_OSEDIFF)).model)[0])
    names = trainable_names(model)
    path = tmp_path / 'iter_40.pth'
    torch.save({'meta': {'iter': 40}, 'state_dict': {k: v for k, v in model.state_dict().items() if k in names}},
               path)
    for seed in range(2):
        write_image(tmp_path / 'photos' / f'{seed}.png', smooth_image(8, 8, seed))
    status = cli.main(['restore', str(tmp_path / 'photos'), '-o', str(tmp_path / 'out'), '--config',
                       str(TINY_OSEDIFF), '--checkpoint', str(path), '--device', 'cpu'])
    err = capsys.readouterr().err
    assert status == 0
    assert err.count('trained for only 40 iteration(s)') == 1


def test_missing_zoo_weights_fail_at_once_naming_files(weight_env, tmp_path, capsys):
    status = cli.main(['restore', 'x.jpg', '--model', 'headsup_sd21', '-o', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 2
    for expected in ('stabilityai/stable-diffusion-2-1-base', 'cvlface_adaface_ir101_webface12m.safetensors',
                     'portraitisr download headsup_sd21', 'tools/dist_train.sh'):
        assert expected in err, expected
    assert not (tmp_path / 'out').exists()


def test_models_lists_the_zoo(capsys):
    assert cli.main(['models']) == 0
    out = capsys.readouterr().out
    assert 'headsup_sd21' in out and 'NOT RELEASED' in out and 'configs/osediff/osediff_sd21.py' in out
    assert cli.main(['models', '--weights']) == 0
    out = capsys.readouterr().out
    assert 'RealESRGAN_x4plus.pth' in out and 'sha256 pinned' in out and 'TOFU (no sha256)' in out


def test_download_command_goes_through_the_resolver(weight_env, file_server, monkeypatch, capsys):
    data = b'codeformer weights'
    url, _ = file_server.serve('codeformer.pth', data)
    zoo = model_zoo.load_index()
    zoo.weights['codeformer'] = dataclasses.replace(zoo.weights['codeformer'], url=url, sha256='f' * 64)
    monkeypatch.setattr(model_zoo, 'load_index', lambda path=None: zoo)
    assert cli.main(['download', 'codeformer']) == 1  # wrong sha256: rejected, nothing kept
    assert 'sha256 mismatch' in capsys.readouterr().err
    assert not (weight_env['home'] / 'codeformer.pth').exists()

    zoo.weights['codeformer'] = dataclasses.replace(zoo.weights['codeformer'], sha256=None)
    with pytest.warns(UserWarning, match='without a sha256'):
        assert cli.main(['download', 'codeformer']) == 0
    assert (weight_env['home'] / 'codeformer.pth').read_bytes() == data
    assert cli.main(['download', 'no_such_model']) == 1


def test_python_dash_m_and_light_import():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, '-m', 'portraitisr', 'models'], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=env, timeout=60)
    assert result.returncode == 0 and 'osediff_sd21' in result.stdout
    code = "import sys, portraitisr.cli, portraitisr.apis.model_zoo; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=60)
    assert light.stdout.strip() == 'False'
