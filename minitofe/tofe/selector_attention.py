"""The ``attention`` token selector [minitofe]: one attention head over the tokens, in a bottleneck
(docs/method.md, "Selector and approximator kinds"). Where ToFe's MLP selector sees the other tokens
only through their mean, this one lets every token weigh every other.

    z      = LN(x) @ W1.T + b1                             # (B, N, d)   d = C/4   ``fc1``
    o      = Attn(z)   one head, timm's Attention on d     # (B, N, d)   ``attn.qkv``, ``attn.proj``
    logits = (z + o) @ W2.T + b2                           # (B, N, 2)   ``fc2``   [keep, freeze]

The attention's keys are the prefix tokens and the patches ``patch_weight`` (B, P) marks (a constant:
``tofe-cumulative`` passes the patches still alive, so training on all N tokens and inference on the
alive ones gathered compute the same); every query also attends to itself (``nn.attention``'s mask).
MACs on n tokens: n C d + (4 n d^2 + 2 n^2 d) + 2 n d.
"""
from .ops import resolve
from .part import Part
from ..backend import get_xp
from ..nn.attention import attention_backward, attention_forward
from ..nn.layers import layernorm_backward, linear_backward


def attention_selector_forward(x, params, prefix, num_prefix, patch_weight=None, ops=None):
    """x: (B, N, C); patch_weight: None or (B, P) constant 0/1 -> logits (B, N, 2), cache."""
    xp, ops = get_xp(x), resolve(ops)
    if x.ndim != 3:
        raise ValueError(f"selector: x must be (B, N, C), got shape {tuple(x.shape)}")
    B, N, _ = x.shape
    key_mask = None
    if patch_weight is not None:
        if tuple(patch_weight.shape) != (B, N - num_prefix):
            raise ValueError(f"selector: patch_weight must be (B, P) = {(B, N - num_prefix)}, "
                             f"got {tuple(patch_weight.shape)}")
        key_mask = xp.concatenate([xp.ones((B, num_prefix), dtype=x.dtype),
                                   (patch_weight > 0).astype(x.dtype)], axis=1)      # (B, N)
    n, c_ln = ops.layernorm_forward(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"])
    z, c_fc1 = ops.linear_forward(n, params[prefix + "fc1.weight"], params[prefix + "fc1.bias"])  # (B, N, d)
    o, c_attn = attention_forward(z, params, prefix + "attn.", 1, key_mask)
    logits, c_fc2 = ops.linear_forward(z + o, params[prefix + "fc2.weight"], params[prefix + "fc2.bias"])
    return logits, (prefix, c_ln, c_fc1, c_attn, c_fc2)


def attention_selector_backward(dlogits, cache):
    """dlogits: (B, N, 2) -> dx (B, N, C), grads {full key: array} for norm / fc1 / attn / fc2 (the key
    mask is a constant: no gradient)."""
    prefix, c_ln, c_fc1, c_attn, c_fc2 = cache
    grads = {}
    dh, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dlogits, c_fc2)
    dz, g, _ = attention_backward(dh, c_attn)
    grads.update(g)
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(dz + dh, c_fc1)
    dx, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads


def attention_selector_shapes(prefix, C, r=None):
    if C % 4:
        raise ValueError(f"the attention selector needs embed_dim divisible by 4 (d = C/4), got {C}")
    d = C // 4
    return {prefix + "norm.weight": (C,), prefix + "norm.bias": (C,),
            prefix + "fc1.weight": (d, C), prefix + "fc1.bias": (d,),
            prefix + "attn.qkv.weight": (3 * d, d), prefix + "attn.qkv.bias": (3 * d,),
            prefix + "attn.proj.weight": (d, d), prefix + "attn.proj.bias": (d,),
            prefix + "fc2.weight": (2, d), prefix + "fc2.bias": (2,)}


def attention_selector_macs(n, C, r=None):
    """MACs of scoring n tokens: fc1, the head's qkv / scores / values / proj on d = C/4, fc2."""
    d = C // 4
    return n * C * d + 4 * n * d * d + 2 * n * n * d + n * d * 2


def attention_selector_dmacs(n, C, r=None):
    """d MACs / d n (the scores and values grow as n^2)."""
    d = C // 4
    return C * d + 4 * d * d + 4 * n * d + d * 2


PART = Part("attention", attention_selector_shapes, attention_selector_forward, attention_selector_backward,
            attention_selector_macs, attention_selector_dmacs)
