"""scripts/gemm_libraries.py: the sgemm candidates in processes of their own, checked before timed."""
import json
import pathlib

import numpy as np
import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def gemm_libraries(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import gemm_libraries
    return gemm_libraries


def test_every_candidate_is_timed_or_skipped_with_its_reason(gemm_libraries, capsys):
    assert gemm_libraries.main(["--only", "numpy", "mkl", "--rounds", "2", "--reps", "2", "--rows", "8",
                                "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    shapes = {f"8x{k}x{n}" for k, n in gemm_libraries.LAYERS.values()}
    assert set(out["gflops"]["numpy"]) == shapes
    assert all(0 < r["min"] <= r["median"] <= r["max"] for r in out["gflops"]["numpy"].values())
    assert set(out["gflops"]) | set(out["skipped"]) == {"numpy", "mkl"}
    assert all(why for why in out["skipped"].values())
    assert (out["threads"], out["rounds"], out["dtype"]) == (1, 2, "float32")


def test_a_wrong_product_is_refused_before_it_is_timed(gemm_libraries, monkeypatch):
    monkeypatch.setenv("GEMM_THREADS", "1")
    monkeypatch.setattr(gemm_libraries, "product", lambda name, a, b: lambda: (a @ b) * np.float32(1.01))
    with pytest.raises(AssertionError, match=r"numpy 4x384x1152: max error"):
        gemm_libraries.worker("numpy", [4], 2)


def test_the_numpy_candidate_computes_the_product(gemm_libraries, monkeypatch):
    monkeypatch.setenv("GEMM_THREADS", "1")
    a = np.random.default_rng(0).standard_normal((5, 7), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((7, 3), dtype=np.float32)
    np.testing.assert_allclose(gemm_libraries.product("numpy", a, b)(), a @ b, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown candidate 'blas'"):
        gemm_libraries.product("blas", a, b)
