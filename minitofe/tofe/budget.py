"""Keep ratios for a MACs budget: every ToFe method compared "at equal MACs" uses this (docs/method.md,
"MACs").

``ratios_for_budget(cfg, tcfg, budget)`` scales a base ratio profile (the learned ratios, or the config's
``keep_ratios``) by one factor, found by bisection, so that the ``topk`` MACs of the method equal
``budget`` x dense MACs (to within one token per stage). The MACs are those ``macs.tofe_macs`` reports
for that method (selectors, approximators and, with a ``scorer`` given by the caller instead of the
learned selector, its cost ``scorer.macs``). Each baseline's own search lives with the baseline
(``minitofe.methods``); ``minitofe.methods.ratios_for_budget`` asks the registry which one a method uses.
"""
import numpy as np

from .macs import dense_macs, tofe_macs
from .parts import approximator_of, selector_of


def method_macs(cfg, tcfg, stages, kept, fused=None, scorer=None):
    """``macs.tofe_macs`` of ToFe method ``tcfg`` with its ``stages``, the one call every MACs count of a
    method makes: its selector and approximator kinds, the stages that have an approximator
    (``ToFeConfig.approximated_stages``: not the last under ``last_stage="drop"``), its drop rule. kept:
    (B, S) or (S,) token counts per stage, prefix included; ``fused`` (``fused_tokens``): the fused frozen
    token per stage, or None; ``scorer``: a training-free scorer replaces the learned selector (its own
    MACs are the caller's to add) -> (macs, dmacs_dkept)."""
    return tofe_macs(cfg, stages, kept, selector=scorer is None,
                     approximator=tcfg.approximated_stages(cfg.depth), approx_reduction=tcfg.approx_reduction,
                     drop=not tcfg.reuses_tokens, parts=(selector_of(tcfg), approximator_of(tcfg)),
                     fused=fused)


def fused_tokens(tcfg, froze):
    """The fused frozen tokens the stages' blocks run on besides the kept ones (``tofe_macs``'s
    ``fused``): ``froze`` (B, S) or (S,) bool, the stage froze a patch of the image, when
    ``tcfg.fuses_frozen``; else None."""
    return froze if tcfg.fuses_frozen else None


def topk_macs(cfg, tcfg, ratios, scorer=None):
    """MACs of ``topk`` inference with keep ratios ``ratios`` for method ``tcfg.method`` (one image);
    ``scorer``: the caller's training-free scorer instead of the learned selector (``scoring.Scorer``)."""
    stages = tcfg.resolved_stages(cfg.depth)
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    counts = [int(round(r * P)) for r in ratios]
    if not tcfg.reuses_tokens:                      # drop methods: never more than is still alive
        for s in range(1, len(counts)):
            counts[s] = min(counts[s], counts[s - 1])
    kept = np.asarray(counts, dtype=np.float64) + T
    macs, _ = method_macs(cfg, tcfg, stages, kept, fused_tokens(tcfg, [n < P for n in counts]), scorer)
    if scorer is not None:
        alive = [P] + counts[:-1] if not tcfg.reuses_tokens else [P] * len(counts)
        macs += sum(scorer.macs(n + T, cfg.embed_dim) for n in alive if n > 0)
    return float(macs)


def ratios_for_budget(cfg, tcfg, budget, base=None, iters=60, scorer=None):
    """Keep ratios (one per stage) whose ``topk`` MACs are ``budget`` (a fraction of dense MACs).

    base: the profile to scale (default ``tcfg.keep_ratios``). Raises ValueError when the budget is
    below what the method costs with a single patch per stage, or above keeping everything. ``scorer``:
    as in ``topk_macs``."""
    if not 0.0 < budget <= 1.5:
        raise ValueError(f"budget must be a fraction of the dense MACs in (0, 1.5], got {budget}")
    base = np.asarray(tcfg.keep_ratios if base is None else base, dtype=np.float64)
    if np.any(base <= 0) or np.any(base > 1):
        raise ValueError(f"base keep ratios must lie in (0, 1], got {base.tolist()}")
    P, dense = cfg.num_patches, dense_macs(cfg)
    lo_r = np.full_like(base, 1.0 / P)
    hi_r = np.ones_like(base)
    if topk_macs(cfg, tcfg, lo_r, scorer) > budget * dense:
        raise ValueError(f"budget {budget:.3f} is below the cheapest {tcfg.method} setting "
                         f"({topk_macs(cfg, tcfg, lo_r, scorer) / dense:.3f} of dense MACs)")
    if topk_macs(cfg, tcfg, hi_r, scorer) <= budget * dense:
        return tuple(hi_r.tolist())
    # up to the scale at which every stage saturates at 1 (ratios are clipped), so that any budget between
    # the cheapest setting and keep-all is reached, whatever the profile's shape
    lo, hi = 0.0, 1.0 / base.min()
    for _ in range(iters):                        # MACs are monotone in the scale
        mid = 0.5 * (lo + hi)
        r = np.clip(base * mid, 1.0 / P, 1.0)
        if topk_macs(cfg, tcfg, r, scorer) > budget * dense:
            hi = mid
        else:
            lo = mid
    return tuple(float(v) for v in np.clip(base * lo, 1.0 / P, 1.0))
