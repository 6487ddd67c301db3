"""AdamW and learning-rate schedules, as plain functions over flat param dicts.

``adamw_step(params, grads, state, lr, ...)`` updates ``params`` in place and returns the new state;
``state`` is a plain dict ({"step": int, "m": {...}, "v": {...}}) that checkpoints save as arrays. Decoupled
weight decay as in torch.optim.AdamW (``p -= lr * wd * p`` before the Adam update). 1-D parameters
(biases, norms, LayerScale) and tokens/position embeddings get no decay (timm's convention).
"""
import math

from ..backend import get_xp


def no_weight_decay(key, value):
    """timm's rule: no decay for 1-D params and for cls/dist tokens and the position embedding."""
    return value.ndim <= 1 or key in ("cls_token", "dist_token", "pos_embed")


def adamw_init(params):
    xp = get_xp(*params.values())
    return {"step": 0, "m": {k: xp.zeros_like(v) for k, v in params.items()},
            "v": {k: xp.zeros_like(v) for k, v in params.items()}}


def adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, lr_scale=None):
    """One AdamW step on every key of ``grads`` (keys absent from grads are frozen).

    ``lr_scale``: optional {key: factor} multiplying the learning rate per parameter (parameter groups).
    """
    b1, b2 = betas
    state["step"] += 1
    t = state["step"]
    c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    for k, g in grads.items():
        p = params[k]
        lr_k = lr * (lr_scale.get(k, 1.0) if lr_scale else 1.0)
        if lr_k == 0.0:
            continue
        m, v = state["m"][k], state["v"][k]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * g * g
        if weight_decay and not no_weight_decay(k, p):
            p *= 1.0 - lr_k * weight_decay
        p -= lr_k * (m / c1) / (get_xp(v).sqrt(v / c2) + eps)
    return state


def clip_grad_norm(grads, max_norm):
    """Scale all grads in place so their global L2 norm is at most ``max_norm``; returns the norm before."""
    total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if max_norm is not None and total > max_norm:
        scale = max_norm / (total + 1e-12)
        for g in grads.values():
            g *= scale
    return total


def cosine_lr(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))
