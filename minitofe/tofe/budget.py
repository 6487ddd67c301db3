"""Keep ratios for a MACs budget: every method compared "at equal MACs" uses this (docs/method.md, "MACs").

``ratios_for_budget(cfg, tcfg, budget)`` scales a base ratio profile (the learned ratios, or the config's
``keep_ratios``) by one factor, found by bisection, so that the ``topk`` MACs of the method equal
``budget`` x dense MACs (to within one token per stage). The MACs are those ``macs.tofe_macs`` reports
for that method (selectors, approximators and class-attention scorers included).

The authors' baselines have one number each, found by the same bisection: EViT's keep rate r (every
stage keeps ceil(r * n) of its n candidates, plus the fused token) and DynamicViT's rho (stage s keeps
rho^(s+1) of the patches); their ``keep ratios`` are (r, r, r) and (rho, rho^2, rho^3).
``evit_keep_rate`` / ``dynamicvit_rho`` return the configured value, or the one that meets
``target_ratio`` when the config leaves it None. A value the search returns lies in the middle of the
interval of values that keep the same counts, never on the edge where minitofe's keep-count rule and the
authors' differ (docs/baselines.md).
"""
import numpy as np

from .config import FAITHFUL_BASELINES
from .evit import keep_count
from .macs import cls_attention_macs, dense_macs, tofe_macs
from .predictor import patches_to_keep


def baseline_profile(tcfg, x, S):
    """The per-stage keep ratios of EViT's keep rate x, (x,) * S, or of DynamicViT's rho x, (x, x^2, ...)."""
    return tuple(float(x) for _ in range(S)) if tcfg.method == "evit" else tuple(float(x) ** (s + 1)
                                                                                  for s in range(S))


def baseline_token_counts(cfg, tcfg, ratios):
    """Tokens (prefix included) after each stage's reduction in ``topk`` inference of evit / dynamicvit."""
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    alive, counts = P, []
    for r in ratios:
        if tcfg.method == "evit":
            K = keep_count(r, alive)
            alive = K + int(tcfg.evit_fuse and K < alive)
        else:
            alive = patches_to_keep(r, P, alive)
        counts.append(T + alive)
    return counts


def topk_macs(cfg, tcfg, ratios):
    """MACs of ``topk`` inference with keep ratios ``ratios`` for method ``tcfg.method`` (one image)."""
    stages = tcfg.resolved_stages(cfg.depth)
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    if tcfg.method in FAITHFUL_BASELINES:
        kept = np.asarray(baseline_token_counts(cfg, tcfg, ratios), dtype=np.float64)
        macs, _ = tofe_macs(cfg, stages, kept, selector=False, approximator=False,
                            predictor=tcfg.method == "dynamicvit", reduce_in_block=tcfg.method == "evit")
        return float(macs)
    counts = [int(round(r * P)) for r in ratios]
    if not tcfg.reuses_tokens:                      # drop methods: never more than is still alive
        for s in range(1, len(counts)):
            counts[s] = min(counts[s], counts[s - 1])
    kept = np.asarray(counts, dtype=np.float64) + T
    macs, _ = tofe_macs(cfg, stages, kept, selector=tcfg.learned_selector,
                        approximator=tcfg.uses_approximator, approx_reduction=tcfg.approx_reduction,
                        drop=not tcfg.reuses_tokens)
    if not tcfg.learned_selector:
        alive = [P] + counts[:-1] if not tcfg.reuses_tokens else [P] * len(counts)
        macs += sum(cls_attention_macs(n + T, cfg.embed_dim) for n in alive if n > 0)
    return float(macs)


def ratios_for_budget(cfg, tcfg, budget, base=None, iters=60):
    """Keep ratios (one per stage) whose ``topk`` MACs are ``budget`` (a fraction of dense MACs).

    base: the profile to scale (default ``tcfg.keep_ratios``). Raises ValueError when the budget is
    below what the method costs with a single patch per stage, or above keeping everything."""
    if not 0.0 < budget <= 1.5:
        raise ValueError(f"budget must be a fraction of the dense MACs in (0, 1.5], got {budget}")
    if tcfg.method in FAITHFUL_BASELINES:
        value = _baseline_value_for_budget(cfg, tcfg, budget, iters)
        return baseline_profile(tcfg, value, len(tcfg.resolved_stages(cfg.depth)))
    base = np.asarray(tcfg.keep_ratios if base is None else base, dtype=np.float64)
    if np.any(base <= 0) or np.any(base > 1):
        raise ValueError(f"base keep ratios must lie in (0, 1], got {base.tolist()}")
    P, dense = cfg.num_patches, dense_macs(cfg)
    lo_r = np.full_like(base, 1.0 / P)
    hi_r = np.ones_like(base)
    if topk_macs(cfg, tcfg, lo_r) > budget * dense:
        raise ValueError(f"budget {budget:.3f} is below the cheapest {tcfg.method} setting "
                         f"({topk_macs(cfg, tcfg, lo_r) / dense:.3f} of dense MACs)")
    if topk_macs(cfg, tcfg, hi_r) <= budget * dense:
        return tuple(hi_r.tolist())
    # up to the scale at which every stage saturates at 1 (ratios are clipped), so that any budget between
    # the cheapest setting and keep-all is reached, whatever the profile's shape
    lo, hi = 0.0, 1.0 / base.min()
    for _ in range(iters):                        # MACs are monotone in the scale
        mid = 0.5 * (lo + hi)
        r = np.clip(base * mid, 1.0 / P, 1.0)
        if topk_macs(cfg, tcfg, r) > budget * dense:
            hi = mid
        else:
            lo = mid
    return tuple(float(v) for v in np.clip(base * lo, 1.0 / P, 1.0))


