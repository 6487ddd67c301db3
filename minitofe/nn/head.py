"""What comes after the last block, as in timm's ``VisionTransformer``: the final norm (end of
``forward_features``), then ``forward_head``: pooling, ``fc_norm``, classifier.

    features = norm(x)                      only when the model has ``norm`` (``cfg.use_norm``)
    pooled   = features[:, 0]               global_pool='token' (the class token)
             = mean of features[:, T:]      global_pool='avg' (all N tokens with pool_include_prefix)
    pooled   = fc_norm(pooled)              only when the model has ``fc_norm`` (``cfg.use_fc_norm``)
    logits   = head(pooled)                 only when num_classes > 0; otherwise the output is ``pooled``

timm places the final LayerNorm either before pooling (``norm``, on every token) or after it
(``fc_norm``, on the pooled vector): by default ``fc_norm`` iff global_pool='avg', and the ``fc_norm``
argument overrides that; ``final_norm=False`` has neither. Distilled DeiT classifies the class token with
``head`` and the distillation token with ``head_dist`` and averages the two (timm at inference); its
pooled features are the mean of the two tokens.

``head_forward`` is norm + ``forward_head`` (tokens after the blocks -> logits); ``pre_logits=True``
returns the pooled features instead of the logits, as timm's ``forward_head(x, pre_logits=True)``.
"""
from .layers import layernorm_backward, layernorm_forward, linear_backward, linear_forward
from ..backend import get_xp


def final_norm_forward(x, params, cfg, ops=None):
    """x: (B, N, C) after the last block -> features (B, N, C): timm's ``forward_features`` output.
    ``ops``: the namespace whose ``layernorm_forward`` runs it (``tofe.ops``; None: this package's)."""
    if not cfg.use_norm:
        return x, None
    norm = layernorm_forward if ops is None else ops.layernorm_forward
    return norm(x, params["norm.weight"], params["norm.bias"], cfg.norm_eps)


def final_norm_backward(dfeatures, cache):
    if cache is None:
        return dfeatures, {}
    dx, dw, db = layernorm_backward(dfeatures, cache)
    return dx, {"norm.weight": dw, "norm.bias": db}


def _pool_start(cfg):
    return 0 if cfg.pool_include_prefix else cfg.num_prefix_tokens


def pool_forward(features, cfg):
    """features: (B, N, C) -> pooled (B, C)."""
    if cfg.distilled:
        return 0.5 * (features[:, 0] + features[:, 1])
    if cfg.global_pool == "token":
        return features[:, 0]
    return features[:, _pool_start(cfg):].mean(axis=1)


def pool_backward(dpooled, shape, cfg):
    """dpooled: (B, C) -> dfeatures of ``shape`` (B, N, C)."""
    dx = get_xp(dpooled).zeros(shape, dtype=dpooled.dtype)
    if cfg.distilled:
        dx[:, 0] = dx[:, 1] = 0.5 * dpooled
    elif cfg.global_pool == "token":
        dx[:, 0] = dpooled
    else:
        start = _pool_start(cfg)
        dx[:, start:] = dpooled[:, None, :] / (shape[1] - start)
    return dx


def forward_head(features, params, cfg, pre_logits=False):
    """features: (B, N, C) -> logits (B, num_classes), or pooled features (B, C) when ``pre_logits`` or
    the model has no classifier (num_classes=0). Returns (out, cache)."""
    B, N, C = features.shape
    classify = cfg.num_classes > 0 and not pre_logits
    if cfg.distilled and classify:
        logits, c_head = linear_forward(features[:, 0], params["head.weight"], params["head.bias"])
        logits_dist, c_dist = linear_forward(features[:, 1], params["head_dist.weight"],
                                             params["head_dist.bias"])
        out = 0.5 * (logits + logits_dist)
        return out, (cfg, features.shape, out.shape, out.dtype, "distilled", c_head, c_dist)
    pooled = pool_forward(features, cfg)
    c_fc = c_head = None
    if cfg.use_fc_norm:
        pooled, c_fc = layernorm_forward(pooled, params["fc_norm.weight"], params["fc_norm.bias"],
                                         cfg.norm_eps)
    out = pooled
    if classify:
        out, c_head = linear_forward(pooled, params["head.weight"], params["head.bias"])
    return out, (cfg, features.shape, out.shape, out.dtype, "pooled", c_fc, c_head)


def forward_head_backward(dout, cache):
    """-> dfeatures (B, N, C), grads for the fc_norm / head / head_dist keys the forward used."""
    cfg, shape, _, _, kind, c_a, c_b = cache
    grads = {}
    if kind == "distilled":
        dout = 0.5 * dout
        dx = get_xp(dout).zeros(shape, dtype=dout.dtype)
        dx[:, 0], grads["head.weight"], grads["head.bias"] = linear_backward(dout, c_a)
        dx[:, 1], grads["head_dist.weight"], grads["head_dist.bias"] = linear_backward(dout, c_b)
        return dx, grads
    c_fc, c_head = c_a, c_b
    if c_head is not None:
        dout, grads["head.weight"], grads["head.bias"] = linear_backward(dout, c_head)
    if c_fc is not None:
        dout, grads["fc_norm.weight"], grads["fc_norm.bias"] = layernorm_backward(dout, c_fc)
    return pool_backward(dout, shape, cfg), grads


def head_output(cache):
    """(shape, dtype) of what ``head_forward`` returned, from its cache."""
    c_fh = cache[1]
    return tuple(c_fh[2]), c_fh[3]


def head_forward(x, params, cfg, pre_logits=False, ops=None):
    """x: (B, N, C) after the last block -> logits (B, num_classes) (or pooled features (B, C), see
    ``forward_head``): the final norm (on ``ops``, see ``final_norm_forward``), then ``forward_head``."""
    features, c_norm = final_norm_forward(x, params, cfg, ops)
    out, c_fh = forward_head(features, params, cfg, pre_logits)
    return out, (c_norm, c_fh)


def head_backward(dout, cache):
    """-> dx (B, N, C), grads for norm / fc_norm / head / head_dist (those the forward used)."""
    c_norm, c_fh = cache
    dfeatures, grads = forward_head_backward(dout, c_fh)
    dx, g = final_norm_backward(dfeatures, c_norm)
    grads.update(g)
    return dx, grads
