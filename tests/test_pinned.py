"""Every method's values pinned (float64, NumPy reference): the logits, every loss term, the masks and
records, dimages and every gradient of each training method (hard and soft mask), and every inference
method's logits, records, stage outputs and MACs, against ``tests/fixtures/pinned/methods.npz`` (written by
``scripts/make_pinned.py``).

Two modes, named in the run's header and in every failure (``minitofe.testing.provenance``):
- ``exact``: this machine's arithmetic (NumPy version and SIMD loops, BLAS library, version and core type,
  Numba) is the one recorded in the file: a refactor meant to change nothing must keep every value
  bit-identical (``np.array_equal``);
- ``bounded``: another CPU or library: floats within 1e-12 of each pinned array's largest magnitude, masks,
  indices and counts still exact.
The fast path is held to the same values up to float32-free rounding (``rtol`` 1e-9 / 1e-7)."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from minitofe.kernels import fast_kernels
from minitofe.testing.provenance import FLOAT_BOUND, arithmetic, differences

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "make_pinned.py"
_spec = importlib.util.spec_from_file_location("make_pinned", _SCRIPT)
make_pinned = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_pinned)


@pytest.fixture(scope="module")
def pinned():
    return make_pinned.load()


@pytest.fixture(scope="module")
def saved(pinned):
    return pinned[0]


@pytest.fixture(scope="module")
def mode(pinned):
    return make_pinned.mode(pinned[1])


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


def test_the_file_says_what_arithmetic_made_it(pinned):
    made_on = pinned[1]
    assert made_on is not None and set(made_on) == set(arithmetic())
    assert made_on["blas"] and all(b["architecture"] for b in made_on["blas"])


@pytest.mark.parametrize("part", ["train", "infer"])
def test_values_are_reproduced(saved, now, mode, part):
    """Bit for bit where the arithmetic is the recorded one, within the float bound elsewhere."""
    keys = {k for k in saved if k.startswith(part + "/")}
    bad = differences({k: saved[k] for k in keys}, {k: v for k, v in now.items() if k.startswith(part + "/")},
                      exact=mode == "exact")
    assert not bad, f"[{mode} mode] {len(bad)} of {len(keys)} pinned values changed, e.g. {bad[:8]}"


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "bounded"])
def test_a_change_of_one_part_in_a_billion_fails_in_either_mode(saved, exact):
    """The bounded mode is no blanket: one value moved by 1e-9 of its array's magnitude is caught, and an
    index off by one in an int array is caught in both modes."""
    key = "train/tofe/hard/grads/flat"
    i = int(np.argmax(np.abs(saved[key])))
    moved = dict(saved, **{key: saved[key].copy()})
    moved[key][i] += 1e-9 * np.abs(saved[key]).max()
    assert differences(saved, moved, exact) == [(key, differences(saved, moved, exact)[0][1])]
    ints = next(k for k, v in saved.items() if v.dtype.kind == "i" and v.size > 1)
    one = (np.arange(saved[ints].size) == 0).reshape(saved[ints].shape)
    shifted = dict(saved, **{ints: saved[ints] + one})
    assert [k for k, _ in differences(saved, shifted, exact)] == [ints]
    assert differences(saved, saved, exact) == []


def test_the_mode_is_exact_only_on_the_recorded_arithmetic(pinned):
    """Another BLAS core type (or NumPy) turns exact comparison off; the same arithmetic keeps it on."""
    here = arithmetic()
    assert make_pinned.mode(json.loads(json.dumps(here))) == "exact"
    other = dict(here, blas=[dict(b, architecture="Prescott") for b in here["blas"]])
    assert make_pinned.mode(other) == "bounded" and make_pinned.mode(None) == "bounded"
    assert FLOAT_BOUND[np.dtype(np.float64)] <= 1e-12


@pytest.mark.skipif(fast_kernels() is None,
                    reason="the fast kernels need Numba (not installed, or MINITOFE_NO_NUMBA set)")
@pytest.mark.parametrize("case", [c[0] for c in make_pinned.TRAIN_CASES])
def test_fast_path_matches_the_pinned_values(saved, case):
    out, dimages, grads = make_pinned.train_case(case, hard=True, fast=True)
    name = f"train/{case}/hard"
    np.testing.assert_allclose(out["logits"], saved[f"{name}/logits"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["loss"], saved[f"{name}/loss"], rtol=1e-9)
    flat = np.concatenate([grads[k].ravel() for k in saved[f"{name}/grads/keys"]])
    np.testing.assert_allclose(flat, saved[f"{name}/grads/flat"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(dimages, saved[f"{name}/dimages"], rtol=1e-7, atol=1e-10)
