"""A strict fake device: an array type that behaves like a CuPy array where it matters for portability.

CI has no GPU, yet the code must run on CuPy arrays through ``backend.get_xp``. ``FakeDeviceArray``
wraps a NumPy array but, like ``cupy.ndarray``, is *not* an ``numpy.ndarray`` and refuses every implicit
conversion to one: ``np.asarray(x)``, ``np.exp(x)``, ``np.concatenate([x])``, ``numpy_array + x`` and
``x[...] = numpy_array`` all raise ``TypeError``. The only ways across are explicit: ``fake_xp.asarray``
(host -> device) and ``backend.to_numpy`` / ``x.get()`` (device -> host). ``fake_xp`` is the module
shim ``get_xp`` returns for it: every ``numpy`` function, unwrapping device arguments and wrapping array
results. Importing this module registers it with the backend; ``to_device`` moves arrays (or dicts and
lists of them) onto the fake device.

This is stricter than CuPy in one respect (NumPy functions are never dispatched to the device, where
CuPy implements a few via ``__array_function__``); everything that passes here runs on CuPy as long as
CuPy has the ``xp.*`` functions used, which for the ones minitofe uses it does.
"""
import numbers

import numpy as np

from ..backend import register_array_module

_MSG = ("Implicit conversion to a NumPy array is not allowed (fake device array, as CuPy). "
        "Use minitofe.backend.to_numpy(x) or x.get() to copy it to the host explicitly.")


def _unwrap(v, allow_host=False):
    """Device arrays -> their NumPy payload (recursively in lists/tuples/dicts); host arrays are refused."""
    if isinstance(v, FakeDeviceArray):
        return v._a
    if isinstance(v, np.ndarray) and not allow_host:
        raise TypeError(f"a host numpy.ndarray {v.dtype}{v.shape} was mixed with fake device arrays; "
                        f"move it with xp.asarray first (CuPy refuses it too)")
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(e, allow_host) for e in v)
    if isinstance(v, dict):
        return {k: _unwrap(e, allow_host) for k, e in v.items()}
    return v


def _wrap(v):
    """NumPy results -> device arrays (numpy scalars become 0-d arrays, as CuPy returns them)."""
    if isinstance(v, np.ndarray):
        return FakeDeviceArray(v)
    if isinstance(v, np.generic) and not isinstance(v, (np.str_, np.bytes_)):
        return FakeDeviceArray(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_wrap(e) for e in v)
    if isinstance(v, list):
        return [_wrap(e) for e in v]
    return v


def _forward(name):
    """A method of the wrapped array, with device arguments unwrapped and results wrapped."""
    def method(self, *args, **kwargs):
        return _wrap(getattr(self._a, name)(*_unwrap(args), **_unwrap(kwargs)))
    method.__name__ = name
    return method


def _binary(name, inplace=False):
    def op(self, other):
        if isinstance(other, np.ndarray):
            raise TypeError(f"unsupported operand: fake device array {name} host numpy.ndarray "
                            f"{other.dtype}{other.shape} (CuPy raises too); use xp.asarray")
        res = getattr(self._a, name)(_unwrap(other))
        if res is NotImplemented:
            return res
        return self if inplace else _wrap(res)
    op.__name__ = name
    return op


class FakeDeviceArray:
    """A NumPy array "on a device": same methods and operators, no implicit way back to NumPy."""
    __slots__ = ("_a",)
    __array_ufunc__ = None              # np.exp(x), np.add(x, y), ndarray + x: TypeError

    def __init__(self, a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"FakeDeviceArray wraps a numpy.ndarray, got {type(a).__name__}")
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError(_MSG)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a fake device array; use xp = get_xp(x) "
                        f"and xp.{func.__name__}")

    def get(self):
        """Explicit device -> host copy (``cupy.ndarray.get``)."""
        return self._a.copy()

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: FakeDeviceArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(r) for r in self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    # scalars leave the device only on request (CuPy synchronises and allows these on size-1 arrays)
    def __bool__(self):
        return bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __index__(self):
        return self._a.__index__()

    def __format__(self, spec):
        return format(self._a.item(), spec) if self._a.ndim == 0 else format(repr(self), spec)

    def __repr__(self):
        return f"FakeDeviceArray({self._a!r})"

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return _wrap(+self._a)

    def __abs__(self):
        return _wrap(abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)


_OPS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
        "lshift", "rshift")
for _op in _OPS:
    for _name in (f"__{_op}__", f"__r{_op}__"):
        setattr(FakeDeviceArray, _name, _binary(_name))
    setattr(FakeDeviceArray, f"__i{_op}__", _binary(f"__i{_op}__", inplace=True))
for _name in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
    setattr(FakeDeviceArray, _name, _binary(_name))
FakeDeviceArray.__hash__ = None
_METHODS = ("reshape", "transpose", "swapaxes", "ravel", "flatten", "squeeze", "astype", "copy", "fill",
            "sum", "mean", "max", "min", "prod", "var", "std", "any", "all", "argmax", "argmin", "argsort",
            "cumsum", "clip", "round", "nonzero", "item", "tolist", "take", "repeat", "conj")
for _name in _METHODS:
    setattr(FakeDeviceArray, _name, _forward(_name))


class _FakeXP:
    """The module shim for fake device arrays: ``numpy``'s namespace, device in and device out."""
    _HOST_IN = {"asarray", "array", "asanyarray", "ascontiguousarray"}   # host -> device transfers

    def __getattr__(self, name):
        obj = getattr(np, name)
        if isinstance(obj, (type, numbers.Number)) or not callable(obj):
            return obj                      # dtypes, finfo, inf, pi, newaxis ...
        allow_host = name in self._HOST_IN

        def fn(*args, **kwargs):
            return _wrap(obj(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))
        fn.__name__ = name
        return fn

    def __repr__(self):
        return "<module 'fake_xp' (numpy on a strict fake device)>"


fake_xp = _FakeXP()


def _to_numpy(a):
    return a._a.copy()


def _erf(x):
    from scipy.special import erf
    return FakeDeviceArray(erf(x._a))


def _scatter_add(target, index, values):
    np.add.at(target._a, _unwrap(index), _unwrap(values))


def to_device(obj):
    """Copy NumPy arrays (alone, or the values of a dict, or the items of a list/tuple) to the fake
    device; everything else is returned unchanged."""
    if isinstance(obj, np.ndarray):
        return FakeDeviceArray(obj.copy())
    if isinstance(obj, dict):
        return {k: to_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v) for v in obj)
    return obj


register_array_module(FakeDeviceArray, fake_xp, _to_numpy, _erf, _scatter_add)
