"""The pre-norm transformer block on fused kernels: training pair, inference runner, ragged runner.

Same maths, names and signatures as ``nn.block.block_forward`` / ``block_backward`` (the training pair,
with the attention key mask), ``nn.block.run_blocks`` and ``tofe.ragged.ragged_block_forward``; the
reference is what to read, this is what runs when ``fast=True``. What is different is only how:

- matmuls go to BLAS with ``out=`` buffers laid out so that no transpose is ever copied (the heads'
  outputs are written straight into (B, n, C) order);
- biases, LayerScale, residual adds, GELU and the attention scale ride along in the fused kernels of
  ``kernels.layers`` and ``kernels.softmax`` instead of separate NumPy passes;
- inference keeps no caches and reuses a per-thread workspace of buffers across blocks and calls
  (``release_buffers()`` frees it); training keeps only what the backward reads;
- inference sizes the BLAS's threads per call (``kernels.threads``: all of them for a linear layer over
  a batch, one for small products), runs attention as batched BLAS in lanes (``kernels.attention``) and
  the element-wise kernels on the calling thread or split over the lanes when large.
The fast training cache is not the reference's: pair ``kernels.block_forward`` with
``kernels.block_backward`` (``nn.vit`` does).
"""
import math
import threading
from typing import NamedTuple

import numpy as np

from .attention import attend_
from .layers import (INV_SQRT2, INV_SQRT_2PI, add_bias_, bias_gelu_, bias_gelu_keep_, gelu_backward_,
                     layernorm_, layernorm_backward, layernorm_forward, residual_, residual_layernorm_)
from .packed import weight_t
from .softmax import masked_softmax_, masked_softmax_backward_, softmax_, softmax_backward_
from .threads import ROW_COST, for_rows, gemm_threads, sized_blas, use_threads
from ..config import LN_EPS

_local = threading.local()


class FastBlockCache(NamedTuple):
    """What the fast block backward reads (M = B * N rows; not the reference's ``nn.block.BlockCache``)."""
    prefix: str           # "blocks.3."
    params: dict          # the flat parameter dict (weights are read again in the backward)
    H: int                # number of heads
    scale: object         # hs ** -0.5, in the arrays' dtype
    shape: tuple          # (B, N, C)
    g1: object            # (C,) LayerScale ls1.gamma, or None
    g2: object            # (C,) LayerScale ls2.gamma, or None
    c_n1: tuple           # norm1's cache (kernels.layers)
    n1: object            # (M, C) norm1's output
    q: object             # (B, H, N, hs) contiguous
    k: object             # (B, H, N, hs)
    v: object             # (B, H, N, hs)
    A: object             # (B, H, N, N) attention probabilities
    pr: object            # (B, H, N, N) the masked softmax's p = e / Z (A = m' * p), or None without a mask
    o: object             # (M, C) the heads' outputs, before proj
    a: object             # (M, C) the attention branch's output, before ls1
    c_n2: tuple           # norm2's cache
    n2: object            # (M, C) norm2's output
    h: object             # (M, hidden) fc1's output, before GELU
    act: object           # (M, hidden) GELU(h)
    f: object             # (M, C) the MLP branch's output, before ls2


def _buf(name, shape, dtype):
    """A reusable work buffer (per thread), grown when a bigger one is asked for."""
    pool = _local.__dict__.setdefault("pool", {})
    need = math.prod(shape)
    a = pool.get((name, np.dtype(dtype)))
    if a is None or a.size < need:
        a = pool[(name, np.dtype(dtype))] = np.empty(need, dtype=dtype)
    return a[:need].reshape(shape)


def release_buffers():
    """Free the inference workspace of the calling thread."""
    _local.__dict__.pop("pool", None)


def _gammas(params, prefix, C, dtype):
    ones = np.ones(C, dtype=dtype)
    return params.get(prefix + "ls1.gamma", ones), params.get(prefix + "ls2.gamma", ones)


