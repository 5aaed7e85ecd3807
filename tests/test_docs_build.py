"""The documentation site builds with ``mkdocs build --strict``: no warning, no broken page, file or anchor link."""
import subprocess
import sys

from tests.helpers.data_files import REPO_ROOT


def test_docs_build_strict(tmp_path):
    import mkdocs  # noqa: F401  (the dev extra, with mkdocs_include_markdown_plugin: missing, they fail)
    import mkdocs_include_markdown_plugin  # noqa: F401
    site = tmp_path / 'site'
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # the top-level model_zoo.md is included, not copied: its table must reach the built page
    zoo = (site / 'model_zoo' / 'index.html').read_text(encoding='utf-8')
    assert 'RetinaFace' in zoo and 'include-markdown' not in zoo
    # the extension example and the before/after picture are part of the site
    assert (site / 'adding_a_component' / 'index.html').is_file()
    assert (site / 'images' / 'blending_tiny_grid.jpg').is_file()
