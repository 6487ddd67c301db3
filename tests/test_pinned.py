"""Every method's values pinned bit for bit (float64, NumPy reference): the logits, every loss term, the
masks and records, dimages and every gradient of each training method (hard and soft mask), and every
inference method's logits, records, stage outputs and MACs, against ``tests/fixtures/pinned/methods.npz``
(written by ``scripts/make_pinned.py``). A refactor that is meant to change nothing must keep these
``np.array_equal``; the fast path is held to the same values up to float rounding."""
import importlib.util
import pathlib

import numpy as np
import pytest

from minitofe.kernels import fast_kernels

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "make_pinned.py"
_spec = importlib.util.spec_from_file_location("make_pinned", _SCRIPT)
make_pinned = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_pinned)


@pytest.fixture(scope="module")
def saved():
    with np.load(make_pinned.OUT, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def now():
    return make_pinned.compute()


def test_pinned_file_covers_every_method(saved):
    from minitofe.tofe.config import METHODS
    trained = {k.split("/")[1] for k in saved if k.startswith("train/")}
    inferred = {k.split("/")[1] for k in saved if k.startswith("infer/")}
    assert set(make_pinned.TRAIN_METHODS) <= trained and set(METHODS) == inferred
    for m in make_pinned.TRAIN_METHODS:
        assert saved[f"train/{m}/hard/grads/flat"].size > 1000 and f"train/{m}/soft/losses/total" in saved


@pytest.mark.parametrize("part", ["train", "infer"])
def test_values_are_bit_identical(saved, now, part):
    keys = {k for k in saved if k.startswith(part + "/")}
    assert keys == {k for k in now if k.startswith(part + "/")}
    bad = [k for k in sorted(keys) if saved[k].dtype != now[k].dtype or not np.array_equal(saved[k], now[k])]
    assert not bad, f"{len(bad)} of {len(keys)} pinned values changed, e.g. {bad[:8]}"


@pytest.mark.skipif(fast_kernels() is None, reason="Numba is not installed")
@pytest.mark.parametrize("case", [c[0] for c in make_pinned.TRAIN_CASES])
def test_fast_path_matches_the_pinned_values(saved, case):
    out, dimages, grads = make_pinned.train_case(case, hard=True, fast=True)
    name = f"train/{case}/hard"
    np.testing.assert_allclose(out["logits"], saved[f"{name}/logits"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["loss"], saved[f"{name}/loss"], rtol=1e-9)
    flat = np.concatenate([grads[k].ravel() for k in saved[f"{name}/grads/keys"]])
    np.testing.assert_allclose(flat, saved[f"{name}/grads/flat"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(dimages, saved[f"{name}/dimages"], rtol=1e-7, atol=1e-10)
