"""Token embedding and the classification head, as in timm's ``VisionTransformer``.

Embedding: the patch-embedding convolution (kernel = stride = patch size) is a matmul on flattened
patches. minitofe stores ``patch_embed.proj.weight`` as (C, in_chans * p * p), the conv weight
(C, in_chans, p, p) flattened in the same (channel, row, column) order as ``patchify`` flattens a patch;
that reshape is the only change conversion from timm makes. Then the class token (and the distillation
token of distilled DeiT) is prepended and the learned position embedding (1, N, C) is added.

Head: final LayerNorm ``norm`` then the class token through ``head`` (distilled DeiT: the class and
distillation tokens through ``head`` and ``head_dist``, averaged, as timm does at inference); with
``global_pool='avg'`` the patch tokens are averaged, normalised by ``fc_norm`` (timm's layout) and
classified.
"""
from .layers import layernorm_backward, layernorm_forward, linear_backward, linear_forward
from ..backend import get_xp


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


def embed_forward(images, params, cfg):
    """images: (B, Cin, Hh, W) -> tokens (B, N, C): prefix tokens first, then patches in raster order."""
    xp = get_xp(images)
    B = images.shape[0]
    patches = patchify(images, cfg.patch_size)                          # (B, P, Cin p p)
    t, c_proj = linear_forward(patches, params["patch_embed.proj.weight"], params["patch_embed.proj.bias"])
    prefix = []
    if cfg.class_token:
        prefix.append(xp.broadcast_to(params["cls_token"], (B, 1, cfg.embed_dim)))
    if cfg.distilled:
        prefix.append(xp.broadcast_to(params["dist_token"], (B, 1, cfg.embed_dim)))
    x = xp.concatenate(prefix + [t], axis=1) if prefix else t
    x = x + params["pos_embed"]                                         # (B, N, C)
    return x, (cfg, images.shape, c_proj)


def embed_backward(dx, cache):
    """-> dimages (B, Cin, Hh, W), grads for patch_embed / cls_token / dist_token / pos_embed."""
    cfg, shape, c_proj = cache
    T = cfg.num_prefix_tokens
    grads = {"pos_embed": dx.sum(axis=0, keepdims=True)}
    if cfg.class_token:
        grads["cls_token"] = dx[:, 0:1].sum(axis=0, keepdims=True)
    if cfg.distilled:
        grads["dist_token"] = dx[:, 1:2].sum(axis=0, keepdims=True)
    dpatches, grads["patch_embed.proj.weight"], grads["patch_embed.proj.bias"] = linear_backward(dx[:, T:], c_proj)
    B, Cin, Hh, W = shape
    return unpatchify(dpatches, cfg.patch_size, Cin, Hh, W), grads


def head_forward(x, params, cfg):
    """x: (B, N, C) after the last block -> logits (B, num_classes)."""
    if cfg.global_pool == "avg":
        pooled = x[:, cfg.num_prefix_tokens:].mean(axis=1)
        h, c_norm = layernorm_forward(pooled, params["fc_norm.weight"], params["fc_norm.bias"])
        logits, c_head = linear_forward(h, params["head.weight"], params["head.bias"])
        return logits, (cfg, x.shape, c_norm, c_head, None)
    h, c_norm = layernorm_forward(x, params["norm.weight"], params["norm.bias"])
    logits, c_head = linear_forward(h[:, 0], params["head.weight"], params["head.bias"])
    c_dist = None
    if cfg.distilled:
        logits_dist, c_dist = linear_forward(h[:, 1], params["head_dist.weight"], params["head_dist.bias"])
        logits = 0.5 * (logits + logits_dist)
    return logits, (cfg, x.shape, c_norm, c_head, c_dist)


def head_backward(dlogits, cache):
    """-> dx (B, N, C), grads for norm / fc_norm / head / head_dist."""
    cfg, shape, c_norm, c_head, c_dist = cache
    xp = get_xp(dlogits)
    grads = {}
    if cfg.global_pool == "avg":
        dh, grads["head.weight"], grads["head.bias"] = linear_backward(dlogits, c_head)
        dpooled, grads["fc_norm.weight"], grads["fc_norm.bias"] = layernorm_backward(dh, c_norm)
        dx = xp.zeros(shape, dtype=dlogits.dtype)
        T = cfg.num_prefix_tokens
        dx[:, T:] = dpooled[:, None, :] / (shape[1] - T)
        return dx, grads
    dh = xp.zeros(shape, dtype=dlogits.dtype)                           # (B, N, C)
    if cfg.distilled:
        dlogits = 0.5 * dlogits
        dh[:, 1], grads["head_dist.weight"], grads["head_dist.bias"] = linear_backward(dlogits, c_dist)
    dh[:, 0], grads["head.weight"], grads["head.bias"] = linear_backward(dlogits, c_head)
    dx, grads["norm.weight"], grads["norm.bias"] = layernorm_backward(dh, c_norm)
    return dx, grads
