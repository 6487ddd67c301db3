"""Fused multi-head attention for inference: softmax(q k^T * scale) v, one (image, head) per task.

Why not NumPy's batched ``matmul``: for ViT sizes (n ~ 200 tokens, hs = 64) every (image, head) product
is a small GEMM, and a multi-threaded BLAS synchronises its threads once per small GEMM, B * H times per
block. On a loaded 2-core machine one descheduled thread stalls the other at every one of those barriers
(measured: the batched score product of one DeiT-S image went from 2 ms to 200 ms). Here each core takes
whole (image, head) tasks from a ``prange`` and runs scores, softmax and the weighted sum of values on
its own, with no barrier inside; the (n, n) score matrix never leaves a 4-row scratch buffer. Four
query rows are processed together so that each key / value row loaded serves four dot products.

``attend_(qkv, offsets, num_heads, scale, o)``: qkv (M, 3C) rows [q | k | v] of all images packed
(image b owns rows offsets[b] .. offsets[b+1]-1: a dense batch has offsets 0, n, 2n, ..., a ragged one
its own counts); o (M, C) receives the heads' outputs in timm's (token, head * hs) order.
"""
import numpy as np

from .mathf import jit, pjit, prange


@jit
def _softmax_row(srow, mx, scale):
    z = srow.dtype.type(0)
    for j in range(srow.shape[0]):
        e = np.exp((srow[j] - mx) * scale)
        srow[j] = e
        z += e
    inv = srow.dtype.type(1) / z
    for j in range(srow.shape[0]):
        srow[j] *= inv


@jit
def _one_row(qi, k, v, scale, srow, oi):
    mx = qi.dtype.type(-np.inf)
    for j in range(k.shape[0]):
        kj = k[j]
        acc = qi.dtype.type(0)
        for d in range(qi.shape[0]):
            acc += qi[d] * kj[d]
        srow[j] = acc
        mx = max(mx, acc)
    _softmax_row(srow, mx, scale)
    oi[:] = 0
    for j in range(k.shape[0]):
        a = srow[j]
        vj = v[j]
        for d in range(oi.shape[0]):
            oi[d] += a * vj[d]


@jit
def _head(q, k, v, scale, s, o):
    """One head of one image: q, k, v (n, hs) contiguous, s (4, n) scratch -> o (n, hs)."""
    n, hs = q.shape
    zero = q.dtype.type(0)
    i = 0
    while i + 4 <= n:
        q0, q1, q2, q3 = q[i], q[i + 1], q[i + 2], q[i + 3]
        m0 = m1 = m2 = m3 = q.dtype.type(-np.inf)
        for j in range(n):
            kj = k[j]
            a0 = a1 = a2 = a3 = zero
            for d in range(hs):
                kd = kj[d]
                a0 += q0[d] * kd
                a1 += q1[d] * kd
                a2 += q2[d] * kd
                a3 += q3[d] * kd
            s[0, j], s[1, j], s[2, j], s[3, j] = a0, a1, a2, a3
            m0, m1, m2, m3 = max(m0, a0), max(m1, a1), max(m2, a2), max(m3, a3)
        _softmax_row(s[0], m0, scale)
        _softmax_row(s[1], m1, scale)
        _softmax_row(s[2], m2, scale)
        _softmax_row(s[3], m3, scale)
        o0, o1, o2, o3 = o[i], o[i + 1], o[i + 2], o[i + 3]
        o0[:] = 0
        o1[:] = 0
        o2[:] = 0
        o3[:] = 0
        for j in range(n):
            a0, a1, a2, a3 = s[0, j], s[1, j], s[2, j], s[3, j]
            vj = v[j]
            for d in range(hs):
                vd = vj[d]
                o0[d] += a0 * vd
                o1[d] += a1 * vd
                o2[d] += a2 * vd
                o3[d] += a3 * vd
        i += 4
    for r in range(i, n):
        _one_row(q[r], k, v, scale, s[0], o[r])


@pjit
def attend_(qkv, offsets, num_heads, scale, o):
    """o (M, C) <- per-image, per-head softmax(q k^T scale) v of the packed qkv (M, 3C)."""
    C = o.shape[1]
    hs = C // num_heads
    B = offsets.shape[0] - 1
    for t in prange(B * num_heads):
        b, h = t // num_heads, t % num_heads
        lo, hi = offsets[b], offsets[b + 1]
        if hi <= lo:
            continue
        c = h * hs
        q = np.ascontiguousarray(qkv[lo:hi, c:c + hs])
        k = np.ascontiguousarray(qkv[lo:hi, C + c:C + c + hs])
        v = np.ascontiguousarray(qkv[lo:hi, 2 * C + c:2 * C + c + hs])
        out = np.empty_like(q)
        _head(q, k, v, scale, np.empty((4, hi - lo), dtype=qkv.dtype), out)
        o[lo:hi, c:c + hs] = out
