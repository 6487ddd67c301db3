"""The dense Vision Transformer, timm's ``VisionTransformer``: embedding, ``depth`` pre-norm blocks, head.

    vit_forward(params, images, cfg) -> (out, cache)            timm's ``model(images)``
    vit_backward(dout, cache) -> (dimages, grads)
    vit_forward_features(params, images, cfg) -> (features, cache)   timm's ``forward_features``
    vit_features_backward(dfeatures, cache) -> (dimages, grads)

``out`` is the logits (B, num_classes); for a model without classifier (num_classes=0), or with
``pre_logits=True``, it is the pooled features (B, C) (timm's ``forward_head(x, pre_logits=True)``).
``features`` are all N tokens after the final norm (B, N, C). ``grads`` has exactly the keys, shapes
and dtype of ``params``; a parameter the output does not depend on (the classifier, for features) gets
zeros. The dtype follows the params: float32 or float64, and the images must match it (nothing is cast
silently).
"""
from .block import block_backward, block_forward, block_options
from .embed import check_images, embed_backward, embed_forward
from .head import final_norm_backward, final_norm_forward, head_backward, head_forward, head_output
from .params import check_params, param_shapes
from ..backend import get_xp


def _trunk_forward(params, images, cfg, check, ops):
    """Embedding and blocks -> tokens (B, N, C), embed cache, block caches, the ops the blocks ran on."""
    if check:
        dtype = check_params(params, cfg)
        check_images(images, cfg, dtype)
    if ops is not None and ops.fast and not cfg.default_block:
        ops = None                     # the Numba twins implement timm's default block only: the reference
    block = block_forward if ops is None else ops.block_forward
    options = block_options(cfg) if ops is None or not ops.fast else {}
    x, c_embed = embed_forward(images, params, cfg)                  # (B, N, C)
    c_blocks = []
    for i in range(cfg.depth):
        x, c = block(x, params, f"blocks.{i}.", cfg.num_heads, **options)
        c_blocks.append(c)
    return x, c_embed, c_blocks, ops


def vit_forward(params, images, cfg, check=True, ops=None, pre_logits=False):
    """params: {timm key: array}; images: (B, Cin, Hh, W) of the params' dtype -> logits (B, num_classes)
    (pooled features (B, C) when ``pre_logits`` or num_classes=0), and the cache.

    ``check=False`` skips input validation (for inner loops that already validated). ``ops`` holds the
    functions the blocks run on (None: this package's reference; the caller's choice, e.g. the Numba
    twins, which run only timm's default block); ``vit_backward`` then uses the matching backward."""
    x, c_embed, c_blocks, ops = _trunk_forward(params, images, cfg, check, ops)
    out, c_head = head_forward(x, params, cfg, pre_logits, ops)
    return out, (c_embed, c_blocks, c_head, ops)


def vit_forward_features(params, images, cfg, check=True, ops=None):
    """-> features (B, N, C): every token after the final norm (timm's ``forward_features``), and the
    cache for ``vit_features_backward``. Pool them with ``nn.head.forward_head``."""
    x, c_embed, c_blocks, ops = _trunk_forward(params, images, cfg, check, ops)
    features, c_norm = final_norm_forward(x, params, cfg, ops)
    return features, (c_embed, c_blocks, ("features", c_norm, features.shape, features.dtype), ops)


def _check_grad_input(dout, cache, features):
    """dout must have the output's shape and dtype; cache must come from the matching forward."""
    if not isinstance(cache, tuple) or len(cache) != 4:
        raise TypeError(f"cache must be the cache vit_forward returned (a tuple of 4), "
                        f"got {type(cache).__name__}")
    is_features = cache[2][0] == "features"
    if is_features != features:
        raise TypeError(f"this cache is from {'vit_forward_features' if is_features else 'vit_forward'}: "
                        f"pass it to {'vit_features_backward' if is_features else 'vit_backward'}")
    shape, dtype = (tuple(cache[2][2]), cache[2][3]) if features else head_output(cache[2])
    name, what = ("dfeatures", "features'") if features else ("dlogits", "logits'")
    if not hasattr(dout, "shape") or not hasattr(dout, "dtype"):
        raise TypeError(f"{name} must be an array of shape {shape}, got {type(dout).__name__}")
    if tuple(dout.shape) != shape:
        raise ValueError(f"{name} must have the {what} shape {shape}, got {tuple(dout.shape)}")
    if dout.dtype != dtype:
        raise TypeError(f"{name} have dtype {dout.dtype} but the forward ran in {dtype}; cast explicitly")


def _complete(grads, cfg, dtype, xp):
    """Zeros for the parameters the output does not depend on, then timm's key order."""
    return {k: grads[k] if k in grads else xp.zeros(shape, dtype=dtype)
            for k, shape in param_shapes(cfg).items()}


def vit_backward(dlogits, cache):
    """-> dimages (B, Cin, Hh, W), grads {timm key: array} (same keys/shapes/dtype as params)."""
    _check_grad_input(dlogits, cache, features=False)
    c_embed, c_blocks, c_head, ops = cache
    dx, grads = head_backward(dlogits, c_head)
    dimages = dense_blocks_embed_backward(dx, c_blocks, c_embed, grads, ops)
    return dimages, _complete(grads, c_embed[0], dlogits.dtype, get_xp(dlogits))


def vit_features_backward(dfeatures, cache):
    """dfeatures: (B, N, C) -> dimages, grads (same keys as params; zeros for the head's)."""
    _check_grad_input(dfeatures, cache, features=True)
    c_embed, c_blocks, (_, c_norm, _, _), ops = cache
    dx, grads = final_norm_backward(dfeatures, c_norm)
    dimages = dense_blocks_embed_backward(dx, c_blocks, c_embed, grads, ops)
    return dimages, _complete(grads, c_embed[0], dfeatures.dtype, get_xp(dfeatures))


def dense_blocks_forward(x, params, lo, hi, num_heads, block_fwd=block_forward):
    """Unmasked blocks lo .. hi-1 on x (B, N, C) -> x, their caches in forward order (the dense blocks
    before ToFe's first stage; ``block_fwd``: ``block_forward`` or its Numba twin)."""
    caches = []
    for i in range(lo, hi):
        x, c = block_fwd(x, params, f"blocks.{i}.", num_heads)
        caches.append(c)
    return x, caches


def dense_blocks_embed_backward(dx, c_blocks, c_embed, grads, ops=None):
    """Back through unmasked blocks (``c_blocks`` in forward order), then the embedding: adds their
    gradients to ``grads`` and returns dimages. The tail of ``vit_backward`` and of ToFe's training
    backward (the dense blocks before the first stage); ``ops``: the forward's (None: the reference)."""
    block_bwd = block_backward if ops is None else ops.block_backward
    for c in reversed(c_blocks):
        dx, g, _ = block_bwd(dx, c)
        grads.update(g)
    dimages, g = embed_backward(dx, c_embed)
    grads.update(g)
    return dimages
