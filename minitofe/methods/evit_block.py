"""EViT's token reorganisation block, as forward/backward pairs (method ``evit``; docs/method.md,
"Baselines").

At a stage's first block, after the attention residual and before the MLP:

    a_j   = mean over heads of A[h, 0, T + j]          class-token attention to candidate j  (B, n)
    kept  = the K = ceil(keep_rate * n) candidates with the largest a_j (ties: the lower position)
    fused = sum_{j not kept} a_j x_j                   the attention values as they are, not renormalised
    out   = [prefix tokens, kept tokens in their current order, fused]        (B, T + K + 1, C)

Candidates are all non-prefix tokens, so a token fused at an earlier stage can be kept or fused again.
``fuse=False`` drops the inattentive tokens instead. When K = n nothing happens (no fused token), so keep
rate 1 is the dense block. The top-K is a hard choice: the gradient flows through the gathered tokens, the
fused token's inputs, and its weights a_j into the attention (``cls_attention_backward``).
"""
import math

from ..tofe.tokens import gather_tokens, gather_tokens_backward
from ..backend import get_xp
from ..nn.attention import attention_backward, attention_forward
from ..nn.block import mlp_backward, mlp_forward
from ..nn.layers import layernorm_backward, layernorm_forward, linear_backward


def keep_count(keep_rate, n):
    """K = ceil(keep_rate * n), the product rounded to 9 decimals first, so that a typed rate keeps what it
    says (0.55 * 100 is 55.00000000000001 in floats: 55, where the authors' plain ceil keeps 56); at least
    1, at most n. The rules differ only within 5e-10 of a whole product, where the budget search never
    lands (docs/baselines.md, "Keep counts")."""
    return max(1, min(n, math.ceil(round(keep_rate * n, 9))))


def keep_rate_at(step, total_steps, target, warmup=1 / 30, anneal=1 / 3):
    """EViT's keep rate at ``step`` of ``total_steps``: 1 for the first ``warmup`` fraction, then cosine
    from 1 to ``target`` over the next ``anneal`` fraction, then ``target`` (the authors: 10 and 100 of
    300 epochs, per iteration)."""
    start, length = warmup * total_steps, anneal * total_steps
    if step < start:
        return 1.0
    if step >= start + length:
        return float(target)
    return float(target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * (step - start) / length)))


def cls_attention(A, T):
    """A: (B, H, n, n) attention weights -> (B, n - T) the class token's attention to each candidate."""
    return A[:, :, 0, T:].mean(axis=1)


def reduce_forward(x, cls_attn, K, T, fuse=True):
    """x: (B, n, C) tokens; cls_attn: (B, n - T) -> (B, T + K [+ 1], C), kept_idx (B, T + K), cache."""
    xp = get_xp(x)
    B, n, C = x.shape
    order = xp.argsort(-cls_attn, axis=1, kind="stable")[:, :K]       # the K most attended, ties -> lower
    top = xp.sort(order, axis=1)                                       # (B, K) current order kept
    prefix = xp.broadcast_to(xp.arange(T), (B, T))
    kept_idx = xp.concatenate([prefix, top + T], axis=1)               # (B, T + K)
    out = gather_tokens(x, kept_idx)
    fused_mask = xp.ones((B, n - T), dtype=x.dtype)                    # 1 for the candidates fused
    fused_mask[xp.arange(B)[:, None], top] = 0.0
    if fuse:
        weight = cls_attn * fused_mask                                 # (B, n - T)
        fused = (weight[..., None] * x[:, T:]).sum(axis=1, keepdims=True)   # (B, 1, C)
        out = xp.concatenate([out, fused], axis=1)
    return out, kept_idx, (x[:, T:], cls_attn, fused_mask, kept_idx, n, T, fuse)


def reduce_backward(dout, cache):
    """dout: (B, T + K [+ 1], C) -> dx (B, n, C), dcls_attn (B, n - T)."""
    patches, cls_attn, fused_mask, kept_idx, n, T, fuse = cache
    xp = get_xp(dout)
    K = kept_idx.shape[1]
    dx = gather_tokens_backward(xp.ascontiguousarray(dout[:, :K]), kept_idx, n)
    if not fuse:
        return dx, xp.zeros_like(cls_attn)
    dfused = dout[:, K:K + 1]                                          # (B, 1, C)
    dx[:, T:] += (cls_attn * fused_mask)[..., None] * dfused
    return dx, fused_mask * (patches * dfused).sum(axis=-1)


