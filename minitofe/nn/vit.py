"""The dense Vision Transformer: embedding, ``depth`` pre-norm blocks, head (timm's ``VisionTransformer``).

``vit_forward(params, images, cfg) -> (logits, cache)`` and ``vit_backward(dlogits, cache) -> (dimages,
grads)``; ``grads`` has exactly the keys, shapes and dtype of ``params``. The dtype follows the params:
float32 or float64, and the images must match it (nothing is cast silently).
"""
import numpy as np

from .block import block_backward, block_forward
from .embed import embed_backward, embed_forward, head_backward, head_forward
from .params import check_params
from ..backend import get_xp
from ..kernels import choose, use_fast


def check_images(images, cfg, dtype):
    """Validate a batch of images against the config and the params' dtype; raise naming the problem."""
    xp = get_xp(images)
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array of shape (B, {cfg.in_chans}, {cfg.img_size}, "
                        f"{cfg.img_size}), got {type(images).__name__}")
    want = (cfg.in_chans, cfg.img_size, cfg.img_size)
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


def vit_forward(params, images, cfg, check=True, fast=False):
    """params: {timm key: array}; images: (B, Cin, Hh, W) of the params' dtype -> logits (B, num_classes).

    ``check=False`` skips input validation (for inner loops that already validated). ``fast=True`` runs
    the blocks on the Numba kernels of ``minitofe.kernels`` (the reference when Numba is absent or the
    arrays are on a GPU); ``vit_backward`` then uses the matching fast backward."""
    if check:
        dtype = check_params(params, cfg)
        check_images(images, cfg, dtype)
    fast = use_fast(fast, images)
    block = choose(fast, block_forward)
    x, c_embed = embed_forward(images, params, cfg)                  # (B, N, C)
    c_blocks = []
    for i in range(cfg.depth):
        x, c = block(x, params, f"blocks.{i}.", cfg.num_heads)
        c_blocks.append(c)
    logits, c_head = head_forward(x, params, cfg)
    return logits, (c_embed, c_blocks, c_head, fast)


def _check_dlogits(dlogits, cache):
    """dlogits must be (B, num_classes) in the forward's dtype; cache must be ``vit_forward``'s."""
    if not isinstance(cache, tuple) or len(cache) != 4:
        raise TypeError(f"cache must be the cache vit_forward returned (a tuple of 4), got {type(cache).__name__}")
    cfg, shape, _, c_linear, _ = cache[2]          # head cache; c_linear = (input, head.weight, has_bias)
    dtype = c_linear[1].dtype
    if not hasattr(dlogits, "shape") or not hasattr(dlogits, "dtype"):
        raise TypeError(f"dlogits must be an array of shape ({shape[0]}, {cfg.num_classes}), "
                        f"got {type(dlogits).__name__}")
    if tuple(dlogits.shape) != (shape[0], cfg.num_classes):
        raise ValueError(f"dlogits must have the logits' shape ({shape[0]}, {cfg.num_classes}), "
                         f"got {tuple(dlogits.shape)}")
    if dlogits.dtype != dtype:
        raise TypeError(f"dlogits have dtype {dlogits.dtype} but the forward ran in {dtype}; cast explicitly")


def vit_backward(dlogits, cache):
    """-> dimages (B, Cin, Hh, W), grads {timm key: array} (same keys/shapes/dtype as params)."""
    _check_dlogits(dlogits, cache)
    c_embed, c_blocks, c_head, fast = cache
    dx, grads = head_backward(dlogits, c_head)
    return dense_blocks_embed_backward(dx, c_blocks, c_embed, grads, fast), grads


def dense_blocks_embed_backward(dx, c_blocks, c_embed, grads, fast=False):
    """Back through unmasked blocks (``c_blocks`` in forward order), then the embedding: adds their
    gradients to ``grads`` and returns dimages. The tail of ``vit_backward`` and of ToFe's training
    backward (the dense blocks before the first stage)."""
    block_bwd = choose(fast, block_backward)
    for c in reversed(c_blocks):
        dx, g, _ = block_bwd(dx, c)
        grads.update(g)
    dimages, g = embed_backward(dx, c_embed)
    grads.update(g)
    return dimages
