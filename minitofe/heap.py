"""Keep the memory a training step or a fast forward frees for the next one, instead of handing it back
(glibc).

A training step keeps every block's activations for its backward (DeiT-Ti at batch 32: ~1.4 GB of
arrays) and frees them all when the backward is done. glibc's ``malloc`` serves large arrays with fresh
pages from the system (``mmap`` above its threshold, at most 32 MiB) and trims the top of its heap when
much of it is free, so every step gets fresh pages again, and the kernel zeroes each one as it is first
touched. Measured with 2 threads on an idle 2-core machine (DeiT-Ti, batch 32, the fast path): ~89 000
page faults and 2.26-2.37 s a step, against none and 1.80-2.07 s with the freed memory kept; torch's
step had no page faults after its second step. One GEMM writing into fresh pages took 2-3x as long as
into reused ones.

``keep_freed_memory()`` asks glibc (``mallopt``) to serve every allocation from its heap and never to
trim it, so freed memory is reused: the process then keeps its peak memory, which a training process
reaches in its first step anyway. ``minitofe.train.train`` calls it; so does the bench's training step.
Elsewhere (another C library, no ``mallopt``) it changes nothing and returns False.

The fast inference path calls it too (``kernels.thread_scope``, around every fast ``predict``): a ToFe
forward makes arrays of a new size at every stage (the gathered tokens, the stage's output, the
selector's and the approximator's activations), ~12 000 page faults a forward at DeiT-S batch 32 against
~2 600 for dense. Measured in 6 interleaved rounds of fresh processes, 2 threads, idle machine, DeiT-S
float32 at batch 32, ToFe at 50 % MACs: medians of 5 calls 984-1106 ms with the freed memory kept,
1014-1627 ms without (two rounds of six over 1.3 s); dense 1908-2330 ms and 1919-2243 ms, no change.
"""
import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4            # mallopt's parameters (malloc.h)
_done = None


def keep_freed_memory():
    """Have glibc keep freed memory for reuse (no ``mmap`` for large blocks, no trimming of the heap).
    Returns True when it did (or had already), False where the C library is not glibc."""
    global _done
    if _done is None:
        _done = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
            if mallopt is not None:
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _done
