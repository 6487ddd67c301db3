"""EViT's keep rate for a MACs budget (method ``evit``; docs/method.md, "MACs").

One number, the keep rate r: every stage keeps ceil(r * n) of its n candidates (``evit_block.keep_count``)
plus the fused token, so its keep ratios are (r, r, r). ``evit_keep_rate`` returns the configured rate,
or the one meeting ``target_ratio`` (``rate_search``) when the config leaves it None.
"""
from .evit_block import keep_count
from .rate_search import macs_of_counts, rule, value_for_budget


def evit_profile(x, S):
    """The per-stage keep ratios of keep rate x: (x,) * S."""
    return tuple(float(x) for _ in range(S))


def evit_token_counts(cfg, tcfg, ratios):
    """Tokens (prefix and fused token included) after each stage's reduction in ``topk`` inference."""
    alive, counts = cfg.num_patches, []
    for r in ratios:
        K = keep_count(r, alive)
        alive = K + int(tcfg.evit_fuse and K < alive)
        counts.append(cfg.num_prefix_tokens + alive)
    return counts


def evit_topk_macs(cfg, tcfg, ratios):
    """MACs of one image at per-stage keep rates ``ratios``: the reduction block attends over the tokens
    it receives and runs its MLP on those it keeps."""
    return macs_of_counts(cfg, tcfg, evit_token_counts(cfg, tcfg, ratios), reduce_in_block=True)


EVIT_RULE = rule(evit_profile, evit_token_counts, evit_topk_macs)


def evit_keep_rate(cfg, tcfg):
    """EViT's target keep rate: ``tcfg.evit_keep_rate``, or the one meeting ``tcfg.target_ratio``."""
    if tcfg.evit_keep_rate is not None:
        return float(tcfg.evit_keep_rate)
    return value_for_budget(cfg, tcfg.replace(method="evit"), tcfg.target_ratio, EVIT_RULE)
