"""Token embedding, as in timm's ``VisionTransformer`` (``patch_embed``, ``_pos_embed``, ``norm_pre``).

The patch-embedding convolution (kernel = stride = patch size) is a matmul on flattened patches.
minitofe stores ``patch_embed.proj.weight`` as (C, in_chans * p * p), the conv weight (C, in_chans, p, p)
flattened in the same (channel, row, column) order as ``patchify`` flattens a patch; that reshape is the
only change conversion from timm makes. Images may be non-square, (B, Cin, Hh, W) with both sides
multiples of p; patches are in raster order (row by row).

Then the prefix tokens are prepended, always in timm's order: class token, register tokens
(``reg_token``, (1, R, C)), distillation token (distilled DeiT; never together with registers). The
learned position embedding is added to all N tokens (``pos_embed`` (1, N, C)), or, with
``no_embed_class`` (DeiT-III, FlexiViT, DINOv2-reg), to the P patches only, before the prefix tokens
are prepended (``pos_embed`` (1, P, C)). With ``pre_norm`` (CLIP) the tokens then go through the
LayerNorm ``norm_pre`` and the patch embedding has no bias, as in timm.

The head (final norm, pooling, ``fc_norm``, classifier) lives in ``nn.head``; ``head_forward`` and
``head_backward`` are re-exported here for the modules that import them from this one.
"""
import numpy as np

from .head import head_backward, head_forward  # noqa: F401  (re-exported)
from .layers import layernorm_backward, layernorm_forward, linear_backward, linear_forward
from ..backend import get_xp


def check_images(images, cfg, dtype):
    """Validate a batch of images against the config and the params' dtype, as ``embed_forward`` takes
    them (NCHW at the config's size, the params' float dtype, finite); raise naming the problem."""
    xp = get_xp(images)
    want = (cfg.in_chans,) + cfg.img_hw
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array of shape (B, {want[0]}, {want[1]}, {want[2]}), "
                        f"got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images must have shape (B, {want[0]}, {want[1]}, {want[2]}) (NCHW), "
                         f"got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images: empty batch (B = 0)")
    if images.dtype != dtype:
        raise TypeError(f"images have dtype {images.dtype} but the params are {np.dtype(dtype)}; "
                        f"cast the images (or the params) explicitly")
    if not bool(xp.isfinite(images).all()):
        raise ValueError("images contain NaN or inf values")


def patchify(images, p):
    """images: (B, Cin, Hh, W) -> patches (B, P, Cin * p * p) in raster order."""
    B, Cin, Hh, W = images.shape
    gh, gw = Hh // p, W // p
    x = images.reshape(B, Cin, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)  # (B, gh, gw, Cin, p, p)
    return x.reshape(B, gh * gw, Cin * p * p)


def unpatchify(patches, p, Cin, Hh, W):
    """Inverse of ``patchify``: (B, P, Cin * p * p) -> (B, Cin, Hh, W)."""
    B = patches.shape[0]
    gh, gw = Hh // p, W // p
    x = patches.reshape(B, gh, gw, Cin, p, p).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(B, Cin, Hh, W)


def prefix_slices(cfg):
    """{timm key: slice of the token axis} for the prefix tokens: cls_token, reg_token, dist_token."""
    out, start = {}, 0
    for key, n in (("cls_token", int(cfg.class_token)), ("reg_token", cfg.reg_tokens),
                   ("dist_token", int(cfg.distilled))):
        if n:
            out[key] = slice(start, start + n)
            start += n
    return out


def embed_forward(images, params, cfg):
    """images: (B, Cin, Hh, W) -> tokens (B, N, C): prefix tokens first, then patches in raster order."""
    xp = get_xp(images)
    B = images.shape[0]
    patches = patchify(images, cfg.patch_size)                          # (B, P, Cin p p)
    t, c_proj = linear_forward(patches, params["patch_embed.proj.weight"],
                               params.get("patch_embed.proj.bias"))
    if cfg.no_embed_class:
        t = t + params["pos_embed"]                                     # patches only
    prefix = [xp.broadcast_to(params[key], (B, s.stop - s.start, cfg.embed_dim))
              for key, s in prefix_slices(cfg).items()]
    x = xp.concatenate(prefix + [t], axis=1) if prefix else t
    if not cfg.no_embed_class:
        x = x + params["pos_embed"]                                     # (B, N, C)
    c_pre = None
    if cfg.pre_norm:
        x, c_pre = layernorm_forward(x, params["norm_pre.weight"], params["norm_pre.bias"], cfg.norm_eps)
    return x, (cfg, images.shape, c_proj, c_pre)


def embed_backward(dx, cache):
    """-> dimages (B, Cin, Hh, W), grads for patch_embed / prefix tokens / pos_embed / norm_pre."""
    cfg, shape, c_proj, c_pre = cache
    grads = {}
    if c_pre is not None:
        dx, grads["norm_pre.weight"], grads["norm_pre.bias"] = layernorm_backward(dx, c_pre)
    T = cfg.num_prefix_tokens
    dpatch_tokens = dx[:, T:]
    grads["pos_embed"] = (dpatch_tokens if cfg.no_embed_class else dx).sum(axis=0, keepdims=True)
    for key, s in prefix_slices(cfg).items():
        grads[key] = dx[:, s].sum(axis=0, keepdims=True)
    dpatches, grads["patch_embed.proj.weight"], db = linear_backward(dpatch_tokens, c_proj)
    if db is not None:
        grads["patch_embed.proj.bias"] = db
    B, Cin, Hh, W = shape
    return unpatchify(dpatches, cfg.patch_size, Cin, Hh, W), grads
