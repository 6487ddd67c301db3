"""Checks for notebook 01's exercises: the masked softmax of ToFe's training attention (forward, backward)
and the LayerNorm backward (docs/method.md "Keep path", training; ``minitofe.nn.attention``,
``nn.layers``).

Each check computes the plausible wrong answers on the same input (softmax-then-mask, a forgotten
diagonal, a missing term of the LayerNorm backward, ...) and names the one a FAIL equals; the fixed
cases are chosen where those answers differ from the right one (a frozen key scoring far above the kept
ones, a row whose variance is as small as eps).
"""
import numpy as np

from ..config import LN_EPS
from ..nn.attention import masked_softmax_backward, masked_softmax_forward
from ..nn.layers import layernorm_backward, layernorm_forward
from .calls import call, exercise
from .verdict import parts, same, same_as_finite_differences, search

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


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_mistakes(s, keep):
    """The masked softmax computed the plausible wrong ways: (cause, A)."""
    N = s.shape[-1]
    eye = np.eye(N)
    key = keep[:, None, None, :]
    m = key * (1 - eye) + eye                                          # m', the right mask
    with np.errstate(all="ignore"):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        no_diagonal = key * e / (key * e).sum(axis=-1, keepdims=True)
        query = keep[:, None, :, None] * (1 - eye) + eye
        z = np.where(m > 0, s, -np.inf)
        allowed_e = np.exp(z - z.max(axis=-1, keepdims=True))            # the safe numerators
        return [
            ("softmax first, mask after, without renormalising: the kept weights of a row no longer sum "
             "to 1. Mask inside: divide by the sum over the allowed keys only",
             m * _softmax(s)),
            ("the diagonal is masked too: a frozen query then has no allowed key (0/0). The diagonal is "
             "always allowed, m'_ii = 1", no_diagonal),
            ("the mask is applied to the query rows (keep[:, None, :, None]); it masks keys, the columns "
             "(keep[:, None, None, :])", query * e / (query * e).sum(axis=-1, keepdims=True)),
            ("the row maximum is taken over every key, frozen ones too: when a frozen key scores far above "
             "the kept ones, every allowed exp(s - max) underflows to 0 (0/0). Take the maximum over the "
             "allowed keys", m * e / (m * e).sum(-1, keepdims=True)),
            ("normalised over the query axis (-2); each row, over the keys (axis -1), sums to 1",
             allowed_e / allowed_e.sum(axis=-2, keepdims=True)),
            ("normalised over the query axis (-2); each row, over the keys (axis -1), sums to 1",
             m * e / (m * e).sum(axis=-2, keepdims=True)),
            ("the scores are not shifted by the row maximum: np.exp overflows for large scores",
             m * np.exp(s) / (m * np.exp(s)).sum(-1, keepdims=True)),
        ]


def _forward_agrees(masked_softmax, s, keep):
    want, _ = masked_softmax_forward(s, keep)
    same("A", call(masked_softmax, s, keep), want, mistakes=_softmax_mistakes(s, keep))


def far_frozen_key():
    """One row set where frozen key 2 scores 800 above the kept ones (allowed exps underflow if the max
    is taken over every key), and every score near 1000 (np.exp overflows without the shift)."""
    s = np.random.default_rng(3).standard_normal((1, 1, 4, 4)) + 1000.0
    s[..., 2] += 800.0
    return s, np.array([[1.0, 1.0, 0.0, 1.0]])


@exercise("masked_softmax",
          replaces=(masked_softmax_forward, "minitofe.kernels.softmax.masked_softmax_forward"))
def check_masked_softmax(masked_softmax):
    """masked_softmax(s, keep) -> A, compared with ``masked_softmax_forward``."""
    s, keep = scores_and_mask(np.random.default_rng(0), 2, 2, 5)
    _forward_agrees(masked_softmax, s, keep)
    _forward_agrees(masked_softmax, *far_frozen_key())
    tried = search(SIZES, lambda c: _forward_agrees(masked_softmax, *_case(c)), _describe)
    return (f"A equals masked_softmax_forward on a fixed case, with scores near 1000 and a frozen key far "
            f"above the kept ones, and on {tried}")


def _backward_mistakes(dA, s, keep):
    """(cause, (ds, dkeep)) for the plausible wrong backwards, evaluated lazily."""
    N = s.shape[-1]
    eye = np.eye(N)
    A, (_, p) = masked_softmax_forward(s, keep)
    g = dA - (A * dA).sum(axis=-1, keepdims=True)
    right = (p * g).sum(axis=1)                                       # (B, N, N) before the diagonal goes
    return {
        "dkeep": [
            ("dkeep includes the diagonal terms: m'_ii is the constant 1, not keep_i, so it gets no gradient",
             right.sum(axis=1)),
            ("dkeep sums over the keys j of each row; keep_j is key j's mask, so sum over the query rows i "
             "(and the heads)", (right * (1 - eye)).sum(axis=2)),
            ("dkeep misses the normaliser's term: Z also depends on keep, so use dA - sum_k A_ik dA_ik, "
             "not dA alone", ((p * dA).sum(axis=1) * (1 - eye)).sum(axis=1)),
        ],
        "ds": [
            ("ds is the plain softmax's backward without the mask: use the masked A",
             _softmax(s) * (dA - (_softmax(s) * dA).sum(-1, keepdims=True))),
            ("ds misses the row term: ds = A * (dA - sum_k A_ik dA_ik)", A * dA),
        ],
    }