def cls_attention_backward(dcls_attn, c_attn, T):
    """Gradient of ``cls_attention(A, T)`` back to the attention's input, given the cache of
    ``nn.attention.attention_forward``: -> dx (B, n, C), grads for ``qkv``. Only the class token's row of
    A is involved: ds_0j = a_0j (g_j - sum_k a_0k g_k), dq_0 = scale ds_0 k, dk_j = scale ds_0j q_0."""
    prefix, H, scale, q, k, v, A, c_qkv, c_sm, c_proj = c_attn
    xp = get_xp(dcls_attn)
    B, _, n, hs = q.shape
    a0 = A[:, :, 0]                                                    # (B, H, n)
    g = xp.zeros_like(a0)
    g[:, :, T:] = dcls_attn[:, None, :] / H
    ds0 = a0 * (g - (a0 * g).sum(axis=-1, keepdims=True))              # (B, H, n)
    dqkv = xp.zeros((B, n, 3, H, hs), dtype=dcls_attn.dtype)
    dqkv[:, 0, 0] = scale * (ds0[:, :, None, :] @ k)[:, :, 0]          # (B, H, hs) the class query
    dqkv[:, :, 1] = (scale * ds0[..., None] * q[:, :, 0:1]).transpose(0, 2, 1, 3)   # (B, n, H, hs) keys
    dx, dw, db = linear_backward(dqkv.reshape(B, n, 3 * H * hs), c_qkv)
    grads = {prefix + "qkv.weight": dw}
    if db is not None:
        grads[prefix + "qkv.bias"] = db
    return dx, grads


def evit_block_forward(x, params, prefix, num_heads, T, K, fuse=True):
    """The reduction block. x: (B, n, C) -> (B, T + K [+ 1], C), kept_idx (B, T + K), cls_attn (B, n - T),
    cache. LayerScale as in ``nn.block``."""
    g1, g2 = params.get(prefix + "ls1.gamma"), params.get(prefix + "ls2.gamma")
    n1, c_n1 = layernorm_forward(x, params[prefix + "norm1.weight"], params[prefix + "norm1.bias"])
    a, c_attn = attention_forward(n1, params, prefix + "attn.", num_heads)
    x1 = x + (a * g1 if g1 is not None else a)
    cls_attn = cls_attention(c_attn[6], T)                             # c_attn[6]: the weights A
    r, kept_idx, c_red = reduce_forward(x1, cls_attn, K, T, fuse)
    n2, c_n2 = layernorm_forward(r, params[prefix + "norm2.weight"], params[prefix + "norm2.bias"])
    f, c_mlp = mlp_forward(n2, params, prefix + "mlp.")
    out = r + (f * g2 if g2 is not None else f)
    return out, kept_idx, cls_attn, (prefix, T, g1, g2, a, f, c_n1, c_attn, c_red, c_n2, c_mlp)


def evit_block_backward(dout, cache):
    """-> dx (B, n, C), grads {timm key: array}."""
    prefix, T, g1, g2, a, f, c_n1, c_attn, c_red, c_n2, c_mlp = cache
    grads = {}
    if g2 is not None:
        grads[prefix + "ls2.gamma"] = (dout * f).sum(axis=(0, 1))
    dn2, g = mlp_backward(dout * g2 if g2 is not None else dout, c_mlp)
    grads.update(g)
    dr, grads[prefix + "norm2.weight"], grads[prefix + "norm2.bias"] = layernorm_backward(dn2, c_n2)
    dx1, dcls_attn = reduce_backward(dout + dr, c_red)
    if g1 is not None:
        grads[prefix + "ls1.gamma"] = (dx1 * a).sum(axis=(0, 1))
    dn1, g, _ = attention_backward(dx1 * g1 if g1 is not None else dx1, c_attn)
    dn1_cls, g_cls = cls_attention_backward(dcls_attn, c_attn, T)
    for key, value in g_cls.items():
        g[key] = g[key] + value
    grads.update(g)
    dxb, grads[prefix + "norm1.weight"], grads[prefix + "norm1.bias"] = layernorm_backward(
        dn1 + dn1_cls, c_n1)
    return dx1 + dxb, grads
