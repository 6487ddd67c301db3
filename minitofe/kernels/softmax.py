"""Fused Numba kernels for the softmax over keys, with the optional attention key mask of ToFe's
training (docs/method.md, "Keep path"): the twins of ``nn.attention.masked_softmax_forward`` /
``masked_softmax_backward`` (same names, signatures and caches; ``tests/test_kernels.py`` compares them),
and the in-place ``*_`` pieces that ``kernels.block`` strings together.
"""
import numpy as np

from .mathf import exp, jit, pjit, prange


# ---------------------------------------------------------------- softmax over keys, optional key mask
@jit
def _mx(m, v):
    return v if v > m else m          # a NaN v is skipped (it still reaches the row's sum)


@jit
def _row_max(r):
    """max(r), NaN ignored. Eight running maxima: one chain of dependent comparisons kept the max pass
    at half of the softmax's time."""
    n = r.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = r[0]
    j = 0
    while j + 8 <= n:
        m0, m1, m2, m3 = _mx(m0, r[j]), _mx(m1, r[j + 1]), _mx(m2, r[j + 2]), _mx(m3, r[j + 3])
        m4, m5, m6, m7 = _mx(m4, r[j + 4]), _mx(m5, r[j + 5]), _mx(m6, r[j + 6]), _mx(m7, r[j + 7])
        j += 8
    m0 = _mx(_mx(_mx(m0, m1), _mx(m2, m3)), _mx(_mx(m4, m5), _mx(m6, m7)))
    for k in range(j, n):
        m0 = _mx(m0, r[k])
    return m0


@jit
def _softmax_row_(r, scale):
    """r (n,) <- softmax(scale * r) in place: max, then exp and sum in one pass, then scale."""
    mx = _row_max(r)
    z = r.dtype.type(0)
    for j in range(r.shape[0]):
        e = exp((r[j] - mx) * scale)
        r[j] = e
        z += e
    inv = r.dtype.type(1) / z
    for j in range(r.shape[0]):
        r[j] *= inv


@jit
def softmax_rows_(s, scale):
    """Rows of s (M, n) <- softmax(scale * s) in place, on the calling thread (one attention lane)."""
    for i in range(s.shape[0]):
        _softmax_row_(s[i], scale)


@pjit
def softmax_(s, scale):
    """Rows of s (M, n) <- softmax(scale * s) in place, rows split over the cores."""
    for i in prange(s.shape[0]):
        _softmax_row_(s[i], scale)


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
            e = exp(min((row[j] - mx) * scale, cap))
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
        softmax_(A.reshape(-1, s.shape[-1]), s.dtype.type(1.0))
        return A, (A, None)
    A, p = np.empty_like(s), np.empty_like(s)
    cap = 0.5 * np.log(np.finfo(s.dtype).max)
    one, cap = s.dtype.type(1.0), s.dtype.type(cap)
    masked_softmax_(s, np.ascontiguousarray(key_mask, dtype=s.dtype), one, cap, A, p)
    return A, (A, p)


def masked_softmax_backward(dA, cache):
    """Same as ``nn.attention.masked_softmax_backward``: -> ds, dkey_mask (B, n) or None."""
    A, p = cache
    ds = np.array(dA, copy=True, order="C")
    if p is None:
        softmax_backward_(ds.reshape(-1, ds.shape[-1]), A.reshape(-1, A.shape[-1]), ds.dtype.type(1.0))
        return ds, None
    dm_part = np.zeros(dA.shape[:3], dtype=dA.dtype)
    masked_softmax_backward_(ds, A, p, ds.dtype.type(1.0), dm_part)
    return ds, dm_part.sum(axis=1)
