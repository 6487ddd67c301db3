"""The trainer has glibc keep freed memory for reuse (``minitofe.heap``), in a process of its own
here, as it changes that process's ``malloc`` for good.

Page-fault counts are machine-dependent: NumPy asks for transparent huge pages on large arrays, so a fresh
80 MB array costs ~20 000 faults with 4 KiB pages and a few dozen with 2 MiB ones. So the tests hold
"none" (memory kept) against "some" (fresh pages), measured in a plain process on this machine first: where
that plain process already gets no fresh pages (glibc tuned by ``GLIBC_TUNABLES`` / ``MALLOC_*``), the
comparison means nothing and the tests skip, saying so."""
import platform
import subprocess
import sys

import pytest

from minitofe import kernels

SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from minitofe.heap import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()           # idempotent
elif sys.argv[1] == "fast":                                      # what a fast predict opens
    from minitofe import kernels
    with kernels.thread_scope(True, like=np.zeros(1, np.float32)):
        pass
elif sys.argv[1] == "reference":
    from minitofe import kernels
    with kernels.thread_scope(False, like=np.zeros(1, np.float32)):
        pass
def faults(n):
    a = np.ones(n, np.float32)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(n, np.float32)                                    # the same size again
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum(faults(n) for n in (1_000_000, 5_000_000, 20_000_000)))
"""


def _faults(mode):
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _plain_process_gets_fresh_pages():
    """-> the page faults of a plain process (skips where there are none to tell keeping from not)."""
    plain = _faults("plain")
    if plain == 0:
        pytest.skip("a plain process here already reuses freed memory (malloc tuned by GLIBC_TUNABLES / "
                    "MALLOC_*?): nothing to tell keeping from not keeping")
    return plain


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_arrays_are_reused_without_fresh_pages():
    """An array freed and made again at the same size (4 MB to 80 MB): fresh, zeroed pages from the
    system by default (page faults: how many depends on the page size), none once the freed memory is
    kept."""
    _plain_process_gets_fresh_pages()
    assert _faults("keep") == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.skipif(not kernels.available(), reason="the fast path needs Numba (not installed, or "
                    "MINITOFE_NO_NUMBA is set)")
def test_the_fast_inference_path_keeps_freed_memory_and_the_reference_leaves_malloc_alone():
    plain = _plain_process_gets_fresh_pages()
    # a handful of faults may remain (Numba 0.59 with NumPy 1.24: 3 of ~1900): the arrays' pages are kept
    assert _faults("fast") * 20 < plain
    assert _faults("reference") * 2 > plain
