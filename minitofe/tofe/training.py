"""The ToFe training forward and its hand-written backward (docs/method.md, "Keep path" / "Freeze
path", training, and "Losses").

All N tokens run through every block; an attention key mask makes kept queries attend only kept keys,
and each stage mixes per token

    x_out = m * Blocks(x) + (1 - m) * A(x)          m: (B, N), prefix tokens 1, patches from Gumbel

with ``m`` the hard straight-through Gumbel decision of the stage's selector (``hard=False`` uses the
soft relaxation instead: smooth, so the whole forward can be checked by finite differences). The loss is

    L = L_cls + alpha L_kd + beta L_approx + L_flops

where L_approx is summed over stages (each a mean over that stage's frozen patches, those with m < 0.5:
the decision is a constant for this term, so it sends no gradient into the mask) [ours], and is not
used with the identity approximator (it would have no parameters to train and would only pull the stage
*input* toward the teacher's stage *output*) [ours]. ``tofe-cumulative`` multiplies each stage's decision
by the previous one (a dropped token never returns) and carries dropped tokens unchanged (they are masked
out of all later attention). ``tofe-uniform`` replaces the MACs budget by a per-stage keep-ratio penalty
``lam * sum_i (mean keep_i - rho_i)^2`` toward the fixed equal ratios. With ``fuse_frozen`` each stage's
blocks also run on the fused frozen token, and the budget counts it (``fuse.py``). The baselines have
training forwards of their own (``minitofe.methods``).

This module reads as the paper's figure, embed -> dense blocks -> stages -> head -> losses, forward and
back; the pieces are pairs of their own: one stage (select -> keep path -> freeze path -> mix) in
``stage.py``, the budget loss in ``budget_loss.py``, the kept / frozen / reused record in ``record.py``
(shared with inference), the teacher, the noise and the input checks in ``train_inputs.py``.
"""
from typing import NamedTuple

from .budget_loss import BudgetCache, budget_loss_backward, budget_loss_forward
from .losses import kd_loss_backward, kd_loss_forward
from .ops import resolve
from .record import new_record, record_stage
from .scoring import stage_ranges
from .stage import stage_train_backward, stage_train_forward
from .train_inputs import check_train_inputs, draw_noise, teacher_forward  # noqa: F401 (public here)
from ..backend import get_xp
from ..nn.embed import embed_forward, head_backward, head_forward
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.vit import dense_blocks_embed_backward, dense_blocks_forward


class LossCache(NamedTuple):
    c_ce: tuple           # cross-entropy cache
    c_kd: tuple           # L_kd cache; None without distillation (alpha = 0 or no teacher)
    alpha: float          # weight of L_kd
    c_budget: BudgetCache


class TrainCache(NamedTuple):
    cfg: object
    tcfg: object
    c_embed: tuple
    c_pre: list           # block caches of the dense blocks before the first stage, in forward order
    c_stages: list        # one StageCache per stage
    c_head: tuple
    c_losses: LossCache
    ops: object           # what the forward ran on (``ops.REFERENCE`` or twins); so does the backward
    fast: bool            # ops.fast: the blocks ran on fast twins (the Numba kernels)


