"""The reference stays readable (docs/contributing.md §11): its files fit one sitting, its functions one
screen, its lines one width. Files and lines are held for the whole package (its top-level modules and
every package folder), functions for the model layers (``nn/``, ``tofe/``). Measured with ``ast`` and as
text, nothing is run."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "minitofe"
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_LINE_CHARS = 250, 60, 110
# the top-level modules ("") and every package folder
HELD = ("",) + tuple(sorted(p.parent.name for p in PKG.glob("*/__init__.py")))


def _files(folders):
    return sorted(p for d in folders for p in (PKG / d).glob("*.py"))


@pytest.mark.parametrize("path", _files(HELD), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_files_fit_one_sitting(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_FILE_LINES, f"{path.relative_to(PKG.parent)} has {n} lines (at most {MAX_FILE_LINES})"


def test_model_functions_fit_one_screen():
    long = []
    for path in _files(("nn", "tofe")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_package_lines_fit_one_width():
    """Every line of the top-level modules and of every package folder (``HELD``) is at most
    ``MAX_LINE_CHARS`` characters."""
    wide = [f"{p.relative_to(PKG.parent)}:{i}" for p in _files(HELD)
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > MAX_LINE_CHARS]
    assert not wide, f"lines over {MAX_LINE_CHARS} characters: {wide}"


def _imported_modules(tree, package):
    """Every module a file imports, made absolute (``..kernels`` in ``minitofe.nn``: ``minitofe.kernels``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)   # ``from .. import kernels``


@pytest.mark.parametrize("path", _files(("nn", "tofe")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_reference_knows_nothing_of_the_fast_path(path):
    """docs/contributing.md §5, §14: ``nn/`` and ``tofe/`` import nothing from ``kernels/``; the caller at
    the top (``predict``, the trainer, the bench) chooses the implementation and hands it down as ``ops``."""
    package = f"minitofe.{path.parent.name}"
    bad = [m for m in _imported_modules(ast.parse(path.read_text()), package)
           if m == "minitofe.kernels" or m.startswith("minitofe.kernels.") or m.split(".")[0] == "kernels"]
    assert not bad, f"{path.relative_to(PKG.parent)} imports {sorted(set(bad))}: take them as ``ops``"
