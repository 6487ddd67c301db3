"""Checks for notebook 01's exercises: the masked softmax of ToFe's training attention (forward, backward)
and the LayerNorm backward (docs/method.md "Keep path", training; ``minitofe.nn.attention``,
``nn.layers``)."""
import numpy as np

from ..config import LN_EPS
from ..nn.attention import masked_softmax_backward, masked_softmax_forward
from ..nn.layers import layernorm_backward, layernorm_forward
from .verdict import Wrong, call, exercise, parts, same, same_as_finite_differences, search

SIZES = {"B": (1, 2), "H": (1, 2), "N": (1, 5), "seed": (0, 1000)}


def scores_and_mask(rng, B, H, N):
    """Random scores (B, H, N, N) and a 0/1 key mask (B, N); when N > 1 the first key is kept and the last
    frozen, so that every case has both."""
    s = rng.standard_normal((B, H, N, N))
    keep = (rng.random((B, N)) < 0.6).astype(np.float64)
    if N > 1:
        keep[:, 0], keep[:, -1] = 1.0, 0.0
    return s, keep


def _case(case):
    rng = np.random.default_rng(case["seed"])
    return scores_and_mask(rng, case["B"], case["H"], case["N"])


def _describe(case):
    s, keep = _case(case)
    return f"B={case['B']}, H={case['H']}, N={case['N']}, keep={keep.astype(int).tolist()}"


def _why(keep):
    def explain(idx):
        b, i, j = idx[0], idx[2], idx[3]
        if i == j:
            return f" (a diagonal entry: the diagonal is always allowed, even when keep[{b}, {j}] = 0)"
        if keep[b, j] == 0:
            return f" (key {j} is frozen, keep[{b}, {j}] = 0, so it gets no weight)"
        if keep[b, i] == 0:
            return (f" (query {i} is frozen, keep[{b}, {i}] = 0, yet its row sums over the kept keys and "
                    f"itself: the diagonal is always allowed)")
        return f" (key {j} is kept; is the row's normaliser a sum over the allowed keys only?)"
    return explain


def _forward_agrees(masked_softmax, s, keep):
    want, _ = masked_softmax_forward(s, keep)
    same("A", call(masked_softmax, s, keep), want, explain=_why(keep))


@exercise("masked_softmax")
def check_masked_softmax(masked_softmax):
    """masked_softmax(s, keep) -> A, compared with ``masked_softmax_forward``."""
    s, keep = scores_and_mask(np.random.default_rng(0), 2, 2, 5)
    _forward_agrees(masked_softmax, s, keep)
    try:                                                          # exp(1000) overflows: subtract the max
        _forward_agrees(masked_softmax, s + 1000.0, keep)
    except Wrong as wrong:
        raise Wrong(f"with every score shifted by +1000 (A must not change: softmax is shift-invariant, "
                    f"and np.exp(1000) = inf): {wrong}") from None
    tried = search(SIZES, lambda c: _forward_agrees(masked_softmax, *_case(c)), _describe)
    return f"A equals masked_softmax_forward on a fixed case, with scores near 1000, and on {tried}"


def _backward_agrees(masked_softmax_grad, s, keep, dA, finite_differences):
    A, cache = masked_softmax_forward(s, keep)
    ds_want, dkeep_want = masked_softmax_backward(dA, cache)
    ds, dkeep = parts(call(masked_softmax_grad, dA, s, keep), ("ds", "dkeep"))
    if finite_differences:
        loss = lambda: float((masked_softmax_forward(s, keep)[0] * dA).sum())
        same_as_finite_differences("ds", ds, loss, s)
        same_as_finite_differences("dkeep", dkeep, loss, keep)
    same("ds", ds, ds_want, explain=_why(keep))
    same("dkeep", dkeep, dkeep_want)


def _grad_case(case):
    s, keep = _case(case)
    return s, keep, np.random.default_rng(case["seed"] + 1).standard_normal(s.shape)


@exercise("masked_softmax_grad")
def check_masked_softmax_grad(masked_softmax_grad):
    """masked_softmax_grad(dA, s, keep) -> (ds, dkeep), against finite differences and the package."""
    rng = np.random.default_rng(1)
    s, keep = scores_and_mask(rng, 1, 2, 4)
    _backward_agrees(masked_softmax_grad, s, keep, rng.standard_normal(s.shape), True)
    tried = search(SIZES, lambda c: _backward_agrees(masked_softmax_grad, *_grad_case(c), False), _describe)
    return f"ds and dkeep equal finite differences on a fixed case and masked_softmax_backward on {tried}"


def _layernorm_agrees(layernorm_grad, x, w, b, dy, finite_differences):
    _, cache = layernorm_forward(x, w, b)
    want = layernorm_backward(dy, cache)
    got = parts(call(layernorm_grad, dy, x, w, LN_EPS), ("dx", "dw", "db"))
    if finite_differences:
        loss = lambda: float((layernorm_forward(x, w, b)[0] * dy).sum())
        for name, g, arr in zip(("dx", "dw", "db"), got, (x, w, b)):
            same_as_finite_differences(name, g, loss, arr)
    for name, g, wnt in zip(("dx", "dw", "db"), got, want):
        same(name, g, wnt)


def _layernorm_case(case):
    rng = np.random.default_rng(case["seed"])
    shape = (case["B"], case["N"], case["C"])
    x = rng.standard_normal(shape) * rng.uniform(0.1, 3.0)
    w, b = 1.0 + rng.standard_normal(shape[-1:]), rng.standard_normal(shape[-1:])
    return x, w, b, rng.standard_normal(shape)


@exercise("layernorm_grad")
def check_layernorm_grad(layernorm_grad):
    """layernorm_grad(dy, x, w, eps) -> (dx, dw, db), against finite differences and the package."""
    case = {"B": 2, "N": 3, "C": 6, "seed": 0}
    _layernorm_agrees(layernorm_grad, *_layernorm_case(case), True)
    sizes = {"B": (1, 2), "N": (1, 3), "C": (2, 8), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _layernorm_agrees(layernorm_grad, *_layernorm_case(c), False),
                   lambda c: ", ".join(f"{k}={v}" for k, v in c.items()))
    return f"dx, dw, db equal finite differences on a fixed case and layernorm_backward on {tried}"
