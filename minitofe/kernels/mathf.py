"""Shared Numba settings and scalar math for the kernels (imported only when Numba is installed).

``jit`` / ``pjit`` compile with ``cache=True`` (the machine code is stored beside the module, so a new
process loads it instead of compiling again) and with the fast-math flags that let LLVM vectorise
reductions (reassociation, contraction) but keep NaN/inf semantics, so a NaN still shows up as NaN.

``erf(x)`` is exact for float64 (``math.erf``). For float32 it is a rational minimax approximation
(Eigen's ``generic_fast_erf_float``; |error| < 4e-7 on all of R, i.e. a few float32 ulps) that LLVM
turns into SIMD code: ``math.erf`` on float32 calls the scalar libm routine at ~10 ns per element, 40x
the cost of reading the element, which is what made GELU a third of the reference forward.
"""
import math
import os

# Numba's OpenMP threads would otherwise spin for a while after every kernel, stealing the cores from
# the BLAS threads of the matmul that follows (measured: a DeiT-Ti block at batch 1 took 31 ms instead
# of 2 ms on 2 cores). Must be set before Numba starts its thread pool; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import types  # noqa: E402
from numba.extending import overload  # noqa: E402

FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}     # no 'nnan'/'ninf': NaN and inf stay honest
jit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
pjit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
prange = numba.prange

INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def erf(x):
    """Scalar erf inside jitted code; see the overload below."""
    return math.erf(x)


@overload(erf, jit_options={"fastmath": FASTMATH})
def _erf_overload(x):
    if x == types.float32:
        def erf32(x):
            x = min(max(x, np.float32(-4.0)), np.float32(4.0))    # |erf| rounds to 1 beyond 4 in float32
            x2 = x * x
            p = np.float32(-2.72614225801306e-10)
            p = p * x2 + np.float32(2.77068142495902e-08)
            p = p * x2 + np.float32(-2.10102402082508e-06)
            p = p * x2 + np.float32(-5.69250639462346e-05)
            p = p * x2 + np.float32(-7.34990630326855e-04)
            p = p * x2 + np.float32(-2.95459980854025e-03)
            p = p * x2 + np.float32(-1.60960333262415e-02)
            q = np.float32(-1.45660718464996e-05)
            q = q * x2 + np.float32(-2.13374055278905e-04)
            q = q * x2 + np.float32(-1.68282697438203e-03)
            q = q * x2 + np.float32(-7.37332916720468e-03)
            q = q * x2 + np.float32(-1.42647390514189e-02)
            return x * p / q
        return erf32
    return lambda x: math.erf(x)

