"""The one array-backend switch (STYLE.md §4).

This is the only module that may import CuPy. Everything else asks ``xp = get_xp(x)`` for the array
module that owns ``x`` and calls ``xp.*`` on it, so the same code runs on NumPy (host) and CuPy (device)
arrays. Shims cover what differs between the two: ``erf`` (SciPy vs. cupyx) and scatter-add.
"""
import numpy as np

try:  # optional: only present on machines with a GPU build of CuPy
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - no GPU on CI
    _cupy = None


def get_xp(*arrays):
    """Return the array module (``numpy`` or ``cupy``) of the given arrays; NumPy when none is on a device."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_numpy(a):
    """Copy a device array to the host; return NumPy arrays (and scalars) unchanged."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def erf(x):
    """Element-wise error function on NumPy or CuPy arrays (exact, not the tanh approximation)."""
    if get_xp(x) is np:
        from scipy.special import erf as _erf
        return _erf(x)
    from cupyx.scipy.special import erf as _erf  # pragma: no cover
    return _erf(x)


def scatter_add(target, index, values):
    """``target[index] += values`` with repeated indices accumulated (``np.add.at`` / ``cupyx.scatter_add``)."""
    if get_xp(target) is np:
        np.add.at(target, index, values)
    else:  # pragma: no cover
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target