def _baseline_value_for_budget(cfg, tcfg, budget, iters=60):
    """EViT's keep rate / DynamicViT's rho (in (0, 1]) whose ``topk`` MACs are ``budget`` x dense."""
    S, dense = len(tcfg.resolved_stages(cfg.depth)), dense_macs(cfg)
    macs = lambda x: topk_macs(cfg, tcfg, baseline_profile(tcfg, x, S))        # noqa: E731
    if macs(1e-9) > budget * dense:
        raise ValueError(f"budget {budget:.3f} is below the cheapest {tcfg.method} setting "
                         f"({macs(1e-9) / dense:.3f} of dense MACs)")
    if macs(1.0) <= budget * dense:
        return 1.0
    lo, hi = 1e-9, 1.0
    for _ in range(iters):                        # MACs are monotone in the keep rate / rho
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if macs(mid) > budget * dense else (mid, hi)
    return _inside_its_counts(cfg, tcfg, lo, S, iters)


def _inside_its_counts(cfg, tcfg, x, S, iters=60, sliver=1e-7):
    """The middle of the interval of keep rates / rhos that keep the same token counts as ``x``.

    The bisection stops a hair below the value at which a count steps up: rate * n lands within ~1e-9
    of a whole number (11.0000000005), exactly where minitofe's rule (the product rounded to 9 decimals
    first) and the authors' plain ceil / floor keep different counts. In the middle of the interval the
    product is far from every whole number, so both rules keep these counts and the MACs are unchanged
    (docs/baselines.md, "Keep counts"). Counts that only the 9-decimal rounding makes possible live on an
    interval ~1e-10 wide (16 rho, 16 rho^2, 16 rho^3 all step at rho = 1/2): then the next counts below,
    cheaper still, are taken."""
    while True:
        lo, hi = _count_interval(cfg, tcfg, x, S, iters)
        if hi - lo > sliver or lo <= 1e-9:
            return 0.5 * (lo + hi)
        x = lo - sliver


def _count_interval(cfg, tcfg, x, S, iters):
    """(lo, hi): the ends of the interval of values keeping the counts of ``x``, found by bisection."""
    counts = lambda v: baseline_token_counts(cfg, tcfg, baseline_profile(tcfg, v, S))   # noqa: E731
    want = counts(x)
    edges = []
    for lo, hi, inside_is_lo in ((1e-9, x, False), (x, 1.0, True)):
        if counts(lo if not inside_is_lo else hi) == want:      # the interval reaches the end of the range
            edges.append(lo if not inside_is_lo else hi)
            continue
        for _ in range(iters):                    # counts are monotone: keep one end inside, one outside
            mid = 0.5 * (lo + hi)
            same = counts(mid) == want
            lo, hi = (lo, mid) if same != inside_is_lo else (mid, hi)
        edges.append(hi if not inside_is_lo else lo)
    return edges


def evit_keep_rate(cfg, tcfg):
    """EViT's target keep rate: ``tcfg.evit_keep_rate``, or the one meeting ``tcfg.target_ratio``."""
    if tcfg.evit_keep_rate is not None:
        return float(tcfg.evit_keep_rate)
    return _baseline_value_for_budget(cfg, tcfg.replace(method="evit"), tcfg.target_ratio)


def dynamicvit_ratios(cfg, tcfg):
    """DynamicViT's keep ratios (rho, rho^2, ...) with ``tcfg.dvit_rho``, or the rho meeting
    ``tcfg.target_ratio``."""
    tcfg = tcfg.replace(method="dynamicvit")
    rho = (tcfg.dvit_rho if tcfg.dvit_rho is not None
           else _baseline_value_for_budget(cfg, tcfg, tcfg.target_ratio))
    return baseline_profile(tcfg, rho, len(tcfg.resolved_stages(cfg.depth)))
