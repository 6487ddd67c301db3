"""DynamicViT on the reference ViT: the training forward and its hand-written backward (method
``dynamicvit``; docs/method.md, "Baselines").

At the start of stage s its predictor (``dynamicvit_predictor.py``) scores the patch tokens, with the previous
decision as the weights of its global half; the decision is cumulative and hard (straight-through
Gumbel-Softmax of the log-probabilities):

    d_s = hard_gumbel(logp_s)[..., keep] * d_{s-1}          d_{-1} = 1, (B, P)

and every block of the stage runs on all N tokens with the attention key mask [1 (prefix), d_s]
(``nn.attention``), so a dropped token never influences a kept one again. The loss (every reduction
written out in docs/method.md):

    L = CE(z, y)
      + dvit_ratio_weight / S * sum_s mean_b (mean_p d_s[b, p] - rho^(s+1))^2
      + dvit_kl_weight    * mean_b KL(softmax(z_teacher) || softmax(z))
      + dvit_token_weight * mean over the kept patch tokens (d_S > 0.5) and channels of
                            (LN(x_final) - LN_teacher(x_teacher_final))^2

with ``norm`` the final LayerNorm (the authors distil the normalised tokens). The decisions enter the
gradient through the attention masks, the ratio loss, the next predictor's global half and the next
decision's product; the token mask is a constant, as the teacher's outputs are.
"""
from typing import NamedTuple

from .dynamicvit_budget import dynamicvit_ratios
from ..tofe.gumbel import gumbel_softmax_backward, gumbel_softmax_forward
from ..tofe.losses import (approx_loss_backward, approx_loss_forward, flops_loss_backward, flops_loss_forward,
                     kd_loss_backward, kd_loss_forward)
from ..tofe.macs import dense_macs, tofe_macs
from .dynamicvit_predictor import predictor_backward, predictor_forward
from ..tofe.ops import resolve
from .params import check_method_params
from ..tofe.scoring import stage_ranges
from ..backend import get_xp, to_numpy
from ..nn.embed import check_images, embed_forward, head_backward, head_forward
from ..nn.layers import cross_entropy_backward, cross_entropy_forward, layernorm_backward, layernorm_forward
from ..nn.params import check_params
from ..nn.vit import dense_blocks_embed_backward, dense_blocks_forward


class DynamicViTStageCache(NamedTuple):
    prev: object           # (B, P) the previous stage's decision d_{s-1}
    keep_value: object     # (B, P) this stage's Gumbel keep value, before the product with prev
    c_pred: tuple          # the predictor's cache
    c_gumbel: tuple        # the Gumbel-Softmax's cache
    c_blocks: list         # one block cache per block of the stage, in forward order


class DynamicViTCache(NamedTuple):
    cfg: object
    tcfg: object
    c_embed: tuple
    c_pre: list            # dense blocks before the first stage
    c_stages: list         # one DynamicViTStageCache per stage
    c_head: tuple
    c_ce: tuple
    c_kd: tuple            # None without the KL term
    c_tok: tuple           # (final-LayerNorm cache, masked-MSE cache) or None
    c_ratio: list          # one ratio-loss cache per stage
    ops: object            # the functions the forward ran on: the backward runs their twins
    fast: bool             # ops.fast


def check_dynamicvit_model(params, images, cfg, tcfg):
    """Validate params / images for method 'dynamicvit' (class-token head required)."""
    check_images(images, cfg, check_params(params, cfg, extra_ok=("tofe.",)))
    if not cfg.class_token or cfg.global_pool != "token":
        raise ValueError("method 'dynamicvit' needs a class-token head (class_token=True, "
                         "global_pool='token'), "
                         f"got class_token={cfg.class_token}, global_pool={cfg.global_pool!r}")
    check_method_params(params, cfg, tcfg)