def tofe_train_forward(params, images, labels, cfg, tcfg, noise, teacher=None, tau=None, hard=True,
                       ops=None):
    """One training forward with the given Gumbel noise (list of S arrays (B, P, 2), see ``draw_noise``).

    Returns ``out`` with ``loss`` (total), ``losses`` {cls, kd, approx, flops, total}, ``logits``,
    ``selector_logits`` / ``masks`` / ``stage_outputs`` (one per stage: (B, N, 2), (B, N), (B, N, C)),
    ``kept`` / ``frozen`` / ``reused`` (one bool (B, P) NumPy array per stage, as in ``tofe_inference``),
    ``keep_ratios`` (S,) batch-mean fraction of patches kept, ``macs`` and ``macs_ratio`` (B,); and the
    cache for ``tofe_train_backward``.

    ``ops`` holds the functions the blocks run on (None: the reference, ``ops.REFERENCE``; the caller may
    pass the Numba twins, ``kernels.ops(fast, like)``); the backward then uses the matching backward.
    """
    check_train_inputs(params, images, labels, cfg, tcfg, noise, teacher)
    ops = resolve(ops)
    block_fwd = ops.block_forward
    tau = tcfg.tau if tau is None else tau
    stages, B, P, T = tcfg.resolved_stages(cfg.depth), images.shape[0], cfg.num_patches, cfg.num_prefix_tokens
    out = new_record("selector_logits", "masks", "stage_outputs")
    x, c_embed = embed_forward(images, params, cfg)                                    # embed
    x, c_pre = dense_blocks_forward(x, params, 0, stages[0], cfg.num_heads, block_fwd)  # dense blocks
    xp = get_xp(images)
    m_prev, ever_frozen = xp.ones((B, P), dtype=images.dtype), xp.zeros((B, P), dtype=bool)
    c_stages, approx_terms = [], []
    for s, blocks in enumerate(stage_ranges(cfg, stages)):                             # stages
        t_s = teacher["tokens"][s] if teacher is not None else None
        x, m, sel_logits, term, c = stage_train_forward(x, m_prev, params, cfg, tcfg, s, blocks, noise[s],
                                                        tau, hard, t_s, block_fwd)
        c_stages.append(c)
        approx_terms += [term] if term is not None else []
        out["selector_logits"].append(sel_logits)
        out["masks"].append(m)
        out["stage_outputs"].append(x)
        m_prev = m[:, T:]                                                              # (B, P)
        _, ever_frozen = record_stage(out, m_prev > 0.5, not tcfg.reuses_tokens, ever_frozen)
    logits, c_head = head_forward(x, params, cfg)                                      # head
    losses, extra, c_losses = tofe_losses_forward(logits, labels, out["masks"], approx_terms, teacher,
                                                  cfg, tcfg, stages)                   # losses
    out.update(extra, logits=logits, losses=losses, loss=losses["total"])
    return out, TrainCache(cfg, tcfg, c_embed, c_pre, c_stages, c_head, c_losses, ops, ops.fast)


def tofe_losses_forward(logits, labels, masks, approx_terms, teacher, cfg, tcfg, stages):
    """L = L_cls + alpha L_kd + beta L_approx + L_flops -> losses {cls, kd, approx, flops, total},
    {macs, macs_ratio (B,), keep_ratios (S,)}, cache. ``approx_terms``: the stages' L_approx terms."""
    l_cls, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
    l_kd, c_kd = (kd_loss_forward(logits, teacher["logits"], tcfg.kd_temperature)
                  if teacher is not None and tcfg.alpha > 0 else (0.0, None))
    l_approx = float(sum(approx_terms)) if approx_terms else 0.0
    l_flops, macs, macs_ratio, keep_frac, c_budget = budget_loss_forward(masks, cfg, tcfg, stages)
    total = float(l_cls) + tcfg.alpha * float(l_kd) + tcfg.beta * l_approx + l_flops
    losses = {"cls": float(l_cls), "kd": float(l_kd), "approx": l_approx, "flops": l_flops, "total": total}
    extra = {"macs": macs, "macs_ratio": macs_ratio, "keep_ratios": keep_frac.mean(axis=0)}
    return losses, extra, LossCache(c_ce, c_kd, tcfg.alpha, c_budget)


def tofe_losses_backward(cache):
    """-> dlogits (B, K), dkept: S arrays (B,) (the budget loss's gradient per stage's kept count). The
    L_approx terms send their gradient through the stages' freeze paths (``stage.freeze_path_backward``)."""
    dlogits = cross_entropy_backward(1.0, cache.c_ce)
    if cache.c_kd is not None:
        dlogits = dlogits + cache.alpha * kd_loss_backward(1.0, cache.c_kd)
    return dlogits, budget_loss_backward(cache.c_budget)


def tofe_train_backward(cache):
    """Gradient of the total loss -> dimages (B, Cin, Hh, W), grads {key: array} (keys of params)."""
    if not isinstance(cache, TrainCache):
        what = f"a tuple of {len(cache)}" if isinstance(cache, tuple) else type(cache).__name__
        raise TypeError(f"cache must be the cache tofe_train_forward returned (a TrainCache), got {what}")
    block_bwd = cache.ops.block_backward
    dlogits, dkept = tofe_losses_backward(cache.c_losses)                              # losses
    dx, grads = head_backward(dlogits, cache.c_head)                                   # head
    dm_next = 0.0                              # drop methods: the gradient into m_patch from the next stage
    for s in reversed(range(len(cache.c_stages))):                                     # stages
        dx, g, dm_next = stage_train_backward(dx, dkept[s], dm_next, cache.c_stages[s], block_bwd)
        grads.update(g)
    dimages = dense_blocks_embed_backward(dx, cache.c_pre, cache.c_embed, grads, cache.ops)  # blocks, embed
    return dimages, grads