def _heads(qkv, B, n, H):
    """qkv (B * n, 3C) -> q, k, v views (B, H, n, hs), no copy."""
    t = qkv.reshape(B, n, 3, H, -1)
    return (t[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _linear_(a, w, out):
    """out (M, K) <- a (M, C) @ w.T for w (K, C), on as many BLAS threads as the size is worth."""
    use_threads(gemm_threads(a.shape[0], w.shape[0], a.shape[1]))
    np.matmul(a, weight_t(w), out=out)


def _add_bias_(y, bias):
    """y (M, K) += bias (K,) in place, split over the lanes when large."""
    for_rows(y.shape[0], ROW_COST * y.shape[1], lambda i, j: add_bias_(y[i:j], bias))


def _block_inplace(x, params, prefix, num_heads, offsets):
    """One block on rows x (M, C), updated in place; attention within each segment of ``offsets``."""
    M, C = x.shape
    dt = x.dtype
    eps, inv_c = dt.type(LN_EPS), dt.type(1.0 / C)
    g1, g2 = _gammas(params, prefix, C, dt)
    p = lambda name: params[prefix + name]                                # noqa: E731
    n1, o, a = _buf("norm", (M, C), dt), _buf("o", (M, C), dt), _buf("a", (M, C), dt)
    qkv = _buf("qkv", (M, 3 * C), dt)
    h = _buf("hidden", (M, p("mlp.fc1.weight").shape[0]), dt)
    rstd, cost, hid = _buf("rstd", (M,), dt), ROW_COST * C, ROW_COST * h.shape[1]
    w1, b1, w2, b2 = p("norm1.weight"), p("norm1.bias"), p("norm2.weight"), p("norm2.bias")
    for_rows(M, cost, lambda i, j: layernorm_(x[i:j], w1, b1, eps, inv_c, n1[i:j], n1[i:j], rstd[i:j]))
    _linear_(n1, p("attn.qkv.weight"), qkv)
    if prefix + "attn.qkv.bias" in params:
        _add_bias_(qkv, p("attn.qkv.bias"))
    attend_(qkv, offsets, num_heads, dt.type((C // num_heads) ** -0.5), o,
            lambda lane, size: _buf(f"scores{lane}", (size,), dt))
    _linear_(o, p("attn.proj.weight"), a)
    bp = p("attn.proj.bias")
    for_rows(M, cost, lambda i, j: residual_layernorm_(x[i:j], a[i:j], bp, g1, w2, b2, eps, inv_c, n1[i:j]))
    _linear_(n1, p("mlp.fc1.weight"), h)
    bf, inv_sqrt2 = p("mlp.fc1.bias"), dt.type(INV_SQRT2)
    for_rows(M, 2 * hid, lambda i, j: bias_gelu_(h[i:j], bf, inv_sqrt2))
    _linear_(h, p("mlp.fc2.weight"), a)
    bf2 = p("mlp.fc2.bias")
    for_rows(M, cost, lambda i, j: residual_(x[i:j], a[i:j], bf2, g2))


def run_blocks(x, params, cfg, lo, hi):
    """Blocks lo .. hi-1 on x (B, n, C), no caches (inference) -> a new (B, n, C) array."""
    if hi <= lo:
        return x
    B, n, C = x.shape
    out = np.array(x, order="C", copy=True)
    offsets = np.arange(0, B * n + 1, n, dtype=np.int64)
    with sized_blas():
        for j in range(lo, hi):
            _block_inplace(out.reshape(B * n, C), params, f"blocks.{j}.", cfg.num_heads, offsets)
    return out


def ragged_block_forward(x, offsets, params, prefix, num_heads):
    """One block on packed rows x (M, C); attention stays inside each image's segment."""
    out = np.array(x, order="C", copy=True)
    with sized_blas():
        _block_inplace(out, params, prefix, num_heads, np.asarray(offsets, dtype=np.int64))
    return out


# ---------------------------------------------------------------- training pair
def block_forward(x, params, prefix, num_heads, key_mask=None, norm_eps=LN_EPS, act_layer="gelu"):
    """x: (B, N, C); key_mask: (B, N) or None -> (B, N, C), cache for ``block_backward`` (this module's).
    The fused MLP kernel is exact GELU: another ``act_layer`` runs on the reference (``nn.block``)."""
    if act_layer != "gelu":
        raise ValueError(f"the Numba block implements act_layer='gelu' only, got {act_layer!r}; "
                         f"use the reference nn.block.block_forward (fast=False)")
    B, N, C = x.shape
    H, M, dt = num_heads, B * N, x.dtype
    scale = dt.type((C // H) ** -0.5)
    p = lambda name: params[prefix + name]                                # noqa: E731
    g1, g2 = params.get(prefix + "ls1.gamma"), params.get(prefix + "ls2.gamma")
    x2 = np.ascontiguousarray(x).reshape(M, C)
    n1, c_n1 = layernorm_forward(x2, p("norm1.weight"), p("norm1.bias"), norm_eps)
    qkv = n1 @ p("attn.qkv.weight").T                                     # (M, 3C)
    if prefix + "attn.qkv.bias" in params:
        _add_bias_(qkv, p("attn.qkv.bias"))
    # contiguous heads: NumPy's matmul falls back to a slow loop for a strided transposed operand
    q, k, v = (np.ascontiguousarray(t) for t in _heads(qkv, B, N, H))     # (B, H, N, hs)
    A = np.matmul(q, k.transpose(0, 1, 3, 2))                             # raw scores (B, H, N, N)
    if key_mask is None:
        softmax_(A.reshape(-1, N), scale)
        pr = None
    else:
        s, A, pr = A, np.empty_like(A), np.empty_like(A)
        cap = dt.type(0.5 * np.log(np.finfo(dt).max))
        masked_softmax_(s, np.ascontiguousarray(key_mask, dtype=dt), scale, cap, A, pr)
    o = np.empty((M, C), dtype=dt)
    np.matmul(A, v, out=o.reshape(B, N, H, -1).transpose(0, 2, 1, 3))
    a = o @ p("attn.proj.weight").T
    _add_bias_(a, p("attn.proj.bias"))
    x1 = x2 + (a * g1 if g1 is not None else a)
    n2, c_n2 = layernorm_forward(x1, p("norm2.weight"), p("norm2.bias"), norm_eps)
    h = n2 @ p("mlp.fc1.weight").T                                        # (M, hidden)
    act = np.empty_like(h)
    bias_gelu_keep_(h, p("mlp.fc1.bias"), dt.type(INV_SQRT2), act)
    f = act @ p("mlp.fc2.weight").T
    _add_bias_(f, p("mlp.fc2.bias"))
    out = x1 + (f * g2 if g2 is not None else f)
    cache = FastBlockCache(prefix, params, H, scale, (B, N, C), g1, g2, c_n1, n1, q, k, v, A, pr, o, a,
                           c_n2, n2, h, act, f)
    return out.reshape(B, N, C), cache


def block_backward(dout, cache):
    """-> dx (B, N, C), grads {timm key: array}, dkey_mask (B, N) or None."""
    prefix, params, H, scale, (B, N, C), g1, g2, c_n1, n1, q, k, v, A, pr, o, a, c_n2, n2, h, act, f = cache
    p = lambda name: params[prefix + name]                                # noqa: E731
    grads = {}
    dt, M = dout.dtype, B * N
    dy = np.ascontiguousarray(dout).reshape(M, C)
    if g2 is not None:
        grads[prefix + "ls2.gamma"] = (dy * f).sum(axis=0)
        df = dy * g2
    else:
        df = dy
    grads[prefix + "mlp.fc2.weight"] = df.T @ act
    grads[prefix + "mlp.fc2.bias"] = df.sum(axis=0)
    dh = df @ p("mlp.fc2.weight")                                         # (M, hidden)
    gelu_backward_(dh, h, dt.type(INV_SQRT2), dt.type(INV_SQRT_2PI))
    grads[prefix + "mlp.fc1.weight"] = dh.T @ n2
    grads[prefix + "mlp.fc1.bias"] = dh.sum(axis=0)
    dx1, grads[prefix + "norm2.weight"], grads[prefix + "norm2.bias"] = layernorm_backward(
        dh @ p("mlp.fc1.weight"), c_n2)
    dx1 += dy
    if g1 is not None:
        grads[prefix + "ls1.gamma"] = (dx1 * a).sum(axis=0)
        da = dx1 * g1
    else:
        da = dx1
    grads[prefix + "attn.proj.weight"] = da.T @ o
    grads[prefix + "attn.proj.bias"] = da.sum(axis=0)
    do = (da @ p("attn.proj.weight")).reshape(B, N, H, -1).transpose(0, 2, 1, 3)   # (B, H, N, hs)
    do = np.ascontiguousarray(do)
    dv = np.matmul(A.transpose(0, 1, 3, 2), do)
    ds = np.matmul(do, v.transpose(0, 1, 3, 2))                           # dA, then ds in place
    if pr is None:
        softmax_backward_(ds.reshape(-1, N), A.reshape(-1, N), scale)
        dkey_mask = None
    else:
        dm_part = np.zeros((B, H, N), dtype=dt)
        masked_softmax_backward_(ds, A, pr, scale, dm_part)
        dkey_mask = dm_part.sum(axis=1)
    dqkv = np.empty((B, N, 3, H, C // H), dtype=dt)
    for i, d in enumerate((ds @ k, ds.transpose(0, 1, 3, 2) @ q, dv)):
        dqkv[:, :, i] = d.transpose(0, 2, 1, 3)
    dqkv = dqkv.reshape(M, 3 * C)
    grads[prefix + "attn.qkv.weight"] = dqkv.T @ n1
    if prefix + "attn.qkv.bias" in params:
        grads[prefix + "attn.qkv.bias"] = dqkv.sum(axis=0)
    dxb, grads[prefix + "norm1.weight"], grads[prefix + "norm1.bias"] = layernorm_backward(
        dqkv @ p("attn.qkv.weight"), c_n1)
    dxb += dx1
    return dxb.reshape(B, N, C), grads, dkey_mask