def check_dynamicvit_teacher(teacher, B, cfg, tcfg):
    """teacher: ``teacher_forward``'s dict with 'logits' (B, K) and 'features' (B, N, C)."""
    need = [k for k, w in (("logits", tcfg.dvit_kl_weight), ("features", tcfg.dvit_token_weight)) if w > 0]
    if need and not isinstance(teacher, dict):
        raise ValueError(f"dvit_kl_weight / dvit_token_weight > 0 need the dense teacher's {need}: pass "
                         f"teacher=teacher_forward(teacher_params, images, cfg, stages), "
                         f"or set the weights to 0")
    want = {"logits": (B, cfg.num_classes), "features": (B, cfg.num_tokens, cfg.embed_dim)}
    for key in need:
        got = tuple(getattr(teacher.get(key), "shape", ()))
        if got != want[key]:
            raise ValueError(f"teacher[{key!r}] must have shape {want[key]}, got {got or 'nothing'}")


def check_dynamicvit_noise(noise, S, shape, dtype):
    """noise: S arrays of ``shape`` (B, P, 2) and ``dtype`` (``training.draw_noise``)."""
    shapes = [(tuple(getattr(g, "shape", ())), getattr(g, "dtype", None)) for g in noise or ()]
    if len(shapes) != S or any(sh != (shape, dtype) for sh in shapes):
        raise ValueError(f"noise must be {S} {dtype} arrays of shape {shape} (training.draw_noise), "
                         f"got {shapes}")


def dynamicvit_train_forward(params, images, labels, cfg, tcfg, noise, teacher=None, tau=None, hard=True,
                             ops=None):
    """One training forward with the Gumbel ``noise`` (S arrays (B, P, 2), ``training.draw_noise``).

    Returns ``out`` (``loss``, ``losses`` {cls, ratio, kl, token, total}, ``logits``, ``final_tokens``
    (B, N, C) before ``norm``, ``masks`` (B, N) and ``kept`` bool (B, P) per stage, ``keep_ratios``
    (S,), ``macs`` / ``macs_ratio`` (B,), ``tau``) and the cache for ``dynamicvit_train_backward``.
    ``hard=False`` uses the soft Gumbel sample (smooth, for finite differences); ``ops``: the functions
    the blocks run on (None: the reference, ``ops.REFERENCE``)."""
    check_dynamicvit_model(params, images, cfg, tcfg)
    B, T, P, H = images.shape[0], cfg.num_prefix_tokens, cfg.num_patches, cfg.num_heads
    check_dynamicvit_teacher(teacher, B, cfg, tcfg)
    stages, ratios = tcfg.resolved_stages(cfg.depth), dynamicvit_ratios(cfg, tcfg)
    check_dynamicvit_noise(noise, len(stages), (B, P, 2), images.dtype)
    xp = get_xp(images)
    ops = resolve(ops)
    block_fwd = ops.block_forward
    tau = tcfg.tau if tau is None else tau
    x, c_embed = embed_forward(images, params, cfg)
    x, c_pre = dense_blocks_forward(x, params, 0, stages[0], H, block_fwd)
    prev = xp.ones((B, P), dtype=x.dtype)                               # d_{-1}
    out = {"masks": [], "kept": []}
    c_stages, c_ratio, ratio_loss = [], [], 0.0
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        logp, c_pred = predictor_forward(x[:, T:], params, f"tofe.predictor.{s}.", prev)   # (B, P, 2)
        y, c_g = gumbel_softmax_forward(logp, noise[s], tau, hard=hard)
        decision = y[..., 0] * prev                                     # (B, P)
        m = xp.concatenate([xp.ones((B, T), dtype=x.dtype), decision], axis=1)   # (B, N)
        c_blocks = []
        for j in range(lo, hi):
            x, c = block_fwd(x, params, f"blocks.{j}.", H, key_mask=m)
            c_blocks.append(c)
        term, c = flops_loss_forward(decision.mean(axis=1), ratios[s], tcfg.dvit_ratio_weight / len(stages),
                                     per_image=True)
        ratio_loss += float(term)
        c_ratio.append(c)
        c_stages.append(DynamicViTStageCache(prev, y[..., 0], c_pred, c_g, c_blocks))
        out["masks"].append(m)
        out["kept"].append(to_numpy(decision > 0.5))
        prev = decision
    logits, c_head = head_forward(x, params, cfg)
    l_cls, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
    l_kd, c_kd = (kd_loss_forward(logits, teacher["logits"], 1.0) if tcfg.dvit_kl_weight > 0 else (0.0, None))
    l_tok, c_tok = 0.0, None
    if tcfg.dvit_token_weight > 0:
        feats, c_ln = layernorm_forward(x[:, T:], params["norm.weight"], params["norm.bias"])   # (B, P, C)
        l_tok, c_mse = approx_loss_forward(feats, teacher["features"][:, T:], (prev > 0.5).astype(x.dtype))
        c_tok = (c_ln, c_mse)
    total = (float(l_cls) + ratio_loss + tcfg.dvit_kl_weight * float(l_kd)
             + tcfg.dvit_token_weight * float(l_tok))
    kept = xp.stack([m.sum(axis=1) for m in out["masks"]], axis=1)      # (B, S) tokens, prefix included
    macs, _ = tofe_macs(cfg, stages, kept, selector=False, approximator=False, predictor=True)
    out.update(loss=total, logits=logits, final_tokens=x, tau=tau, macs=macs,
               macs_ratio=macs / dense_macs(cfg), keep_ratios=((kept - T) / P).mean(axis=0),
               losses={"cls": float(l_cls), "ratio": ratio_loss, "kl": float(l_kd), "token": float(l_tok),
                       "total": total})
    return out, DynamicViTCache(cfg, tcfg, c_embed, c_pre, c_stages, c_head, c_ce, c_kd, c_tok, c_ratio,
                                ops, ops.fast)


