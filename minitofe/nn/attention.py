"""Multi-head self-attention with an optional soft key mask (the ToFe keep path).

Without a mask this is timm's ``Attention``: ``qkv`` Linear, scale ``hs ** -0.5`` on the queries,
softmax over keys, ``proj`` Linear. With a key mask ``m`` of shape (B, N) (1 keep, 0 freeze) the attention
weights are

    A_ij = m'_ij exp(s_ij) / sum_k m'_ik exp(s_ik),   m'_ij = m_j for j != i,  m'_ii = 1,

so kept queries attend only to kept keys and a frozen row (whose output the caller discards) still
attends to itself and stays finite. ``m`` enters as a factor, so the backward also returns ``dm``: that
is how the token selector receives gradient through the blocks during training. For numerical safety the
row maximum is taken over allowed keys only (softmax is shift-invariant, so the value is unchanged).
"""
import math

from .layers import linear_backward, linear_forward
from ..backend import get_xp


def masked_softmax_forward(s, key_mask=None):
    """s: (B, H, N, N) scores; key_mask: (B, N) in [0, 1] or None -> A: (B, H, N, N)."""
    xp = get_xp(s)
    if key_mask is None:
        e = xp.exp(s - s.max(axis=-1, keepdims=True))
        z = e.sum(axis=-1, keepdims=True)
        p = e / z
        return p, (p, None)
    N = s.shape[-1]
    eye = xp.eye(N, dtype=s.dtype)
    mfull = key_mask[:, None, None, :] * (1.0 - eye) + eye           # (B, 1, N, N), diagonal forced to 1
    allowed = mfull > 0
    smax = xp.where(allowed, s, -xp.inf).max(axis=-1, keepdims=True)  # finite: the diagonal is allowed
    # Masked keys keep their exp(s - smax): their weight is 0 but d A / d m_j is not (the selector's
    # gradient). The cap only binds when a masked score exceeds every allowed one by > log(max)/2.
    cap = 0.5 * math.log(xp.finfo(s.dtype).max)
    e = xp.exp(xp.minimum(s - smax, cap))                             # (B, H, N, N)
    z = (mfull * e).sum(axis=-1, keepdims=True)                       # > 0: the row max is an allowed key
    p = e / z                                                         # weights before the mask factor
    return mfull * p, (mfull * p, p)


def masked_softmax_backward(dA, cache):
    """-> ds (B, H, N, N), dkey_mask (B, N) or None.

    With r_i = sum_k A_ik dA_ik:  ds_ij = A_ij (dA_ij - r_i)  and  dm'_ij = p_ij (dA_ij - r_i), where
    p = e / Z; dm_j sums dm'_ij over batch-heads and rows i != j (the diagonal of m' is a constant).
    """
    A, p = cache
    g = dA - (A * dA).sum(axis=-1, keepdims=True)
    ds = A * g
    if p is None:
        return ds, None
    xp = get_xp(dA)
    N = dA.shape[-1]
    dmfull = (p * g).sum(axis=1)                                      # (B, N, N), summed over heads
    dmfull = dmfull * (1.0 - xp.eye(N, dtype=dA.dtype))
    return ds, dmfull.sum(axis=1)                                     # (B, N)


def attention_forward(x, params, prefix, num_heads, key_mask=None):
    """x: (B, N, C); params holds ``{prefix}qkv.weight`` (3C, C), ``{prefix}qkv.bias`` (3C,) or absent,
    ``{prefix}proj.weight`` (C, C), ``{prefix}proj.bias`` (C,). Returns (B, N, C) and the cache."""
    B, N, C = x.shape
    H = num_heads
    hs = C // H
    qkv, c_qkv = linear_forward(x, params[prefix + "qkv.weight"], params.get(prefix + "qkv.bias"))
    qkv = qkv.reshape(B, N, 3, H, hs).transpose(2, 0, 3, 1, 4)         # (3, B, H, N, hs)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = hs ** -0.5
    s = (q * scale) @ k.transpose(0, 1, 3, 2)                         # (B, H, N, N)
    A, c_sm = masked_softmax_forward(s, key_mask)
    o = A @ v                                                         # (B, H, N, hs)
    o = o.transpose(0, 2, 1, 3).reshape(B, N, C)
    out, c_proj = linear_forward(o, params[prefix + "proj.weight"], params[prefix + "proj.bias"])
    return out, (prefix, H, scale, q, k, v, A, c_qkv, c_sm, c_proj)


def attention_backward(dout, cache):
    """-> dx (B, N, C), grads {name: array} with full timm keys, dkey_mask (B, N) or None."""
    prefix, H, scale, q, k, v, A, c_qkv, c_sm, c_proj = cache
    xp = get_xp(dout)
    B, N, C = dout.shape
    hs = C // H
    grads = {}
    do, grads[prefix + "proj.weight"], grads[prefix + "proj.bias"] = linear_backward(dout, c_proj)
    do = do.reshape(B, N, H, hs).transpose(0, 2, 1, 3)                 # (B, H, N, hs)
    dA = do @ v.transpose(0, 1, 3, 2)                                 # (B, H, N, N)
    dv = A.transpose(0, 1, 3, 2) @ do
    ds, dkey_mask = masked_softmax_backward(dA, c_sm)
    dq = (ds @ k) * scale
    dk = (q * scale).transpose(0, 1, 3, 2) @ ds                        # (B, H, hs, N)
    dqkv = xp.stack([dq, dk.transpose(0, 1, 3, 2), dv])               # (3, B, H, N, hs)
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * C)
    dx, grads[prefix + "qkv.weight"], dqkv_b = linear_backward(dqkv, c_qkv)
    if dqkv_b is not None:
        grads[prefix + "qkv.bias"] = dqkv_b
    return dx, grads, dkey_mask
