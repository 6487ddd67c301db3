"""DynamicViT's rho for a MACs budget (method ``dynamicvit``; docs/method.md, "MACs").

One number, rho: stage s keeps ``dynamicvit_predictor.patches_to_keep(rho^(s+1), P, n)`` of the n patches
still there, so its keep ratios are (rho, rho^2, rho^3). ``dynamicvit_ratios`` uses the configured rho,
or the one meeting ``target_ratio`` (``rate_search``) when the config leaves it None.
"""
from .dynamicvit_predictor import patches_to_keep
from .rate_search import macs_of_counts, rule, value_for_budget


def dynamicvit_profile(x, S):
    """The per-stage keep ratios of rho = x: (x, x^2, ...)."""
    return tuple(float(x) ** (s + 1) for s in range(S))


def dynamicvit_token_counts(cfg, tcfg, ratios):
    """Tokens (prefix included) after each stage's reduction in ``topk`` inference."""
    T, P = cfg.num_prefix_tokens, cfg.num_patches
    alive, counts = P, []
    for r in ratios:
        alive = patches_to_keep(r, P, alive)
        counts.append(T + alive)
    return counts


def dynamicvit_topk_macs(cfg, tcfg, ratios):
    """MACs of one image at per-stage ratios ``ratios`` (fractions of P), the predictors included."""
    return macs_of_counts(cfg, tcfg, dynamicvit_token_counts(cfg, tcfg, ratios), predictor=True)


DYNAMICVIT_RULE = rule(dynamicvit_profile, dynamicvit_token_counts, dynamicvit_topk_macs)


def dynamicvit_ratios(cfg, tcfg):
    """DynamicViT's keep ratios (rho, rho^2, ...) with ``tcfg.dvit_rho``, or the rho meeting
    ``tcfg.target_ratio``."""
    tcfg = tcfg.replace(method="dynamicvit")
    rho = (tcfg.dvit_rho if tcfg.dvit_rho is not None
           else value_for_budget(cfg, tcfg, tcfg.target_ratio, DYNAMICVIT_RULE))
    return dynamicvit_profile(rho, len(tcfg.resolved_stages(cfg.depth)))
