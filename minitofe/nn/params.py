"""The parameter dict of a ViT: its keys and shapes (timm's names), initialisation, and validation.

Parameters are one flat ``{timm state-dict key: array}`` dict. ``param_shapes(cfg)`` is
the single source of truth for which keys a config has; loaders and ``vit_forward`` check against it so
that a missing, unexpected or mis-shaped key is reported by name.
"""
import math

import numpy as np

from ..config import ViTConfig


def param_shapes(cfg):
    """Ordered ``{key: shape}`` for the backbone described by ``cfg`` (timm's state-dict order)."""
    C, Hd = cfg.embed_dim, cfg.mlp_hidden
    patch_in = cfg.in_chans * cfg.patch_size ** 2
    s = {}
    if cfg.class_token:
        s["cls_token"] = (1, 1, C)
    if cfg.reg_tokens:
        s["reg_token"] = (1, cfg.reg_tokens, C)
    s["pos_embed"] = (1, cfg.embed_len, C)
    if cfg.distilled:                                # timm registers it after the parent's tokens
        s["dist_token"] = (1, 1, C)
    s["patch_embed.proj.weight"] = (C, patch_in)     # timm: (C, in_chans, p, p), flattened
    if not cfg.pre_norm:                             # timm: the patch embedding has no bias with pre_norm
        s["patch_embed.proj.bias"] = (C,)
    else:
        s["norm_pre.weight"] = (C,)
        s["norm_pre.bias"] = (C,)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = (C,)
        s[b + "norm1.bias"] = (C,)
        s[b + "attn.qkv.weight"] = (3 * C, C)
        if cfg.qkv_bias:
            s[b + "attn.qkv.bias"] = (3 * C,)
        s[b + "attn.proj.weight"] = (C, C)
        s[b + "attn.proj.bias"] = (C,)
        if cfg.init_values is not None:
            s[b + "ls1.gamma"] = (C,)
        s[b + "norm2.weight"] = (C,)
        s[b + "norm2.bias"] = (C,)
        s[b + "mlp.fc1.weight"] = (Hd, C)
        s[b + "mlp.fc1.bias"] = (Hd,)
        s[b + "mlp.fc2.weight"] = (C, Hd)
        s[b + "mlp.fc2.bias"] = (C,)
        if cfg.init_values is not None:
            s[b + "ls2.gamma"] = (C,)
    for norm, used in (("norm", cfg.use_norm), ("fc_norm", cfg.use_fc_norm)):
        if used:
            s[norm + ".weight"] = (C,)
            s[norm + ".bias"] = (C,)
    if cfg.num_classes:                              # num_classes=0: timm's head is the identity
        s["head.weight"] = (cfg.num_classes, C)
        s["head.bias"] = (cfg.num_classes,)
        if cfg.distilled:
            s["head_dist.weight"] = (cfg.num_classes, C)
            s["head_dist.bias"] = (cfg.num_classes,)
    return s


def trunc_normal(rng, shape, std, a=-2.0, b=2.0, dtype=np.float64):
    """Normal(0, std) truncated to the absolute interval [a, b] (timm's ``trunc_normal_`` convention:
    the bounds are values, not multiples of std), by redrawing out-of-range samples."""
    out = rng.normal(0.0, std, size=shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    return out.astype(dtype)


def check_init_args(cfg, rng, dtype, who):
    """What an initialisation needs: a ``ViTConfig``, a ``numpy.random.Generator`` (randomness is passed
    in) and a float dtype (every forward and backward runs in float32 or float64)."""
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"{who} needs a ViTConfig, got {type(cfg).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{who}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"{who}: dtype must be float32 or float64, got {np.dtype(dtype)}")


def init_params(cfg, rng, dtype=np.float64):
    """Fresh parameters following timm's default ('') init: Linear weights trunc-normal(0.02) with zero
    bias, LayerNorm ones/zeros, pos_embed trunc-normal(0.02), cls_token and reg_token normal(1e-6), dist_token
    trunc-normal(0.02), patch-embedding conv torch's default uniform(+-1/sqrt(fan_in)), LayerScale
    ``init_values``. ``rng`` is a ``numpy.random.Generator`` (randomness is passed in)."""
    check_init_args(cfg, rng, dtype, "init_params")
    params = {}
    for key, shape in param_shapes(cfg).items():
        if key in ("cls_token", "reg_token"):
            v = rng.normal(0.0, 1e-6, size=shape)
        elif key in ("pos_embed", "dist_token"):
            v = trunc_normal(rng, shape, 0.02)
        elif key.startswith("patch_embed.proj."):
            bound = 1.0 / math.sqrt(cfg.in_chans * cfg.patch_size ** 2)
            v = rng.uniform(-bound, bound, size=shape)
        elif key.endswith(".gamma"):
            v = np.full(shape, float(cfg.init_values))
        elif "norm" in key.split(".")[-2]:                  # norm1, norm2, norm, fc_norm, norm_pre
            v = np.ones(shape) if key.endswith("weight") else np.zeros(shape)
        elif key.endswith(".weight"):
            v = trunc_normal(rng, shape, 0.02)
        else:
            v = np.zeros(shape)
        params[key] = np.ascontiguousarray(v, dtype=dtype)
    return params


def key_mismatch(missing=(), unexpected=(), misshaped=(), unexpected_label="unexpected keys"):
    """One message naming every missing, unexpected and mis-shaped key (``misshaped`` holds
    ``"key: expected (..), got (..)"`` strings), or ``""`` when the keys match. Shared by ``check_params``
    and ``minitofe.tofe.params.check_tofe_params``."""
    parts = [f"{label} {list(keys)}"
             for label, keys in (("missing keys", missing), (unexpected_label, unexpected)) if keys]
    if misshaped:
        parts.append(f"mis-shaped keys [{'; '.join(misshaped)}]")
    return ", ".join(parts)


def check_params(params, cfg, extra_ok=()):
    """Raise ``ValueError`` listing missing, unexpected and mis-shaped keys; ``TypeError`` on mixed or
    non-float dtypes. Keys starting with one of ``extra_ok`` (e.g. ToFe modules) are allowed. Returns the
    common dtype."""
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a minitofe.config.ViTConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    want = param_shapes(cfg)
    missing = [k for k in want if k not in params]
    unexpected = [k for k in params if k not in want and not k.startswith(tuple(extra_ok))]
    misshaped = [f"{k}: expected {want[k]}, got {tuple(params[k].shape)}"
                 for k in want if k in params and tuple(params[k].shape) != want[k]]
    problem = key_mismatch(missing, unexpected, misshaped)
    if problem:
        raise ValueError("parameters do not match the config: " + problem)
    dtypes = {v.dtype for v in params.values()}          # dtype objects: no string per array per call
    if len(dtypes) != 1:
        by = {}
        for k, v in params.items():
            by.setdefault(str(v.dtype), k)
        raise TypeError(f"params mix dtypes {sorted(by)} (e.g. {by}); cast them all to one float dtype")
    dtype = next(iter(params.values())).dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"params must be float32 or float64, got {dtype}")
    return dtype
