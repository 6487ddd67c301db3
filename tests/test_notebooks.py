"""The numbered notebooks: committed stripped of outputs, titled, and each runs top to bottom.

Execution needs the ``notebooks`` extra (nbclient, ipykernel, matplotlib); without nbclient these tests
skip. The kernel is the ``python3`` kernel of the running interpreter (jupyter_client starts it with
``sys.executable`` when ipykernel is installed here), with ``MPLBACKEND=Agg`` so that no figure needs a
display, in ``notebooks/`` so that ``../weights`` resolves.
"""
import os
import pathlib

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = 8
CELL_TIMEOUT = 300  # seconds


def test_there_are_eight_numbered_notebooks():
    assert len(NOTEBOOKS) == EXPECTED, [p.name for p in NOTEBOOKS]
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == [f"{i:02d}" for i in range(EXPECTED)], numbers


def _read(path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped_and_titled(path):
    nb = _read(path)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; " \
                      f"run python scripts/strip_notebooks.py"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: the first cell must be a markdown title starting with '# '"
    assert len(first.source.strip().splitlines()) >= 2, f"{path.name}: title without its one-sentence summary"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(path)
    if any("matplotlib" in c.source for c in nb.cells if c.cell_type == "code"):
        pytest.importorskip("matplotlib")             # the notebooks that draw (the ``notebooks`` extra)
    monkeypatch.setenv("MPLBACKEND", "Agg")           # the kernel inherits this process's environment
    # OpenBLAS's default of one thread per core slows the small matmuls here 10-20x on a busy machine
    # (threads spin waiting for each other); one thread keeps each notebook well under a minute.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
