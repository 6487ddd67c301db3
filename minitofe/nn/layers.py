"""Elementary layers as forward/backward pairs: linear, LayerNorm, GELU, softmax,
cross-entropy.

Every ``*_forward`` returns ``(out, cache)``; every ``*_backward(dout, cache)`` returns the gradient of
the input first, then the gradients of the parameters in the order the forward took them. A cache is a
plain tuple holding exactly what the backward needs. The derivations are in
``notebooks/01_backprop_by_hand.ipynb``.
"""
import math

from ..backend import erf, get_xp
from ..config import LN_EPS


# ---------------------------------------------------------------- linear:  y = x @ W.T + b
def linear_forward(x, w, b=None):
    """x: (..., in), w: (out, in) as in torch/timm, b: (out,) or None -> y: (..., out)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    """-> dx (..., in), dw (out, in), db (out,) or None."""
    x, w, has_bias = cache
    dx = dy @ w
    dy2 = dy.reshape(-1, dy.shape[-1])                     # (M, out)
    dw = dy2.T @ x.reshape(-1, x.shape[-1])                # (out, in)
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dw, db


# ---------------------------------------------------------------- LayerNorm over the last axis
def layernorm_forward(x, w, b, eps=LN_EPS):
    """x: (..., C); w, b: (C,). y = (x - mean) / sqrt(var + eps) * w + b, biased variance as in torch."""
    xp = get_xp(x)
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)                        # (..., 1)
    xhat = xc * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    """-> dx, dw, db. Uses dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w."""
    xhat, rstd, w = cache
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(axis=lead)
    db = dy.sum(axis=lead)
    g = dy * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


# ---------------------------------------------------------------- GELU, exact erf form (torch's default)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """GELU(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); not the tanh approximation."""
    cdf = 0.5 * (1.0 + erf(x * _INV_SQRT2))
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x)."""
    x, cdf = cache
    xp = get_xp(x)
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (cdf + x * pdf)


# ---------------------------------------------------------------- softmax over the last axis
def softmax_forward(s):
    xp = get_xp(s)
    e = xp.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, p):
    """Jacobian-vector product of softmax: ds = p * (dp - sum(p * dp))."""
    return p * (dp - (p * dp).sum(axis=-1, keepdims=True))


def log_softmax(z):
    xp = get_xp(z)
    zs = z - z.max(axis=-1, keepdims=True)
    return zs - xp.log(xp.exp(zs).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- cross-entropy (mean over the batch)
def cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """logits: (B, K) float; labels: (B,) int in [0, K). Returns (scalar loss, cache).

    With smoothing eps the target is (1 - eps) * onehot + eps / K, as in torch's ``label_smoothing``.
    """
    xp = get_xp(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (B, K), got shape {logits.shape}")
    B, K = logits.shape
    labels = xp.asarray(labels)
    if labels.shape != (B,) or labels.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: labels must be ints of shape ({B},), "
                         f"got {labels.dtype} {labels.shape}")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(f"cross_entropy: labels must lie in [0, {K}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    target = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)  # (B, K)
    target[xp.arange(B), labels] += 1.0 - label_smoothing
    logp = log_softmax(logits)
    loss = -(target * logp).sum() / B
    return loss, (xp.exp(logp), target)


def cross_entropy_backward(dloss, cache):
    """-> dlogits (B, K) = dloss * (softmax - target) / B."""
    p, target = cache
    return (dloss / p.shape[0]) * (p - target)
