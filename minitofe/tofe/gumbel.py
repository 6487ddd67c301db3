"""Hard Gumbel-Softmax with a straight-through gradient, and the temperature schedule
(docs/method.md, "Token selector", deciding in training).

    G      = -log(-log(U)),  U ~ Uniform(0, 1)          (noise: drawn here or passed in)
    y_soft = softmax((logits + G) / tau)
    hard   = onehot(argmax y_soft)                       (ties -> index 0, i.e. "keep")

The forward VALUE with ``hard=True`` is exactly ``hard`` (0.0 / 1.0, built directly, not as
``hard + y - y``, whose float rounding would leave values like 0.9999999); the BACKWARD is always that of
``y_soft`` (straight-through). The noise is a constant: it gets no gradient. Randomness is passed in as a
``numpy.random.Generator`` or as a pre-drawn array (never global state), so two implementations can be fed the
same noise.
"""
import math
import numbers

import numpy as np

from ..backend import get_xp
from ..nn.layers import softmax_backward, softmax_forward

SCHEDULES = ("linear", "cosine", "exponential")


def gumbel_noise(rng, shape, dtype=np.float64):
    """Standard Gumbel noise of ``shape`` and float ``dtype`` from the Generator ``rng`` (a NumPy array).

    U is clipped into [tiny, 1 - eps] of ``dtype`` so that both logs, and so G, are finite.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"gumbel_noise: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"gumbel_noise: dtype must be a float dtype, got {dtype}")
    fi = np.finfo(dtype)
    u = np.clip(rng.random(shape).astype(dtype), fi.tiny, dtype.type(1) - fi.eps)
    return -np.log(-np.log(u))


def _check_tau(tau, name="tau"):
    if not isinstance(tau, numbers.Real) or isinstance(tau, bool) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {tau!r}")


def gumbel_softmax_forward(logits, noise, tau, hard=True):
    """logits: (..., K) (ToFe: K = 2, [keep, freeze]); noise: same shape and dtype; tau > 0.

    Returns y (..., K): the exact one-hot of the argmax when ``hard``, else y_soft; and the cache.
    """
    xp = get_xp(logits, noise)
    if tuple(noise.shape) != tuple(logits.shape):
        raise ValueError(f"gumbel_softmax: noise shape {tuple(noise.shape)} != logits shape "
                         f"{tuple(logits.shape)}")
    if noise.dtype != logits.dtype:
        raise TypeError(f"gumbel_softmax: noise dtype {noise.dtype} != logits dtype {logits.dtype}")
    _check_tau(tau)
    y_soft, _ = softmax_forward((logits + noise) / tau)                 # (..., K)
    if not hard:
        return y_soft, (y_soft, tau)
    idx = y_soft.argmax(axis=-1)                                        # first maximum: ties -> 0 (keep)
    y_hard = (xp.arange(logits.shape[-1]) == idx[..., None]).astype(logits.dtype)
    return y_hard, (y_soft, tau)


def gumbel_softmax_backward(dy, cache):
    """dy: (..., K) -> dlogits (..., K): the softmax Jacobian-vector product of y_soft, divided by tau
    (the same for hard and soft: straight-through)."""
    y_soft, tau = cache
    return softmax_backward(dy, y_soft) / tau


def tau_at(step, total_steps, tau, tau_end=None, schedule="cosine"):
    """The Gumbel temperature at optimisation ``step`` (0-based) of ``total_steps``.

    ``tau_end is None``: constant ``tau``. Otherwise ``tau`` at step 0 -> ``tau_end`` at ``total_steps``
    (held there beyond), with t = step / total_steps:
        linear       tau + (tau_end - tau) t
        cosine       tau_end + (tau - tau_end) (1 + cos(pi t)) / 2
        exponential  tau (tau_end / tau) ** t              (geometric)
    """
    for name, v in (("step", step), ("total_steps", total_steps)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ValueError(f"tau_at: {name} must be an int, got {v!r}")
    if step < 0:
        raise ValueError(f"tau_at: step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"tau_at: total_steps must be >= 1, got {total_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"tau_at: schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    _check_tau(tau)
    if tau_end is None:
        return float(tau)
    _check_tau(tau_end, "tau_end")
    t = min(step / total_steps, 1.0)
    if schedule == "linear":
        return float(tau + (tau_end - tau) * t)
    if schedule == "cosine":
        return float(tau_end + (tau - tau_end) * 0.5 * (1.0 + math.cos(math.pi * t)))
    return float(tau * (tau_end / tau) ** t)
