"""The budget search of the authors' baselines (docs/method.md, "MACs"; docs/baselines.md, "Keep counts").

EViT and DynamicViT each have one number, EViT's keep rate r and DynamicViT's rho, and a method turns it
into per-stage keep ratios (its ``profile``: (r, r, r) and (rho, rho^2, rho^3)) and token counts (its
``counts``). ``value_for_budget`` finds, by bisection, the number whose ``topk`` MACs (the method's
``macs``, from ``tofe.macs.tofe_macs``) are the budget. A value it returns lies in the middle of the
interval of values that keep the same counts, never on the edge where minitofe's keep-count rule and the
authors' differ. ToFe's own search (a profile scaled by one factor) is ``tofe.budget.ratios_for_budget``.
"""
from types import SimpleNamespace

import numpy as np

from ..tofe.macs import dense_macs, tofe_macs


def rule(profile, counts, macs):
    """A baseline's budget rule: ``profile(x, S)`` -> ratios, ``counts(cfg, tcfg, ratios)`` -> tokens
    (prefix included) after each stage, ``macs(cfg, tcfg, ratios)`` -> MACs of one image."""
    return SimpleNamespace(profile=profile, counts=counts, macs=macs)


def macs_of_counts(cfg, tcfg, counts, **parts):
    """MACs of one image whose stages keep ``counts`` tokens (prefix included); ``parts``: the method's
    own terms of ``tofe_macs`` (``predictor``, ``reduce_in_block``); no ToFe selector or approximator."""
    kept = np.asarray(counts, dtype=np.float64)
    macs, _ = tofe_macs(cfg, tcfg.resolved_stages(cfg.depth), kept, selector=False, approximator=False,
                        **parts)
    return float(macs)


def value_for_budget(cfg, tcfg, budget, how, iters=60):
    """The keep rate / rho (in (0, 1]) whose ``topk`` MACs are ``budget`` x dense, for the rule ``how``."""
    S, dense = len(tcfg.resolved_stages(cfg.depth)), dense_macs(cfg)
    macs = lambda x: how.macs(cfg, tcfg, how.profile(x, S))                      # noqa: E731
    if macs(1e-9) > budget * dense:
        raise ValueError(f"budget {budget:.3f} is below the cheapest {tcfg.method} setting "
                         f"({macs(1e-9) / dense:.3f} of dense MACs)")
    if macs(1.0) <= budget * dense:
        return 1.0
    lo, hi = 1e-9, 1.0
    for _ in range(iters):                        # MACs are monotone in the keep rate / rho
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if macs(mid) > budget * dense else (mid, hi)
    return _inside_its_counts(cfg, tcfg, lo, S, how, iters)


def ratios_for_budget(cfg, tcfg, budget, how):
    """The per-stage ratios of the value meeting ``budget`` (a fraction of dense MACs in (0, 1.5])."""
    if not 0.0 < budget <= 1.5:
        raise ValueError(f"budget must be a fraction of the dense MACs in (0, 1.5], got {budget}")
    return how.profile(value_for_budget(cfg, tcfg, budget, how), len(tcfg.resolved_stages(cfg.depth)))


def _inside_its_counts(cfg, tcfg, x, S, how, iters=60, sliver=1e-7):
    """The middle of the interval of keep rates / rhos that keep the same token counts as ``x``.

    The bisection stops a hair below the value at which a count steps up: rate * n lands within ~1e-9
    of a whole number (11.0000000005), exactly where minitofe's rule (the product rounded to 9 decimals
    first) and the authors' plain ceil / floor keep different counts. In the middle of the interval the
    product is far from every whole number, so both rules keep these counts and the MACs are unchanged
    (docs/baselines.md, "Keep counts"). Counts that only the 9-decimal rounding makes possible live on an
    interval ~1e-10 wide (16 rho, 16 rho^2, 16 rho^3 all step at rho = 1/2): then the next counts below,
    cheaper still, are taken."""
    while True:
        lo, hi = _count_interval(cfg, tcfg, x, S, how, iters)
        if hi - lo > sliver or lo <= 1e-9:
            return 0.5 * (lo + hi)
        x = lo - sliver


def _count_interval(cfg, tcfg, x, S, how, iters):
    """(lo, hi): the ends of the interval of values keeping the counts of ``x``, found by bisection."""
    counts = lambda v: how.counts(cfg, tcfg, how.profile(v, S))                  # noqa: E731
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
