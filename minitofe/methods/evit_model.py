"""EViT on the reference ViT: the whole forward (training and inference) and the training backward
(method ``evit``; docs/method.md, "Baselines").

Blocks before the first stage run dense; each stage's first block is EViT's reduction block
(``evit.evit_block_forward``), keeping ceil(keep_rate * n) of its n candidate tokens and fusing the
rest into one token; every other block is a plain block on the tokens that are left. Tokens are really
removed (gathers), in training as in inference, so ``predict`` and the training forward at the same keep
rate compute the same thing. The loss is the cross-entropy alone (the authors' recipe: no distillation).
The plain blocks run on the given ``ops`` (e.g. the Numba twins); the reduction block is the reference.
"""
from typing import NamedTuple

import numpy as np

from .evit_budget import evit_keep_rate
from .evit_block import evit_block_backward, evit_block_forward, keep_count
from ..tofe.macs import dense_macs, tofe_macs
from ..tofe.ops import resolve
from ..tofe.scoring import stage_ranges
from ..tofe.tokens import values_at_positions
from ..backend import get_xp, to_numpy
from ..nn.block import check_default_block
from ..nn.embed import check_images, embed_forward, head_backward, head_forward
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.params import check_params
from ..nn.vit import dense_blocks_embed_backward


class EvitCache(NamedTuple):
    cfg: object
    c_embed: tuple
    c_pre: list          # the dense blocks before the first stage
    c_steps: list        # ("block" | "evit", cache) for every later block, in forward order
    c_head: tuple
    c_ce: tuple
    ops: object          # the functions the forward ran on: the backward runs their twins
    fast: bool           # ops.fast


def check_evit_inputs(params, images, cfg, tcfg, keep_rates):
    """Validate the inputs of an EViT forward; returns the stage starts."""
    check_images(images, cfg, check_params(params, cfg, extra_ok=("tofe.",)))
    check_default_block(cfg, "EViT")
    if not cfg.class_token:
        raise ValueError("method 'evit' ranks tokens by the class token's attention: the model has no class "
                         "token (class_token=False)")
    stages = tcfg.resolved_stages(cfg.depth)
    if len(keep_rates) != len(stages) or any(not 0.0 < float(r) <= 1.0 for r in keep_rates):
        raise ValueError(f"evit: need one keep rate in (0, 1] per stage ({len(stages)} stages {stages}), got "
                         f"{tuple(keep_rates)}")
    return stages


def evit_forward(params, images, cfg, tcfg, keep_rates, ops=None, train=True):
    """images: (B, Cin, Hh, W); keep_rates: one per stage -> logits (B, K), record, caches.

    record: ``kept`` / ``dropped`` / ``keep_prob`` per stage ((B, P) arrays at the original patch
    positions: kept as themselves, fused or dropped, class-token attention at the reduction; 1 where the
    stage kept everything), ``tokens`` (S,) token counts after each stage's reduction (prefix and fused
    token included), ``stage_outputs``. caches: None unless ``train``."""
    stages = check_evit_inputs(params, images, cfg, tcfg, keep_rates)
    xp = get_xp(images)
    ops = resolve(ops)
    block_fwd, run = ops.block_forward, ops.run_blocks
    B, T, P, H = images.shape[0], cfg.num_prefix_tokens, cfg.num_patches, cfg.num_heads
    c_pre, c_steps = [], []

    def plain(x, lo, hi, caches):
        if not train:
            return run(x, params, cfg, lo, hi)
        for j in range(lo, hi):
            x, c = block_fwd(x, params, f"blocks.{j}.", H)
            caches.append(("block", c))
        return x

    x, c_embed = embed_forward(images, params, cfg)
    x = plain(x, 0, stages[0], c_pre)
    c_pre = [c for _, c in c_pre]
    positions = xp.broadcast_to(xp.arange(P), (B, P))                 # original patch index, -1: fused
    record = {"kept": [], "dropped": [], "keep_prob": [], "tokens": [], "stage_outputs": []}
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        n = x.shape[1] - T
        K = keep_count(float(keep_rates[s]), n)
        scores = xp.ones((B, P), dtype=x.dtype)
        if K < n:
            x, kept_idx, cls_attn, c = evit_block_forward(x, params, f"blocks.{lo}.", H, T, K, tcfg.evit_fuse)
            if train:
                c_steps.append(("evit", c))
            scores = values_at_positions(cls_attn, positions, P)
            positions = xp.take_along_axis(positions, kept_idx[:, T:] - T, axis=1)
            if tcfg.evit_fuse:
                positions = xp.concatenate([positions, xp.full((B, 1), -1, dtype=positions.dtype)], axis=1)
        else:
            x = plain(x, lo, lo + 1, c_steps)
        x = plain(x, lo + 1, hi, c_steps)
        kept = values_at_positions(xp.ones(positions.shape, dtype=bool), positions, P)
        record["kept"].append(to_numpy(kept))
        record["dropped"].append(to_numpy(~kept))
        record["keep_prob"].append(to_numpy(scores))
        record["tokens"].append(x.shape[1])
        record["stage_outputs"].append(x)
    logits, c_head = head_forward(x, params, cfg)
    macs, _ = tofe_macs(cfg, stages, np.asarray(record["tokens"], dtype=np.float64), selector=False,
                        approximator=False, reduce_in_block=True)
    record["macs"] = np.full(B, float(macs))
    record["macs_ratio"] = record["macs"] / dense_macs(cfg)
    caches = (c_embed, c_pre, c_steps if train else None, c_head, ops)
    return logits, record, caches


