"""Weights transposed once: the (in, out) copy of a linear layer's (out, in) weight that the BLAS reads
fastest, made on first use and kept, for weights that cannot change.

Why: ``x @ w.T`` hands OpenBLAS a transposed operand, which it re-packs at every call; from a contiguous
(in, out) copy it packs faster. Measured here (AMD EPYC, AVX-512, OpenBLAS 0.3.31, float32, DeiT-S's
linear layers at 197 rows, i.e. batch 1): 6-7 % more GFLOP/s on two threads (172 against 162 for
qkv), 3 % at 1 576 rows; onnxruntime gets the same from packing its constant weights when a session
starts.

Only for weights that cannot change: a cached copy of an array that is later written in place would be
silently stale. So the copy is made only for an array that is read-only and owns its memory (or whose
every base is read-only): a loaded model's weights once ``freeze(params)`` has marked them, never the
arrays a training run updates. Each use checks again that the array is still read-only and drops the copy
if not. The copy costs the weights' memory once more (88 MB for DeiT-S in float32). Device arrays
(CuPy) pass through unchanged.
"""
import threading
import weakref

import numpy as np

_lock = threading.Lock()
_cache = {}                 # id(w) -> (weakref to w, its transposed contiguous copy)


def _immutable(w):
    """True when nothing can write ``w``'s memory through NumPy: it and every base are read-only."""
    a = w
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, (bytes, memoryview)) and getattr(a, "readonly", True)


def weight_t(w):
    """(out, in) weight -> an (in, out) array equal to ``w.T``: a contiguous copy made once for an immutable
    NumPy array (kept while ``w`` lives), else the plain transposed view."""
    if not isinstance(w, np.ndarray) or w.ndim != 2 or not _immutable(w):
        _cache.pop(id(w), None)
        return w.T
    hit = _cache.get(id(w))
    if hit is not None and hit[0]() is w:
        return hit[1]
    wt = np.ascontiguousarray(w.T)
    wt.flags.writeable = False
    key = id(w)
    with _lock:
        _cache[key] = (weakref.ref(w, lambda _, key=key: _cache.pop(key, None)), wt)
    return wt


def freeze(params):
    """Mark every NumPy array of ``params`` ({key: array}) read-only in place, and every array it is a
    view of (a loaded file's weights are often views of one buffer), so that the fast path may keep
    transposed copies of them (``weight_t``); returns ``params``. For weights that only run inference
    (the CLI's predict / eval / demo do this): a later write to them, or to an array they view, raises
    ``ValueError`` instead of leaving a kept copy stale."""
    for v in params.values():
        a = v
        while isinstance(a, np.ndarray):
            a.flags.writeable = False
            a = a.base
    return params


def clear():
    """Drop every kept copy."""
    with _lock:
        _cache.clear()
