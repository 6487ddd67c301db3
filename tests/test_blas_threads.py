"""The CLI sizes BLAS threads per call: one thread for small calls unless the user chose a count."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from minitofe.cli.common import BLAS_ENV, BLAS_THREADS_MIN_IMAGES, blas_threads_for


def _blas_threads():
    np.dot(np.ones((2, 2)), np.ones((2, 2)))              # make sure the BLAS is loaded
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.fixture
def no_env(monkeypatch):
    for v in BLAS_ENV:
        monkeypatch.delenv(v, raising=False)


def test_small_calls_use_one_blas_thread_and_the_limit_is_undone(no_env):
    before = _blas_threads()
    with blas_threads_for(BLAS_THREADS_MIN_IMAGES - 1):
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_large_calls_and_a_user_choice_are_left_alone(no_env, monkeypatch):
    before = _blas_threads()
    with blas_threads_for(BLAS_THREADS_MIN_IMAGES):
        assert _blas_threads() == before
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with blas_threads_for(1):
        assert _blas_threads() == before
