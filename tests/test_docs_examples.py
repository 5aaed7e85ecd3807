"""The worked example of docs/adding_a_component.md runs as written.

The page's fenced blocks are extracted from the markdown: blocks whose first line is a ``# some/path.py`` comment are
files (written under a temporary folder that also holds a copy of ``configs/``), the other ``python`` blocks are
executed in order in one namespace from that folder, as a reader would run them from the repository root.
"""
import re
import shutil
import sys

import pytest

from tests.helpers.data_files import REPO_ROOT, require_pypi_weights

PAGE = REPO_ROOT / 'docs' / 'adding_a_component.md'
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
FILE_COMMENT = re.compile(r'#\s*([\w./-]+\.py)\s*$')


def python_blocks(markdown: str):
    """``[(file path or None, code)]`` for every ``python`` fence, in page order."""
    blocks = []
    for language, code in FENCE.findall(markdown):
        if language != 'python':
            continue
        first_line = code.splitlines()[0] if code else ''
        match = FILE_COMMENT.fullmatch(first_line.strip())
        blocks.append((match.group(1) if match else None, code))
    return blocks


def test_page_has_the_component_the_config_and_the_checks():
    blocks = python_blocks(PAGE.read_text(encoding='utf-8'))
    files = [path for path, _ in blocks if path]
    assert files == ['my_project/tiny_facenet.py', 'configs/my_project/headsup_tiny_facenet.py']
    snippets = [code for path, code in blocks if path is None]
    assert any('IDENTITY_EXTRACTORS.build' in code for code in snippets)
    assert any('MODELS.build(cfg.model)' in code for code in snippets)


@pytest.fixture
def example_folder(tmp_path, monkeypatch):
    """A scratch 'repository root' with the configs; the example's module and registration are undone after."""
    from portraitisr.registry import IDENTITY_EXTRACTORS

    shutil.copytree(REPO_ROOT / 'configs', tmp_path / 'configs')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    IDENTITY_EXTRACTORS._module_dict.pop('TinyFaceNet', None)
    for name in [n for n in sys.modules if n == 'my_project' or n.startswith('my_project.')]:
        del sys.modules[name]


def test_adding_an_identity_extractor_example_runs(example_folder):
    require_pypi_weights('vgg16.ckpt')  # HeadsUp's tiny config builds LPIPS-VGG
    import torch

    torch.manual_seed(0)
    namespace: dict = {'__name__': '__docs_example__'}
    for path, code in python_blocks(PAGE.read_text(encoding='utf-8')):
        if path:
            target = example_folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code, encoding='utf-8')
        else:
            exec(compile(code, f'{PAGE.name} block', 'exec'), namespace)  # noqa: S102
    # what the page's last block built: HeadsUp with the new extractor inside its identity loss
    model = namespace['model']
    extractor = model.identity_loss.extractor
    assert type(extractor).__name__ == 'TinyFaceNet' and extractor.embedding_dim == 128
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
