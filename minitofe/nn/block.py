"""The MLP and the pre-norm transformer block, as in timm's ``Block``:

    x = x + ls1 * Attn(LN1(x), key_mask)
    x = x + ls2 * MLP(LN2(x)),   MLP = fc2(act(fc1(.)))

LayerScale (``ls1.gamma``, ``ls2.gamma``) is used when those keys are present (``init_values`` set),
and is 1 otherwise. Parameters are read from the flat dict under ``prefix`` (e.g. ``"blocks.3."``).
``norm_eps`` and ``act_layer`` default to timm's ViT (1e-6, exact GELU); ``block_options(cfg)`` gives
them for a config. Post-norm blocks (timm's ``ResPostBlock``) are not this block: conversion refuses them.
"""
from typing import NamedTuple

from .activations import act_backward, act_forward
from .attention import attention_backward, attention_forward
from .layers import layernorm_backward, layernorm_forward, linear_backward, linear_forward
from ..config import LN_EPS


class BlockCache(NamedTuple):
    prefix: str           # "blocks.3."
    g1: object            # (C,) LayerScale ls1.gamma, or None
    g2: object            # (C,) LayerScale ls2.gamma, or None
    a: object             # (B, N, C) the attention branch's output, before ls1
    f: object             # (B, N, C) the MLP branch's output, before ls2
    c_n1: tuple           # norm1's cache
    c_attn: tuple         # the attention's cache
    c_n2: tuple           # norm2's cache
    c_mlp: tuple          # the MLP's cache


def block_options(cfg):
    """The keyword arguments of ``block_forward`` that a ``ViTConfig`` sets."""
    return {"norm_eps": cfg.norm_eps, "act_layer": cfg.act_layer}


def mlp_forward(x, params, prefix, act_layer="gelu"):
    """x: (..., C) -> (..., C) through fc1 (C -> hidden), the activation, fc2 (hidden -> C)."""
    h, c1 = linear_forward(x, params[prefix + "fc1.weight"], params[prefix + "fc1.bias"])
    a, cg = act_forward(h, act_layer)
    y, c2 = linear_forward(a, params[prefix + "fc2.weight"], params[prefix + "fc2.bias"])
    return y, (prefix, c1, cg, c2)


def mlp_backward(dy, cache):
    prefix, c1, cg, c2 = cache
    grads = {}
    da, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dy, c2)
    dh = act_backward(da, cg)
    dx, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(dh, c1)
    return dx, grads


def block_forward(x, params, prefix, num_heads, key_mask=None, norm_eps=LN_EPS, act_layer="gelu"):
    """x: (B, N, C); key_mask: (B, N) or None (see ``attention``). Returns (B, N, C) and the cache."""
    g1 = params.get(prefix + "ls1.gamma")
    g2 = params.get(prefix + "ls2.gamma")
    n1, c_n1 = layernorm_forward(x, params[prefix + "norm1.weight"], params[prefix + "norm1.bias"], norm_eps)
    a, c_attn = attention_forward(n1, params, prefix + "attn.", num_heads, key_mask)
    x1 = x + (a * g1 if g1 is not None else a)
    n2, c_n2 = layernorm_forward(x1, params[prefix + "norm2.weight"], params[prefix + "norm2.bias"], norm_eps)
    f, c_mlp = mlp_forward(n2, params, prefix + "mlp.", act_layer)
    out = x1 + (f * g2 if g2 is not None else f)
    return out, BlockCache(prefix, g1, g2, a, f, c_n1, c_attn, c_n2, c_mlp)


def run_blocks(x, params, cfg, lo, hi):
    """Blocks lo .. hi-1 on tokens x (B, n, C), keeping no caches (inference)."""
    for j in range(lo, hi):
        x, _ = block_forward(x, params, f"blocks.{j}.", cfg.num_heads)
    return x


def block_backward(dout, cache):
    """-> dx (B, N, C), grads {timm key: array}, dkey_mask (B, N) or None."""
    prefix, g1, g2, a, f, c_n1, c_attn, c_n2, c_mlp = cache
    grads = {}
    lead = tuple(range(dout.ndim - 1))
    # second residual branch
    if g2 is not None:
        grads[prefix + "ls2.gamma"] = (dout * f).sum(axis=lead)
        df = dout * g2
    else:
        df = dout
    dn2, g = mlp_backward(df, c_mlp)
    grads.update(g)
    dx1_branch, grads[prefix + "norm2.weight"], grads[prefix + "norm2.bias"] = layernorm_backward(dn2, c_n2)
    dx1 = dout + dx1_branch
    # first residual branch
    if g1 is not None:
        grads[prefix + "ls1.gamma"] = (dx1 * a).sum(axis=lead)
        da = dx1 * g1
    else:
        da = dx1
    dn1, g, dkey_mask = attention_backward(da, c_attn)
    grads.update(g)
    dx_branch, grads[prefix + "norm1.weight"], grads[prefix + "norm1.bias"] = layernorm_backward(dn1, c_n1)
    return dx1 + dx_branch, grads, dkey_mask


def check_default_block(cfg, who):
    """Refuse a config whose blocks are not timm's default (LayerNorm eps 1e-6, exact GELU): ``who``
    (the ToFe stages, the Numba kernels) implements only that block."""
    if not cfg.default_block:
        raise ValueError(f"{who} implements timm's default block only (LayerNorm eps {LN_EPS}, act_layer "
                         f"'gelu'); this backbone has norm_eps={cfg.norm_eps}, act_layer={cfg.act_layer!r} "
                         f"(the dense vit_forward runs it)")
