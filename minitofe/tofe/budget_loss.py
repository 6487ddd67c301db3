"""The compute-budget loss of ToFe training as one forward/backward pair (docs/method.md, "Losses" and
"MACs").

    n_s    = T + sum_p m_s[b, p]                         (B, S) kept tokens per stage, differentiable
    R_b    = MACs(n) / MACs_dense                        (``macs.tofe_macs``, the one MACs function)
    L      = lam * (mean_b R_b - gamma)^2                (``per_image_budget``: lam * mean_b (R_b - gamma)^2)

``tofe-uniform`` trains toward fixed equal ratios instead: L = sum_s lam * (mean_b keep_s - rho_s)^2 with
keep_s = (n_s - T) / P. Both are ``losses.flops_loss_forward`` on a different ratio; this module owns the
choice, so training reads "budget loss" in one line. The backward returns the gradient with respect to
each stage's kept count, which the straight-through mask passes to every patch of that stage.
"""
from typing import NamedTuple

from .losses import flops_loss_backward, flops_loss_forward
from .budget import fused_tokens, method_macs
from .macs import dense_macs
from ..backend import get_xp


class BudgetCache(NamedTuple):
    c_flops: object       # one flops-loss cache (MACs target), or a list of S (tofe-uniform)
    dratio_dkept: object  # (B, S) d R_b / d n_s (MACs target), None for tofe-uniform
    num_patches: int      # P


def budget_loss_forward(masks, cfg, tcfg, stages):
    """masks: S arrays (B, N) (prefix tokens 1) -> loss (float), macs (B,), macs_ratio (B,),
    keep_frac (B, S) fraction of patches kept, cache."""
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    xp = get_xp(masks[0])
    kept = xp.stack([m.sum(axis=1) for m in masks], axis=1)                            # (B, S), incl. T
    froze = xp.stack([(m[:, T:] < 0.5).any(axis=1) for m in masks], axis=1)            # (B, S) constant
    macs, dmacs = method_macs(cfg, tcfg, stages, kept, fused_tokens(tcfg, froze))
    dense = dense_macs(cfg)
    keep_frac = (kept - T) / P                                                         # (B, S)
    if tcfg.method == "tofe-uniform":
        loss, c_flops = 0.0, []
        for s in range(len(stages)):
            term, c = flops_loss_forward(keep_frac[:, s], tcfg.keep_ratios[s], tcfg.lam)
            loss += float(term)
            c_flops.append(c)
        return loss, macs, macs / dense, keep_frac, BudgetCache(c_flops, None, P)
    loss, c_flops = flops_loss_forward(macs / dense, tcfg.target_ratio, tcfg.lam, tcfg.per_image_budget)
    return float(loss), macs, macs / dense, keep_frac, BudgetCache(c_flops, dmacs / dense, P)


def budget_loss_backward(cache):
    """-> dkept: S arrays (B,), the gradient of the loss with respect to each stage's kept count."""
    if cache.dratio_dkept is None:                        # d/dn_s of lam (mean keep_s - rho_s)^2
        return [flops_loss_backward(1.0, c) / cache.num_patches for c in cache.c_flops]
    dratio = flops_loss_backward(1.0, cache.c_flops)                                   # (B,)
    return [dratio * cache.dratio_dkept[:, s] for s in range(cache.dratio_dkept.shape[1])]
