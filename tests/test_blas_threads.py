"""The CLI sizes BLAS threads per call: one thread for small calls unless the user chose a count.

Each test starts from a known count of two threads (``threadpool_limits``), not from this machine's
default: on one core, or under ``OPENBLAS_NUM_THREADS=1``, the default is already one thread, and "limited
to one, then restored" could not be told from "left alone"."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from minitofe.cli.common import BLAS_ENV, BLAS_THREADS_MIN_IMAGES, blas_threads_for


def _blas_threads():
    np.dot(np.ones((2, 2)), np.ones((2, 2)))              # make sure the BLAS is loaded
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.fixture
def two_threads(monkeypatch):
    for v in BLAS_ENV:
        monkeypatch.delenv(v, raising=False)
    _blas_threads()
    with threadpool_limits(2, user_api="blas"):
        if _blas_threads() != {2}:
            pytest.skip(f"this BLAS cannot be set to two threads (it reports {_blas_threads()})")
        yield


def test_small_calls_use_one_blas_thread_and_the_limit_is_undone(two_threads):
    with blas_threads_for(BLAS_THREADS_MIN_IMAGES - 1):
        assert _blas_threads() == {1}
    assert _blas_threads() == {2}


def test_large_calls_and_a_user_choice_are_left_alone(two_threads, monkeypatch):
    with blas_threads_for(BLAS_THREADS_MIN_IMAGES):
        assert _blas_threads() == {2}
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with blas_threads_for(1):
        assert _blas_threads() == {2}


WATCH_NUMPY = """
import os, sys
seen = []
class Watch:                      # notes the variable when NumPy (and with it OpenBLAS) is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
sys.meta_path.insert(0, Watch())
import minitofe
print(seen[0])
"""


@pytest.mark.parametrize("given", [None, "12"])
def test_importing_minitofe_first_shortens_openblas_s_spin_unless_the_user_chose(given):
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: ``import minitofe`` sets it (to 16:
    2**16 cycles of spinning) before it imports NumPy, and keeps a value the user set."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if given:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    out = subprocess.run([sys.executable, "-c", WATCH_NUMPY], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [given or "16"]
