"""A gradient checker that ships with the package (docs/contributing.md §6).

- ``numerical_grad(f, x)``: central differences ``(f(x + h e_i) - f(x - h e_i)) / 2h`` for every entry
  of a float64 array, in place (restored afterwards).
- ``rel_error(a, b)``: ``||a - b|| / max(||a|| + ||b||, tiny)``; a norm-wise error, so that entries that
  are ~0 in both do not dominate the way an element-wise ratio would.
- ``check_param_grads(f, params, grads)``: the above for every array in a dict.
- ``directional_check(f, params, grads, rng)``: for a whole model, one random direction ``d``:
  compares ``(f(p + h d) - f(p - h d)) / 2h`` with ``sum <grad, d>``: two evaluations instead of one per
  parameter.

``f`` takes no argument and reads the (mutated) arrays; use float64 so that ``h = 1e-6`` gives
~1e-10 truncation + rounding error.
"""
import numpy as np


def rel_error(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    num = np.linalg.norm((a - b).ravel())
    den = np.linalg.norm(a.ravel()) + np.linalg.norm(b.ravel())
    return float(num / max(den, 1e-300)) if num else 0.0


def _require_float64(x, name):
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 NumPy arrays; {name} is "
                        f"{getattr(x, 'dtype', type(x).__name__)}")


def numerical_grad(f, x, h=1e-6):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x`` (mutated in place
    and restored)."""
    _require_float64(x, "x")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_grad: x must be contiguous so it can be perturbed in place")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2.0 * h)
    return grad


def check_param_grads(f, params, grads, keys=None, h=1e-6):
    """Return ``{key: rel_error(numerical, analytic)}`` for each key (default: all of ``params``)."""
    return {k: rel_error(numerical_grad(f, params[k], h), grads[k]) for k in (keys or list(params))}


def directional_check(f, params, grads, rng, h=1e-6):
    """Random-direction check of a whole gradient dict. Returns (numerical, analytic, rel_error)."""
    for k, v in params.items():
        _require_float64(v, k)
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    for k in params:
        params[k] += h * direction[k]
    fp = float(f())
    for k in params:
        params[k] -= 2 * h * direction[k]
    fm = float(f())
    for k in params:
        params[k] += h * direction[k]
    numerical = (fp - fm) / (2 * h)
    analytic = float(sum(np.sum(grads[k] * direction[k]) for k in params))
    return numerical, analytic, rel_error(numerical, analytic)
