"""Fused Numba kernels for the element-wise and row-wise layers: LayerNorm and exact GELU (the masked
softmax over keys is ``kernels.softmax``), and the linear layer the selector and the approximator run on.

The public functions have the names, signatures and caches of their references in ``minitofe.nn.layers``
(a fast forward's cache works with the reference backward and the other
way round), and ``tests/test_kernels.py`` checks them against those references. Each kernel does one
pass over memory where NumPy does three to six. The ``*_`` kernels below are the in-place pieces that
``kernels.block`` strings together. Those the inference forward runs (LayerNorm, residual, bias, bias +
GELU, and GELU with its cache for the selector and the approximator) run on the calling thread, on
whatever rows they are given: ``threads.for_rows`` splits large arrays over the lanes and runs small ones
inline. As ``prange`` kernels, each of the ~60 calls of a DeiT-S forward woke Numba's thread pool:
~0.1 ms a call on a quiet machine, up to ~2 ms when other processes held the cores, more than the work
at batch 1 (``gelu_forward`` was the last of them: 0.5 ms a call, 4.5 of a ToFe forward's ~110 ms at
DeiT-S batch 1 on one busy thread). The backward kernels keep ``prange``.
"""
import numpy as np

from .mathf import INV_SQRT2, INV_SQRT_2PI, erf, exp, jit, pjit, prange
from .packed import weight_t
from .threads import ROW_COST, for_rows, gemm_threads, use_threads
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


@jit
def layernorm_(x, w, b, eps, inv_c, y, xhat, rstd):
    """y, xhat (M, C), rstd (M,) <- LayerNorm of x (M, C) (xhat may alias y when not needed)."""
    for i in range(x.shape[0]):
        rstd[i] = _ln_row(x[i], w, b, eps, inv_c, y[i], xhat[i])


@jit
def residual_layernorm_(x, a, bias, gamma, w, b, eps, inv_c, y):
    """x += gamma * (a + bias) in place, then y = LayerNorm(x) (the next norm of a pre-norm block)."""
    for i in range(x.shape[0]):
        xi = x[i]
        for c in range(x.shape[1]):
            xi[c] += gamma[c] * (a[i, c] + bias[c])
        _ln_row(xi, w, b, eps, inv_c, y[i], y[i])


@jit
def residual_(x, a, bias, gamma):
    """x += gamma * (a + bias) in place."""
    for i in range(x.shape[0]):
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
    eps, inv_c = _c(x, eps), _c(x, 1.0 / x.shape[-1])
    for_rows(x2.shape[0], ROW_COST * x2.shape[1], lambda i, j: layernorm_(
        x2[i:j], w, b, eps, inv_c, y[i:j], xhat[i:j], rstd[i:j]))
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
@jit
def _gelu(x, inv_sqrt2, y, cdf):
    half = x.dtype.type(0.5)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            p = half + half * erf(x[i, c] * inv_sqrt2)
            cdf[i, c] = p
            y[i, c] = x[i, c] * p


@jit
def bias_gelu_(h, bias, inv_sqrt2):
    """h = GELU(h + bias) in place (fc1's bias and activation in one pass)."""
    half = h.dtype.type(0.5)
    for i in range(h.shape[0]):
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
            dy[i, c] *= half + half * erf(v * inv_sqrt2) + v * inv_sqrt_2pi * exp(-half * v * v)


@pjit
def bias_gelu_keep_(h, bias, inv_sqrt2, act):
    """h += bias in place and act = GELU(h): the training forward keeps both for the backward."""
    half = h.dtype.type(0.5)
    for i in prange(h.shape[0]):
        for c in range(h.shape[1]):
            v = h[i, c] + bias[c]
            h[i, c] = v
            act[i, c] = v * (half + half * erf(v * inv_sqrt2))


@jit
def add_bias_(y, bias):
    """y (M, K) += bias (K,) in place, rows split over the cores."""
    for i in range(y.shape[0]):
        for c in range(y.shape[1]):
            y[i, c] += bias[c]


def gelu_forward(x):
    """Same as ``nn.layers.gelu_forward``: -> GELU(x), cache (x, cdf)."""
    x2 = _rows(x)
    y, cdf = np.empty_like(x2), np.empty_like(x2)
    inv_sqrt2 = _c(x, INV_SQRT2)
    for_rows(x2.shape[0], 2 * ROW_COST * x2.shape[1],
             lambda i, j: _gelu(x2[i:j], inv_sqrt2, y[i:j], cdf[i:j]))
    return y.reshape(x.shape), (x, cdf.reshape(x.shape))


def gelu_backward(dy, cache):
    """Same as ``nn.layers.gelu_backward``: -> dx = dy * (Phi(x) + x phi(x))."""
    x, _ = cache
    dx = _rows(dy).copy()
    gelu_backward_(dx, _rows(x), _c(x, INV_SQRT2), _c(x, INV_SQRT_2PI))
    return dx.reshape(dy.shape)


# ---------------------------------------------------------------- linear layer
def linear_forward(x, w, b=None):
    """Same as ``nn.layers.linear_forward``: x (..., in) -> y (..., out), cache (x, w, has_bias).

    One BLAS product over all rows, on as many threads as its size is worth (``threads.gemm_threads``),
    and the bias added in the same pass over ``y`` on the calling thread: NumPy's ``x @ w.T`` on a
    (B, N, C) array runs one product per image, and ``y += b`` is a second pass."""
    x2 = _rows(x)
    y = np.empty((x2.shape[0], w.shape[0]), dtype=np.result_type(x, w))
    use_threads(gemm_threads(x2.shape[0], w.shape[0], x2.shape[1]))
    np.matmul(x2, weight_t(w), out=y)
    if b is not None:
        for_rows(y.shape[0], ROW_COST * y.shape[1], lambda i, j: add_bias_(y[i:j], b))
    return y.reshape(x.shape[:-1] + (w.shape[0],)), (x, w, b is not None)
