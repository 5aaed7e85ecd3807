"""Config names: what ``portraitisr train NAME``, ``restore --config NAME`` and ``portraitisr config NAME`` resolve
to (always the package's file, never one of the current folder), where an installed package keeps its configs, and
``portraitisr config``'s standalone copies (they load to the same config as the packaged file).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import portraitisr
from portraitisr import cli
from portraitisr.apis import model_zoo
from portraitisr.apis.config_location import config_name, config_names, configs_root, resolve_config
from tests.helpers.data_files import REPO_ROOT

TINY = 'debug/osediff_tiny.py'


def test_names_resolve_to_the_package_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: names only
    root = configs_root()
    assert root == REPO_ROOT / 'configs'  # a checkout: its configs/, no copy
    tiny = root / TINY
    for name in ('osediff_tiny', TINY, 'debug/osediff_tiny', f'configs/{TINY}', f'portraitisr::{TINY}'):
        assert resolve_config(name) == tiny, name
    assert config_name(tiny) == TINY
    # model-zoo names are names of configs too
    for name, entry in model_zoo.load_index().models.items():
        assert resolve_config(name) == root / entry.config[len('configs/'):], name
    names = config_names()
    assert TINY in names and not [n for n in names if n.startswith('_base_')]
    assert len(names) == len({Path(n).stem for n in names})  # every file name is a name of its own


def test_names_never_come_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planted = tmp_path / 'configs' / 'debug' / 'osediff_tiny.py'
    planted.parent.mkdir(parents=True)
    planted.write_text('raise SystemExit("a config of the current folder ran")\n')
    (tmp_path / 'osediff_tiny').write_text('raise SystemExit("ran")\n')
    (tmp_path / 'debug').symlink_to(planted.parent, target_is_directory=True)
    package_copy = configs_root() / TINY
    # bare names and portraitisr:: names are the package's even with a same-named file here
    assert resolve_config('osediff_tiny') == package_copy
    assert resolve_config(f'portraitisr::configs/{TINY}') == package_copy
    assert resolve_config('portraitisr::debug/osediff_tiny.py') == package_copy
    # a path to an existing file is the user's file: that is what a path means (the OpenMMLab tools' habit)
    assert resolve_config(f'configs/{TINY}') == Path(f'configs/{TINY}')
    own = tmp_path / 'mine.py'
    own.write_text('x = 1\n')
    assert resolve_config('mine.py') == Path('mine.py') and resolve_config(str(own)) == own


def test_unknown_names_say_what_is_close(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config or model called 'osediff_tiyn'.*close matches: "
                                                r"debug/osediff_tiny\.py"):
        resolve_config('osediff_tiyn')
    with pytest.raises(FileNotFoundError, match=r'neither a file nor a config of .*close matches: debug/'
                                                r'osediff_tiny\.py'):
        resolve_config('debug/osediff_tinny.py')
    with pytest.raises(FileNotFoundError, match='not a config of the installed package'):
        resolve_config('portraitisr::nope/nothing.py')
    with pytest.raises(FileNotFoundError, match='not a path inside the package'):
        resolve_config('portraitisr::../setup.py')


def _fake_package(root: Path) -> Path:
    package = root / 'portraitisr'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text('')
    return package / '__init__.py'


def test_an_installed_package_uses_its_own_copy_and_nothing_beside_it(tmp_path, monkeypatch):
    site = tmp_path / 'site-packages'
    init = _fake_package(site)
    # another distribution's top-level configs/ in site-packages is not ours
    (site / 'configs' / 'debug').mkdir(parents=True)
    (site / 'configs' / 'debug' / 'osediff_tiny.py').write_text('x = 1\n')
    monkeypatch.setattr(portraitisr, '__file__', str(init))
    with pytest.raises(FileNotFoundError, match='has no configs.*reinstall'):
        configs_root()
    mim = site / 'portraitisr' / '.mim' / 'configs'
    (mim / 'debug').mkdir(parents=True)
    (mim / 'debug' / 'osediff_tiny.py').write_text('x = 2\n')
    assert configs_root() == mim.resolve() and resolve_config('osediff_tiny') == mim.resolve() / TINY
    (mim / 'other').mkdir()
    (mim / 'other' / 'osediff_tiny.py').write_text('x = 3\n')
    with pytest.raises(FileNotFoundError, match="'osediff_tiny' is ambiguous: debug/osediff_tiny.py, "
                                                'other/osediff_tiny.py; give the folder too'):
        resolve_config('osediff_tiny')
    # a source checkout is recognised by its setup.py
    checkout = tmp_path / 'checkout'
    monkeypatch.setattr(portraitisr, '__file__', str(_fake_package(checkout)))
    (checkout / 'configs').mkdir()
    with pytest.raises(FileNotFoundError, match='has no configs'):
        configs_root()
    (checkout / 'setup.py').write_text('')
    assert configs_root() == (checkout / 'configs').resolve()


def test_config_command_copies_a_standalone_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    packaged = Config.fromfile(str(configs_root() / TINY))
    assert cli.main(['config', 'osediff_tiny', '--out', 'tiny.py']) == 0
    copy = tmp_path / 'tiny.py'
    text = copy.read_text()
    assert text.startswith(f'# {TINY} of portraitisr') and '_base_' not in text.split('\n', 1)[1]
    assert Config.fromfile(str(copy)).to_dict() == packaged.to_dict()
    # printing gives the same text; --path the original file
    capsys.readouterr()
    assert cli.main(['config', 'osediff_tiny']) == 0
    assert capsys.readouterr().out == text
    assert cli.main(['config', 'osediff_tiny', '--path']) == 0
    assert capsys.readouterr().out.strip() == str(configs_root() / TINY)
    assert cli.main(['config', '--list']) == 0
    assert capsys.readouterr().out.split() == config_names()
    # an existing file is kept unless --force; errors are one line with exit status 2
    copy.write_text('edited = True\n')
    assert cli.main(['config', 'osediff_tiny', '--out', 'tiny.py']) == 2
    assert copy.read_text() == 'edited = True\n'
    assert capsys.readouterr().err.strip() == 'portraitisr config: --out tiny.py exists; choose another file or ' \
                                               'pass --force'
    assert cli.main(['config', 'osediff_tiny', '--out', 'tiny.py', '--force']) == 0 and copy.read_text() == text
    for argv, expected in ((['config', 'osediff_tinyy'], "no config or model called 'osediff_tinyy'"),
                           (['config', 'osediff_tiny', '--out', 'tiny.yaml'], 'write the config to a .py file'),
                           (['config'], 'give a config name (or --list)')):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err


def test_train_and_test_refuse_an_unknown_name_in_one_line(tmp_path):
    """``portraitisr train`` before importing torch; tools/train.py and tools/test.py with their own prefix."""
    code = ('import sys; from portraitisr import cli; status = cli.main(["train", "osediff_tinyy"]); '
            'print(status, "torch" in sys.modules)')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.stdout.split() == ['2', 'False'], done.stderr
    assert done.stderr.startswith("portraitisr train: no config or model called 'osediff_tinyy'")
    assert len(done.stderr.strip().splitlines()) == 1
    tool = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'train.py'), 'nope/nothing.py'],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert tool.returncode == 2 and tool.stderr.startswith('train.py: config nope/nothing.py is neither a file')
    test_tool = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'test.py'), 'osediff_tinyy'],
                               capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert test_tool.returncode == 2 and test_tool.stderr.startswith("test.py: no config or model called "
                                                                     "'osediff_tinyy'")


@pytest.mark.slow
def test_every_packaged_config_survives_the_standalone_copy(tmp_path):
    """What ``portraitisr config NAME --out FILE`` writes (mmengine's pretty_text of the merged config) loads to the
    same config as the packaged file, for every config (about 16 s on 2 CPU cores)."""
    for name in config_names():
        packaged = Config.fromfile(str(configs_root() / name))
        copy = tmp_path / (Path(name).stem + '.py')
        copy.write_text(packaged.pretty_text)
        assert Config.fromfile(str(copy)).to_dict() == packaged.to_dict(), name
