"""Without the Fashion-MNIST files the quickstart falls back to the bundled sample images, and the true
labels it prints are theirs (it once printed random "true" labels beside synthetic blobs)."""
import os
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "00_quickstart.ipynb"


def test_the_quickstart_without_the_data_set_shows_the_samples_true_labels(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import nbformat
    from minitofe.data import FASHION_MNIST_CLASSES
    from minitofe.data.inputs import sample_images, sample_labels
    monkeypatch.setenv("MINITOFE_FASHION_MNIST", str(tmp_path))           # an empty folder: no data set
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "bundled sample images instead" in text
    want = [FASHION_MNIST_CLASSES[k] for k in sample_labels(sample_images()[:4])]
    assert f"true: {want}" in text