def dynamicvit_train_backward(cache):
    """Gradient of the total loss -> dimages (B, Cin, Hh, W), grads {key: array} (keys of params)."""
    if not isinstance(cache, DynamicViTCache):
        raise TypeError(f"cache must be the DynamicViTCache dynamicvit_train_forward returned, got "
                        f"{type(cache).__name__}")
    cfg, tcfg = cache.cfg, cache.tcfg
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    block_bwd = cache.ops.block_backward
    dlogits = cross_entropy_backward(1.0, cache.c_ce)
    if cache.c_kd is not None:
        dlogits = dlogits + tcfg.dvit_kl_weight * kd_loss_backward(1.0, cache.c_kd)
    dx, grads = head_backward(dlogits, cache.c_head)
    if cache.c_tok is not None:
        c_ln, c_mse = cache.c_tok
        dfeats = tcfg.dvit_token_weight * approx_loss_backward(1.0, c_mse)
        dxf, dw, db = layernorm_backward(dfeats, c_ln)
        dx[:, T:] += dxf
        grads["norm.weight"] = grads["norm.weight"] + dw
        grads["norm.bias"] = grads["norm.bias"] + db
    dprev = 0.0                                     # gradient into the decision of the stage before
    for s in reversed(range(len(cache.c_stages))):
        prev, keep_value, c_pred, c_g, c_blocks = cache.c_stages[s]
        dm = 0.0
        for c in reversed(c_blocks):
            dx, g, dkey_mask = block_bwd(dx, c)
            grads.update(g)
            dm = dm + dkey_mask
        ddecision = dm[:, T:] + flops_loss_backward(1.0, cache.c_ratio[s])[:, None] / P + dprev   # (B, P)
        dy = get_xp(dx).zeros(ddecision.shape + (2,), dtype=dx.dtype)
        dy[..., 0] = ddecision * prev
        dpatches, g, dpolicy = predictor_backward(gumbel_softmax_backward(dy, c_g), c_pred)
        grads.update(g)
        dx[:, T:] += dpatches
        dprev = ddecision * keep_value + dpolicy
    return dense_blocks_embed_backward(dx, cache.c_pre, cache.c_embed, grads, cache.ops), grads