def _backward_agrees(masked_softmax_grad, s, keep, dA, finite_differences):
    A, cache = masked_softmax_forward(s, keep)
    ds_want, dkeep_want = masked_softmax_backward(dA, cache)
    ds, dkeep = parts(call(masked_softmax_grad, dA, s, keep), ("ds", "dkeep"))
    mistakes = _backward_mistakes(dA, s, keep)
    same("ds", ds, ds_want, mistakes=mistakes["ds"])
    same("dkeep", dkeep, dkeep_want, mistakes=mistakes["dkeep"])
    if finite_differences:
        loss = lambda: float((masked_softmax_forward(s, keep)[0] * dA).sum())
        same_as_finite_differences("ds", ds, loss, s)
        same_as_finite_differences("dkeep", dkeep, loss, keep)


def _grad_case(case):
    s, keep = _case(case)
    return s, keep, np.random.default_rng(case["seed"] + 1).standard_normal(s.shape)


@exercise("masked_softmax_grad",
          replaces=(masked_softmax_backward, "minitofe.kernels.softmax.masked_softmax_backward"))
def check_masked_softmax_grad(masked_softmax_grad):
    """masked_softmax_grad(dA, s, keep) -> (ds, dkeep), against finite differences and the package."""
    rng = np.random.default_rng(1)
    s, keep = scores_and_mask(rng, 1, 2, 4)
    _backward_agrees(masked_softmax_grad, s, keep, rng.standard_normal(s.shape), True)
    tried = search(SIZES, lambda c: _backward_agrees(masked_softmax_grad, *_grad_case(c), False), _describe)
    return f"ds and dkeep equal finite differences on a fixed case and masked_softmax_backward on {tried}"


def _layernorm_mistakes(dy, x, w, eps):
    """(cause, answer) per output for the plausible wrong LayerNorm backwards."""
    lead = tuple(range(dy.ndim - 1))
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat, g = (x - mu) * rstd, dy * w

    def dx(g, xhat=xhat, rstd=rstd):
        return rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    unbiased = 1 / np.sqrt(((x - mu) ** 2).sum(-1, keepdims=True) / max(x.shape[-1] - 1, 1) + eps)
    outside = 1 / (np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True)) + eps)
    axis0 = tuple(range(x.ndim - 1))                                  # statistics over the batch
    mu0 = x.mean(axis0, keepdims=True)
    rstd0 = 1 / np.sqrt(((x - mu0) ** 2).mean(axis0, keepdims=True) + eps)
    return {
        "dx": [
            ("the mean and variance are taken over the wrong axis: LayerNorm normalises each token over its "
             "C channels, axis -1", dx(g, (x - mu0) * rstd0, rstd0)),
            ("dx misses the term - xhat * mean(g * xhat): the variance depends on x too",
             rstd * (g - g.mean(-1, keepdims=True))),
            ("dx misses the term - mean(g): the mean depends on x too",
             rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))),
            ("dx uses dy where the formula has g = dy * w", dx(dy)),
            ("the variance is the unbiased one (divided by C - 1); LayerNorm divides by C",
             dx(g, (x - mu) * unbiased, unbiased)),
            ("eps is added outside the square root: rstd = 1 / sqrt(var + eps)",
             dx(g, (x - mu) * outside, outside)),
        ],
        "dw": [("dw sums dy * x; it is the sum of dy * xhat", (dy * x).sum(lead)),
               ("dw forgets dy: it is the sum of dy * xhat", xhat.sum(lead))],
        "db": [("db is the sum of dy over every axis but the last", dy.sum(-1))],
    }


def _layernorm_agrees(layernorm_grad, x, w, b, dy, finite_differences):
    _, cache = layernorm_forward(x, w, b)
    want = layernorm_backward(dy, cache)
    got = parts(call(layernorm_grad, dy, x, w, LN_EPS), ("dx", "dw", "db"))
    mistakes = _layernorm_mistakes(dy, x, w, LN_EPS)
    for name, g, wnt in zip(("dx", "dw", "db"), got, want):
        same(name, g, wnt, mistakes=mistakes[name])
    if finite_differences:
        loss = lambda: float((layernorm_forward(x, w, b)[0] * dy).sum())
        for name, g, arr in zip(("dx", "dw", "db"), got, (x, w, b)):
            same_as_finite_differences(name, g, loss, arr)


def _layernorm_case(case, scale=None):
    rng = np.random.default_rng(case["seed"])
    shape = (case["B"], case["N"], case["C"])
    x = rng.standard_normal(shape) * (rng.uniform(0.1, 3.0) if scale is None else scale)
    w, b = 1.0 + rng.standard_normal(shape[-1:]), rng.standard_normal(shape[-1:])
    return x, w, b, rng.standard_normal(shape)


@exercise("layernorm_grad", replaces=(layernorm_backward, "minitofe.kernels.layers.layernorm_backward"))
def check_layernorm_grad(layernorm_grad):
    """layernorm_grad(dy, x, w, eps) -> (dx, dw, db), against finite differences and the package."""
    case = {"B": 2, "N": 3, "C": 6, "seed": 0}
    _layernorm_agrees(layernorm_grad, *_layernorm_case(case), True)
    # rows whose variance is about eps: where eps inside or outside the square root differ
    _layernorm_agrees(layernorm_grad, *_layernorm_case(case, scale=1e-3), False)
    sizes = {"B": (1, 2), "N": (1, 3), "C": (2, 8), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _layernorm_agrees(layernorm_grad, *_layernorm_case(c), False),
                   lambda c: ", ".join(f"{k}={v}" for k, v in c.items()))
    return (f"dx, dw, db equal finite differences on a fixed case, layernorm_backward on rows whose variance "
            f"is near eps and on {tried}")
