"""Strip outputs and execution counts from the numbered notebooks, so their committed form is clean.

    python scripts/strip_notebooks.py            # rewrite notebooks/[0-9][0-9]_*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1 and name the notebooks that are not stripped
    python scripts/strip_notebooks.py a.ipynb    # only these files

Code cells lose ``outputs`` and get ``execution_count: null``; per-cell run metadata (``execution``,
``collapsed``, ``scrolled``) and notebook-level ``widgets`` metadata are dropped. Needs ``nbformat``.
"""
import argparse
import pathlib
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
CELL_KEYS_TO_DROP = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(nb):
    """Strip ``nb`` in place; return True if anything changed."""
    changed = False
    for cell in nb.cells:
        for key in CELL_KEYS_TO_DROP:
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None:
                changed = True
            cell.outputs = []
            cell.execution_count = None
    if "widgets" in nb.metadata:
        del nb.metadata["widgets"]
        changed = True
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--check", action="store_true", help="report, do not rewrite")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "not stripped" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
