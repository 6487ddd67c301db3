"""The trainer has glibc keep freed memory for reuse (``minitofe.heap``), in a process of its own
here, as it changes that process's ``malloc`` for good."""
import platform
import subprocess
import sys

import pytest

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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_arrays_are_reused_without_fresh_pages():
    """An array freed and made again at the same size (4 MB to 80 MB): fresh, zeroed pages from the
    system by default (hundreds of page faults), none once the freed memory is kept."""
    assert _faults("keep") == 0
    assert _faults("plain") > 100


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_fast_inference_path_keeps_freed_memory_and_the_reference_leaves_malloc_alone():
    pytest.importorskip("numba")
    assert _faults("fast") == 0
    assert _faults("reference") > 100
