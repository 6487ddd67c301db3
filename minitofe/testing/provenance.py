"""What a float result depends on besides the code, and how pinned values are compared with it.

The same float64 program gives bit-identical results only where the arithmetic is the same: the same NumPy
(its SIMD loops differ by CPU: ``numpy.show_runtime()``), the same BLAS library, version and kernel
(OpenBLAS picks a kernel per CPU, ``OPENBLAS_CORETYPE`` forces one), the same Numba. Elsewhere a matrix
product may add in another order and differ in the last bits (7.7e-15 seen between an AVX-512 kernel and
a Haswell one). So a pinned file records ``arithmetic()`` of the machine that wrote it, and
``compare_pinned`` checks bit for bit where it matches and within ``FLOAT_BOUND`` elsewhere; integers,
booleans, masks, indices and counts are exact in both modes.
"""
import json
import pathlib
import platform

import numpy as np

# in "bounded" mode a float array may differ from its pinned value by this much, relative to the largest
# magnitude in the pinned array (float64; rounding across BLAS kernels is ~1e-14, a real change is far more)
FLOAT_BOUND = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def _numpy_cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:                                     # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return sorted(k for k, on in __cpu_features__.items() if on)


def blas_libraries(numpy_only=False):
    """Each BLAS library loaded now, as threadpoolctl reports it: [{internal_api, version, architecture}],
    sorted, duplicates once. ``numpy_only``: the one shipped in NumPy's wheel when there is one (others, as
    SciPy's, load on first use, so the full list depends on what ran before), else all of them."""
    from threadpoolctl import threadpool_info
    infos = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    if numpy_only:
        infos = [i for i in infos if pathlib.Path(i.get("filepath", "")).parent.name.startswith("numpy")] \
            or infos
    blas = {json.dumps({k: str(info.get(k)) for k in ("internal_api", "version", "architecture")},
                       sort_keys=True) for info in infos}
    return [json.loads(b) for b in sorted(blas)]


def arithmetic():
    """-> {python, machine, numpy, numpy_simd, numba, blas}: what float results depend on here. ``blas``
    lists each BLAS library NumPy / SciPy loaded (``blas_libraries``: api, version, core type); the thread
    count is left out (OpenBLAS's gemm splits rows and columns, not the sum)."""
    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {"python": platform.python_version(), "machine": platform.machine(), "numpy": np.__version__,
            "numpy_simd": _numpy_cpu_features(), "numba": numba_version, "blas": blas_libraries()}


def differences(saved, now, exact):
    """-> [(key, why)] for every pinned value of ``saved`` that ``now`` does not reproduce. ``exact``:
    bit for bit (``np.array_equal`` and the same dtype); else floats within ``FLOAT_BOUND`` of the pinned
    array's largest magnitude, everything else (ints, bools, strings) still exact."""
    bad = [(k, "missing") for k in sorted(set(saved) - set(now))]
    bad += [(k, "not pinned") for k in sorted(set(now) - set(saved))]
    for key in sorted(set(saved) & set(now)):
        a, b = np.asarray(saved[key]), np.asarray(now[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            bad.append((key, f"{b.dtype}{b.shape} where {a.dtype}{a.shape} was pinned"))
        elif exact or a.dtype not in FLOAT_BOUND:
            if not np.array_equal(a, b):
                bad.append((key, "differs" + ("" if exact else " (compared exactly: not a float)")))
        elif not np.array_equal(np.isnan(a), np.isnan(b)):
            bad.append((key, "NaN where the pinned value has none, or the reverse"))
        else:
            scale = float(np.max(np.abs(np.nan_to_num(a)), initial=0.0))
            err = float(np.max(np.abs(np.nan_to_num(a) - np.nan_to_num(b)), initial=0.0))
            if err > FLOAT_BOUND[a.dtype] * scale:
                bound = FLOAT_BOUND[a.dtype]
                bad.append((key, f"max |diff| {err:.3g} > {bound:g} x max |pinned| {scale:.3g}"))
    return bad
