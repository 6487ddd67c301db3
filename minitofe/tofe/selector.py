"""The token selector: a 3-layer MLP with a global-context step (docs/method.md, "Token selector").

    u      = GELU(LN(x) @ W1.T + b1)                  # (B, N, C/2)
    g      = mean of u over the patch tokens           # (B, 1, C/2)   global context
    v      = concat(u, broadcast(g))                   # (B, N, C)
    w      = GELU(v @ W2.T + b2)                       # (B, N, C/4)
    logits = w @ W3.T + b3                             # (B, N, 2)     [keep, freeze]

Column 0 of ``logits`` is "keep", column 1 is "freeze"; ``keep_probability`` is softmax column 0. The
selector scores every token, frozen or not (that is what lets a frozen token be reused later); prefix
tokens are scored too, but the caller always keeps them and they do not enter the global context ``g``.
``patch_weight`` (B, P), a constant 0/1 array, restricts ``g`` to the weighted patches: ``dynamicvit``
passes the tokens still alive, so that training (all N tokens, masked mean) and inference (the alive
tokens gathered, plain mean) compute the same context.
Parameters live under ``prefix`` (e.g. ``"tofe.selector.0."``): ``norm``, ``fc1``, ``fc2``, ``fc3``.
"""
from .macs import selector_macs
from .ops import resolve
from .part import Part
from ..nn.layers import gelu_backward, layernorm_backward, linear_backward, softmax_forward
from ..backend import get_xp


def selector_forward(x, params, prefix, num_prefix, patch_weight=None, ops=None):
    """x: (B, N, C); num_prefix: T, the number of prefix tokens (0 <= T < N); patch_weight: None or
    (B, P) constant weights of the patches in the global mean -> logits (B, N, 2), cache. ``ops``: the
    namespace LayerNorm, GELU and the linear layers run on (``tofe.ops``; None: this package's reference)."""
    xp, ops = get_xp(x), resolve(ops)
    if x.ndim != 3:
        raise ValueError(f"selector: x must be (B, N, C), got shape {tuple(x.shape)}")
    N = x.shape[1]
    if not 0 <= num_prefix < N:
        raise ValueError(f"selector: need 0 <= num_prefix < N = {N} (at least one patch token), "
                         f"got num_prefix={num_prefix}")
    n, c_ln = ops.layernorm_forward(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"])
    h1, c_fc1 = ops.linear_forward(n, params[prefix + "fc1.weight"], params[prefix + "fc1.bias"])
    u, c_g1 = ops.gelu_forward(h1)                                      # (B, N, C/2)
    if patch_weight is None:
        wgt = xp.full((x.shape[0], N - num_prefix, 1), 1.0 / (N - num_prefix), dtype=x.dtype)
    else:
        if tuple(patch_weight.shape) != (x.shape[0], N - num_prefix):
            raise ValueError(f"selector: patch_weight must be (B, P) = {(x.shape[0], N - num_prefix)}, "
                             f"got {tuple(patch_weight.shape)}")
        total = xp.maximum(patch_weight.sum(axis=1, keepdims=True), 1.0)
        wgt = (patch_weight / total)[..., None]                         # (B, P, 1), rows sum to 1 (or 0)
    g = (wgt * u[:, num_prefix:]).sum(axis=1, keepdims=True)            # (B, 1, C/2)
    v = xp.concatenate([u, xp.broadcast_to(g, u.shape)], axis=-1)       # (B, N, C)
    h2, c_fc2 = ops.linear_forward(v, params[prefix + "fc2.weight"], params[prefix + "fc2.bias"])
    w, c_g2 = ops.gelu_forward(h2)                                      # (B, N, C/4)
    logits, c_fc3 = ops.linear_forward(w, params[prefix + "fc3.weight"], params[prefix + "fc3.bias"])
    return logits, (prefix, num_prefix, u.shape[-1], wgt, c_ln, c_fc1, c_g1, c_fc2, c_g2, c_fc3)


def selector_backward(dlogits, cache):
    """dlogits: (B, N, 2) -> dx (B, N, C), grads {full key: array} for norm / fc1 / fc2 / fc3.

    The global context g is a weighted mean of u over the patch tokens (weights 1/P by default), so its
    gradient (summed over the N tokens that received it) flows back to each patch token's u times its
    weight.
    """
    prefix, T, half, wgt, c_ln, c_fc1, c_g1, c_fc2, c_g2, c_fc3 = cache
    grads = {}
    dw, grads[prefix + "fc3.weight"], grads[prefix + "fc3.bias"] = linear_backward(dlogits, c_fc3)
    dh2 = gelu_backward(dw, c_g2)
    dv, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dh2, c_fc2)
    du = dv[..., :half].copy()                                          # (B, N, C/2) local part
    dg = dv[..., half:].sum(axis=1, keepdims=True)                      # (B, 1, C/2) global part
    du[:, T:] += wgt * dg
    dh1 = gelu_backward(du, c_g1)
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(dh1, c_fc1)
    dx, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads


def keep_probability(logits):
    """logits: (..., 2) [keep, freeze] -> keep_prob (...,) = softmax(logits)[..., 0]."""
    if logits.shape[-1] != 2:
        raise ValueError(f"keep_probability: logits must end in 2 = [keep, freeze], "
                         f"got {tuple(logits.shape)}")
    p, _ = softmax_forward(logits)
    return p[..., 0]


def selector_shapes(prefix, C, r=None):
    """``{key: shape}`` of one selector under ``prefix``: ``norm``, ``fc1``, ``fc2``, ``fc3``."""
    if C % 4:
        raise ValueError(f"the token selector needs embed_dim divisible by 4 (C -> C/2 -> C/4), got {C}")
    return {prefix + "norm.weight": (C,), prefix + "norm.bias": (C,),
            prefix + "fc1.weight": (C // 2, C), prefix + "fc1.bias": (C // 2,),
            prefix + "fc2.weight": (C // 4, 2 * (C // 2)), prefix + "fc2.bias": (C // 4,),
            prefix + "fc3.weight": (2, C // 4), prefix + "fc3.bias": (2,)}


PART = Part("mlp", selector_shapes, selector_forward, selector_backward,
            lambda n, C, r=None: selector_macs(n, C), lambda n, C, r=None: selector_macs(1, C))
