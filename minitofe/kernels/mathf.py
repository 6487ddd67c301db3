"""Shared Numba settings and scalar math for the kernels (imported only when Numba is installed).

``jit`` / ``pjit`` compile with ``cache=True`` (the machine code is stored beside the module, so a new
process loads it instead of compiling again; ``kernels.cache`` drops it when a kernel source changes,
which Numba alone notices only for the function's own file) and with the fast-math flags that let LLVM
vectorise reductions (reassociation, contraction) but keep NaN/inf semantics, so a NaN still shows up as
NaN.

``erf(x)`` is exact for float64 (``math.erf``). For float32 it is a rational minimax approximation
(Eigen's ``generic_fast_erf_float``; |error| < 4e-7 on all of R, i.e. a few float32 ulps) that LLVM
turns into SIMD code: ``math.erf`` on float32 calls the scalar libm routine at ~10 ns per element, 40x
the cost of reading the element, which is what made GELU a third of the reference forward.

``exp(x)`` likewise: exact (``math.exp``) for float64; for float32 a Cody-Waite reduction
x = n ln2 + r and a degree-6 polynomial for e^r, scaled by 2^n built from its bits (relative error
< 3e-7 on [-87, 88]; beyond, the argument is clamped, so e^x rounds to ~1e-38 / ~1.7e38 instead of 0 / inf,
a NaN stays NaN). Numba's own float32 ``exp`` calls libm one element at a time (a softmax row ran 1.8x
slower than NumPy's); this one vectorises, ~4x faster than NumPy's ``exp`` here.
"""
import math
import os

# Numba's OpenMP threads would otherwise spin for a while after every kernel, stealing the cores from
# the BLAS threads of the matmul that follows (measured: a DeiT-Ti block at batch 1 took 31 ms instead
# of 2 ms on 2 cores). Must be set before Numba starts its thread pool; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cache import drop_stale_caches  # noqa: E402

drop_stale_caches()                       # before any cached kernel loads (``kernels.cache`` says why)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import types  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}     # no 'nnan'/'ninf': NaN and inf stay honest
jit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
pjit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy", parallel=True)
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
            lo, hi = np.float32(-4.0), np.float32(4.0)               # |erf| rounds to 1 beyond 4 in float32
            x = lo if x < lo else (hi if x > hi else x)   # selects, not min/max: these vectorise, NaN passes
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



def exp(x):
    """Scalar exp inside jitted code; see the overload below."""
    return math.exp(x)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits`` (a register move, no memory)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@overload(exp, jit_options={"fastmath": FASTMATH})
def _exp_overload(x):
    if x == types.float32:
        def exp32(x):
            lo, hi = np.float32(-87.0), np.float32(88.0)
            x = lo if x < lo else (hi if x > hi else x)          # comparisons false for NaN: it passes
            n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))   # round(x / ln2)
            r = (x - n * np.float32(0.693359375)) - n * np.float32(-2.12194440e-4)  # x - n ln2, two parts
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * r * r + r + np.float32(1.0)                  # e^r, |r| <= ln2 / 2
            return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))   # * 2^n
        return exp32
    return lambda x: math.exp(x)
