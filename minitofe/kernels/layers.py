"""Fused Numba kernels for the element-wise and row-wise layers: LayerNorm, exact GELU, (masked) softmax.

The public functions have the names, signatures and caches of their references in ``minitofe.nn.layers``
and ``minitofe.nn.attention`` (a fast forward's cache works with the reference backward and the other
way round), and ``tests/test_kernels.py`` checks them against those references. Each kernel does one
pass over memory where NumPy does three to six, and splits the rows over all cores (``prange``).
The ``*_`` kernels below are the in-place pieces that ``kernels.block`` strings together.
"""
import numpy as np

from .mathf import INV_SQRT2, INV_SQRT_2PI, erf, jit, pjit, prange
from ..config import LN_EPS


def _rows(a):
    """View (..., C) as contiguous (M, C) rows (copies only when ``a`` is not already contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _c(a, v):
    return a.dtype.type(v)                      # a constant in the array's own precision


# ---------------------------------------------------------------- LayerNorm
@jit
def _ln_row(x, w, b, eps, inv_c, y, xhat):
    mu = x.sum() * inv_c
    var = x.dtype.type(0)
    for c in range(x.shape[0]):
        d = x[c] - mu
        var += d * d
    r = x.dtype.type(1) / np.sqrt(var * inv_c + eps)
    for c in range(x.shape[0]):
        h = (x[c] - mu) * r
        xhat[c] = h
        y[c] = h * w[c] + b[c]
    return r


@pjit
def layernorm_(x, w, b, eps, inv_c, y, xhat, rstd):
    """y, xhat (M, C), rstd (M,) <- LayerNorm of x (M, C) (xhat may alias y when not needed)."""
    for i in prange(x.shape[0]):
        rstd[i] = _ln_row(x[i], w, b, eps, inv_c, y[i], xhat[i])


@pjit
def residual_layernorm_(x, a, bias, gamma, w, b, eps, inv_c, y):
    """x += gamma * (a + bias) in place, then y = LayerNorm(x) (the next norm of a pre-norm block)."""
    for i in prange(x.shape[0]):
        xi = x[i]
        for c in range(x.shape[1]):
            xi[c] += gamma[c] * (a[i, c] + bias[c])
        _ln_row(xi, w, b, eps, inv_c, y[i], y[i])


@pjit
def residual_(x, a, bias, gamma):
    """x += gamma * (a + bias) in place."""
    for i in prange(x.shape[0]):
        for c in range(x.shape[1]):
            x[i, c] += gamma[c] * (a[i, c] + bias[c])


@pjit
def _ln_backward(dy, xhat, rstd, w, inv_c, dx, dw_part, db_part):
    M, C = dy.shape
    nchunk = dw_part.shape[0]
    for t in prange(nchunk):
        for i in range(t * M // nchunk, (t + 1) * M // nchunk):
            mg = dy.dtype.type(0)
            mgx = dy.dtype.type(0)
            for c in range(C):
                g = dy[i, c] * w[c]
                mg += g
                mgx += g * xhat[i, c]
                dw_part[t, c] += dy[i, c] * xhat[i, c]
                db_part[t, c] += dy[i, c]
            mg *= inv_c
            mgx *= inv_c
            for c in range(C):
                dx[i, c] = rstd[i] * (dy[i, c] * w[c] - mg - xhat[i, c] * mgx)


def layernorm_forward(x, w, b, eps=LN_EPS):
    """Same as ``nn.layers.layernorm_forward``: x (..., C) -> y, cache (xhat, rstd (..., 1), w)."""
    x2 = _rows(x)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    layernorm_(x2, w, b, _c(x, eps), _c(x, 1.0 / x.shape[-1]), y, xhat, rstd)
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache):
    """Same as ``nn.layers.layernorm_backward``: -> dx, dw, db."""
    xhat, rstd, w = cache
    dy2 = _rows(dy)
    nchunk = min(dy2.shape[0], 64)
    dw_part = np.zeros((nchunk, dy.shape[-1]), dtype=dy.dtype)
    db_part = np.zeros_like(dw_part)
    dx = np.empty_like(dy2)
    _ln_backward(dy2, _rows(xhat), np.ascontiguousarray(rstd).reshape(-1), w, _c(dy, 1.0 / dy.shape[-1]),
                 dx, dw_part, db_part)
    return dx.reshape(dy.shape), dw_part.sum(axis=0), db_part.sum(axis=0)


# ---------------------------------------------------------------- GELU (exact erf)
@pjit
def _gelu(x, inv_sqrt2, y, cdf):
    half = x.dtype.type(0.5)
    for i in prange(x.shape[0]):
        for c in range(x.shape[1]):
            p = half + half * erf(x[i, c] * inv_sqrt2)
            cdf[i, c] = p
            y[i, c] = x[i, c] * p


@pjit
def bias_gelu_(h, bias, inv_sqrt2):
    """h = GELU(h + bias) in place (fc1's bias and activation in one pass)."""
    half = h.dtype.type(0.5)
    for i in prange(h.shape[0]):
        for c in range(h.shape[1]):
            v = h[i, c] + bias[c]
            h[i, c] = v * (half + half * erf(v * inv_sqrt2))


@pjit
def gelu_backward_(dy, x, inv_sqrt2, inv_sqrt_2pi):
    """dy *= GELU'(x) = Phi(x) + x phi(x), in place (Phi recomputed: cheaper than reading it back)."""
    half = x.dtype.type(0.5)
    for i in prange(dy.shape[0]):
        for c in range(dy.shape[1]):
            v = x[i, c]
            dy[i, c] *= half + half * erf(v * inv_sqrt2) + v * inv_sqrt_2pi * np.exp(-half * v * v)


@pjit
def bias_gelu_keep_(h, bias, inv_sqrt2, act):
    """h += bias in place and act = GELU(h): the training forward keeps both for the backward."""
    half = h.dtype.type(0.5)
    for i in prange(h.shape[0]):
        for c in range(h.shape[1]):
            v = h[i, c] + bias[c]
            h[i, c] = v
            act[i, c] = v * (half + half * erf(v * inv_sqrt2))


@pjit
def add_bias_(y, bias):
    """y (M, K) += bias (K,) in place, rows split over the cores."""
    for i in prange(y.shape[0]):
        for c in range(y.shape[1]):
            y[i, c] += bias[c]


def gelu_forward(x):
    """Same as ``nn.layers.gelu_forward``: -> GELU(x), cache (x, cdf)."""
    x2 = _rows(x)
    y, cdf = np.empty_like(x2), np.empty_like(x2)
    _gelu(x2, _c(x, INV_SQRT2), y, cdf)
    return y.reshape(x.shape), (x, cdf.reshape(x.shape))


def gelu_backward(dy, cache):
    """Same as ``nn.layers.gelu_backward``: -> dx = dy * (Phi(x) + x phi(x))."""
    x, _ = cache
    dx = _rows(dy).copy()
    gelu_backward_(dx, _rows(x), _c(x, INV_SQRT2), _c(x, INV_SQRT_2PI))
    return dx.reshape(dy.shape)


# ---------------------------------------------------------------- softmax over keys, optional key mask
@pjit
def softmax_(s, scale):
    """Rows of s (M, n) <- softmax(scale * s) in place."""
    for i in prange(s.shape[0]):
        r = s[i]
        mx = r.max()
        z = s.dtype.type(0)
        for j in range(r.shape[0]):
            e = np.exp((r[j] - mx) * scale)
            r[j] = e
            z += e
        r /= z


@pjit
def masked_softmax_(s, key_mask, scale, cap, A, p):
    """s: (B, H, n, n) raw scores, key_mask (B, n) -> A = m' * p, p = e / Z (nn.attention's rule)."""
    B, H, n, _ = s.shape
    one = s.dtype.type(1)
    for t in prange(B * H * n):
        b, i = t // (H * n), t % n
        h = (t // n) % H
        row = s[b, h, i]
        mx = row[i]
        for j in range(n):
            if key_mask[b, j] > 0 and row[j] > mx:
                mx = row[j]
        z = s.dtype.type(0)
        for j in range(n):
            e = np.exp(min((row[j] - mx) * scale, cap))
            p[b, h, i, j] = e
            z += (one if j == i else key_mask[b, j]) * e
        for j in range(n):
            p[b, h, i, j] /= z
            A[b, h, i, j] = (one if j == i else key_mask[b, j]) * p[b, h, i, j]


@pjit
def softmax_backward_(dA, A, scale):
    """dA (M, n) <- ds = scale * A * (dA - sum(A * dA)) in place, row by row (no key mask)."""
    for i in prange(dA.shape[0]):
        r = dA.dtype.type(0)
        for j in range(dA.shape[1]):
            r += A[i, j] * dA[i, j]
        for j in range(dA.shape[1]):
            dA[i, j] = scale * A[i, j] * (dA[i, j] - r)


@pjit
def masked_softmax_backward_(dA, A, p, scale, dm_part):
    """dA (B, H, n, n) <- scale * ds in place; dm_part (B, H, n) <- each head's key-mask gradient."""
    B, H, n, _ = dA.shape
    for t in prange(B * H):
        b, h = t // H, t % H
        for i in range(n):
            r = dA.dtype.type(0)
            for j in range(n):
                r += A[b, h, i, j] * dA[b, h, i, j]
            for j in range(n):
                g = dA[b, h, i, j] - r
                dA[b, h, i, j] = scale * A[b, h, i, j] * g
                if j != i:
                    dm_part[b, h, j] += p[b, h, i, j] * g


def masked_softmax_forward(s, key_mask=None):
    """Same as ``nn.attention.masked_softmax_forward``: s (B, H, n, n), key_mask (B, n) or None
    -> A, cache (A, p) or (A, None)."""
    s = np.ascontiguousarray(s)
    if key_mask is None:
        A = s.copy()
        softmax_(A.reshape(-1, s.shape[-1]), _c(s, 1.0))
        return A, (A, None)
    A, p = np.empty_like(s), np.empty_like(s)
    cap = 0.5 * np.log(np.finfo(s.dtype).max)
    masked_softmax_(s, np.ascontiguousarray(key_mask, dtype=s.dtype), _c(s, 1.0), _c(s, cap), A, p)
    return A, (A, p)


def masked_softmax_backward(dA, cache):
    """Same as ``nn.attention.masked_softmax_backward``: -> ds, dkey_mask (B, n) or None."""
    A, p = cache
    ds = np.array(dA, copy=True, order="C")
    if p is None:
        softmax_backward_(ds.reshape(-1, ds.shape[-1]), A.reshape(-1, A.shape[-1]), _c(ds, 1.0))
        return ds, None
    dm_part = np.zeros(dA.shape[:3], dtype=dA.dtype)
    masked_softmax_backward_(ds, A, p, _c(ds, 1.0), dm_part)
    return ds, dm_part.sum(axis=1)
