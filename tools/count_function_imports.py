"""Count the imports of portraitisr's own modules that are hidden inside functions (issue 18: at most 10).

An import inside a function hides a dependency from the reader and from import-linter, and is the usual way to
dodge an import cycle; the package keeps them for heavy optional work only, each with a one-line reason in a
comment on the line above or at the end of the line. Usage::

    python tools/count_function_imports.py            # list them, with their reasons, and print the count
    python tools/count_function_imports.py --max 10   # exit 1 when there are more than 10, or one has no reason

The scan is syntactic (``ast``): an ``import portraitisr...`` / ``from portraitisr... import`` / relative
``from . import`` statement anywhere below a ``def`` counts; ``if TYPE_CHECKING:`` blocks at module level do not.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

PACKAGE = 'portraitisr'
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FunctionImport:
    path: str  # relative to the repository root
    line: int
    module: str  # as written: 'portraitisr.weights', '.tiling', ...
    reason: Optional[str]  # the comment that says why, None when there is none


def _own_module(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return '.' * node.level + (node.module or '')
        if node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + '.')):
            return node.module
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + '.'):
                return alias.name
    return None


def _reason(lines: Sequence[str], node: ast.stmt) -> Optional[str]:
    """The comment at the end of the import's last line, else the comment line right above the block of import
    lines it belongs to (one reason may cover the few imports one function needs)."""
    last = lines[node.end_lineno - 1]
    if '#' in last:
        return last.split('#', 1)[1].strip() or None
    row = node.lineno - 2
    while row >= 0 and lines[row].strip().startswith(('from ', 'import ', ')')) or \
            row >= 0 and lines[row].startswith(' ' * 8) and lines[row].rstrip().endswith(','):
        row -= 1
    above = lines[row].strip() if row >= 0 else ''
    return (above[1:].strip() or None) if above.startswith('#') else None


def _imports_below_functions(tree: ast.AST) -> Iterator[ast.stmt]:
    def visit(node: ast.AST, in_function: bool) -> Iterator[ast.stmt]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from visit(child, inside)
    yield from visit(tree, False)


def scan(root: Path = ROOT) -> list[FunctionImport]:
    """Every function-level import of our own modules under ``root/portraitisr``, in file and line order."""
    found = []
    for path in sorted((root / PACKAGE).rglob('*.py')):
        text = path.read_text(encoding='utf-8')
        lines = text.splitlines()
        for node in _imports_below_functions(ast.parse(text, filename=str(path))):
            module = _own_module(node)
            if module is not None:
                found.append(FunctionImport(str(path.relative_to(root)), node.lineno, module, _reason(lines, node)))
    return sorted(found, key=lambda f: (f.path, f.line))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--max', type=int, default=None, help='fail when there are more than this many')
    args = parser.parse_args(argv)
    found = scan()
    for item in found:
        print(f'{item.path}:{item.line}: {item.module}  # {item.reason or "NO REASON GIVEN"}')
    print(f'{len(found)} function-level imports of {PACKAGE} modules')
    unexplained = [item for item in found if item.reason is None]
    if args.max is not None and len(found) > args.max:
        print(f'more than {args.max}', file=sys.stderr)
        return 1
    if args.max is not None and unexplained:
        print(f'{len(unexplained)} without a reason comment', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