def evit_train_forward(params, images, labels, cfg, tcfg, keep_rate=None, ops=None):
    """One EViT training forward at ``keep_rate`` (default: the target, ``evit_budget.evit_keep_rate``).

    Returns ``out`` (``loss``, ``losses`` {cls, total}, ``logits``, ``keep_rate``, ``kept`` /
    ``dropped`` per stage, ``keep_ratios`` (S,) fraction of the patches kept as themselves, ``tokens``
    per stage (prefix and fused token included), ``macs`` / ``macs_ratio`` (B,)) and the cache for
    ``evit_train_backward``."""
    rate = evit_keep_rate(cfg, tcfg) if keep_rate is None else float(keep_rate)
    S = len(tcfg.resolved_stages(cfg.depth))
    logits, record, (c_embed, c_pre, c_steps, c_head, ops) = evit_forward(
        params, images, cfg, tcfg, (rate,) * S, ops=ops, train=True)
    loss, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
    out = {"loss": float(loss), "losses": {"cls": float(loss), "total": float(loss)}, "logits": logits,
           "keep_rate": rate, "tau": None, "kept": record["kept"], "dropped": record["dropped"],
           "keep_ratios": np.array([k.mean() for k in record["kept"]]), "tokens": record["tokens"],
           "macs": record["macs"], "macs_ratio": record["macs_ratio"]}
    return out, EvitCache(cfg, c_embed, c_pre, c_steps, c_head, c_ce, ops, ops.fast)


def evit_train_backward(cache):
    """Gradient of the cross-entropy -> dimages (B, Cin, Hh, W), grads {key: array} (keys of params)."""
    if not isinstance(cache, EvitCache):
        raise TypeError(f"cache must be the EvitCache evit_train_forward returned, "
                        f"got {type(cache).__name__}")
    block_bwd = cache.ops.block_backward
    dx, grads = head_backward(cross_entropy_backward(1.0, cache.c_ce), cache.c_head)
    for kind, c in reversed(cache.c_steps):
        if kind == "evit":
            dx, g = evit_block_backward(dx, c)
        else:
            dx, g, _ = block_bwd(dx, c)
        grads.update(g)
    return dense_blocks_embed_backward(dx, cache.c_pre, cache.c_embed, grads, cache.ops), grads


def evit_inference(params, images, cfg, tcfg, keep_ratios=None, ops=None):
    """EViT inference -> logits (B, K), info (the keys of ``tofe_inference``'s info; ``keep_ratios`` here
    are the per-stage keep rates of the current tokens, default ``evit_budget.evit_keep_rate`` at every stage;
    ``stage_outputs`` hold the reduced tokens (B, n_s, C); ``tokens`` the counts n_s)."""
    stages = tcfg.resolved_stages(cfg.depth)
    rates = tuple(keep_ratios) if keep_ratios is not None else (evit_keep_rate(cfg, tcfg),) * len(stages)
    logits, info, _ = evit_forward(params, images, cfg, tcfg, rates, ops=ops, train=False)
    none = [np.zeros_like(k) for k in info["kept"]]
    info.update(frozen=none, reused=none, stages=stages, keep_rates=rates,
                kept_counts=np.stack([k.sum(axis=1) for k in info["kept"]], axis=1))
    return logits, info
