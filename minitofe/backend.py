"""The one array-backend switch (docs/contributing.md §4).

This is the only module that may import CuPy. Everything else asks ``xp = get_xp(x)`` for the array
module that owns ``x`` and calls ``xp.*`` on it, so the same code runs on NumPy (host) and CuPy (device)
arrays. Shims cover what differs between the two: ``erf`` (SciPy vs. cupyx) and scatter-add.

Array modules other than NumPy are *registered* (``register_array_module``): CuPy when it imports, and
in the tests the strict fake device of ``minitofe.testing.fakedevice``, an array type that refuses every
implicit conversion to NumPy as CuPy does. Running the model on the fake device is how CI, which has no
GPU, catches a stray ``np.`` call on a device array.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayModule:
    """A non-NumPy array backend: its array type, its NumPy-like module and the shims that differ."""
    array_type: type
    xp: object                  # the NumPy-like module (``cupy``)
    to_numpy: object            # device array -> host ``numpy.ndarray`` (``cupy.asnumpy``)
    erf: object                 # element-wise erf on device arrays (``cupyx.scipy.special.erf``)
    scatter_add: object         # scatter_add(target, index, values) accumulating repeats, in place


_MODULES = []                   # registered ArrayModules, searched in order


def register_array_module(array_type, xp, to_numpy, erf, scatter_add):
    """Make ``get_xp`` return ``xp`` for arrays of ``array_type`` (replacing an earlier registration)."""
    _MODULES[:] = [m for m in _MODULES if m.array_type is not array_type]
    _MODULES.append(ArrayModule(array_type, xp, to_numpy, erf, scatter_add))


def _module_of(arrays):
    for a in arrays:
        for m in _MODULES:
            if isinstance(a, m.array_type):
                return m
    return None


def get_xp(*arrays):
    """Return the array module (``numpy``, ``cupy``, ...) of the given arrays; NumPy when none is on a
    device."""
    m = _module_of(arrays)
    return np if m is None else m.xp


def is_host(*arrays):
    """True when none of the arrays lives on a registered device (they are NumPy arrays or scalars)."""
    return _module_of(arrays) is None


def to_numpy(a):
    """Copy a device array to the host; return NumPy arrays (and scalars) unchanged."""
    m = _module_of((a,))
    return np.asarray(a) if m is None else m.to_numpy(a)


def erf(x):
    """Element-wise error function on NumPy or device arrays (exact, not the tanh approximation)."""
    m = _module_of((x,))
    if m is None:
        from scipy.special import erf as _erf
        return _erf(x)
    return m.erf(x)


def scatter_add(target, index, values):
    """``target[index] += values`` with repeated indices accumulated (``np.add.at`` /
    ``cupyx.scatter_add``)."""
    m = _module_of((target,))
    if m is None:
        np.add.at(target, index, values)
    else:
        m.scatter_add(target, index, values)
    return target


def read_only(a):
    """A read-only view of ``a`` (NumPy: an in-place write through it raises ``ValueError``). Device
    arrays have no such flag and come back unchanged. The caller still owns ``a`` itself."""
    if not is_host(a):
        return a
    view = np.asarray(a).view()
    view.flags.writeable = False
    return view


def frozen_copy(params):
    """``{key: array}`` -> a new dict of new arrays, read-only where the backend allows (see ``read_only``):
    a value that must never change (a teacher's weights) is owned, not shared with whoever passed it."""
    return {k: read_only(get_xp(v).array(v, copy=True)) for k, v in params.items()}


def _register_cupy():  # pragma: no cover - no GPU on CI
    try:  # optional: only present on machines with a GPU build of CuPy
        import cupy
        import cupyx
        from cupyx.scipy.special import erf as cupy_erf
    except Exception:
        return
    register_array_module(cupy.ndarray, cupy, cupy.asnumpy, cupy_erf, cupyx.scatter_add)


_register_cupy()
