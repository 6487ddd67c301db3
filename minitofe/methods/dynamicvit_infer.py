"""DynamicViT's inference (method ``dynamicvit``; docs/method.md, "Baselines").

It really removes tokens: what a stage drops is gone for the rest of the network, so the tokens are
gathered once per stage and never scattered back. Stage s keeps the
``dynamicvit_predictor.patches_to_keep(ratio_s, P, n)`` tokens with the highest keep probability among
the n still there (ratios rho^(s+1) by default, ``dynamicvit_budget.dynamicvit_ratios``). It decides by
top-K only (the authors' rule).
"""
import numpy as np

from .dynamicvit_budget import dynamicvit_ratios
from ..tofe.macs import dense_macs, tofe_macs
from ..tofe.ops import resolve
from .dynamicvit_predictor import patches_to_keep, predictor_forward
from ..tofe.scoring import stage_ranges
from ..tofe.tokens import gather_tokens, values_at_positions
from ..backend import get_xp, to_numpy
from ..nn.embed import embed_forward, head_forward


def dynamicvit_inference(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, ops=None):
    """images: (B, Cin, Hh, W) -> logits (B, K), info (``tofe_inference``'s keys). ``keep_ratios``: the
    fraction of the P patches each stage keeps (default rho, rho^2, ...); ``kept_masks``: one bool (B, P)
    per stage replacing the decision (same count in every image; a token dropped earlier cannot be kept)."""
    if not cfg.class_token or cfg.global_pool != "token":
        raise ValueError("method 'dynamicvit' needs a class-token head "
                         "(class_token=True, global_pool='token')")
    xp = get_xp(images)
    run = resolve(ops).run_blocks
    stages = tcfg.resolved_stages(cfg.depth)
    ratios = tuple(keep_ratios) if keep_ratios is not None else dynamicvit_ratios(cfg, tcfg)
    if len(ratios) != len(stages):
        raise ValueError(f"{len(stages)} stages but {len(ratios)} keep ratios {ratios}")
    B, T, P = images.shape[0], cfg.num_prefix_tokens, cfg.num_patches
    x, _ = embed_forward(images, params, cfg)
    x = run(x, params, cfg, 0, stages[0])
    positions = xp.broadcast_to(xp.arange(P), (B, P))                 # original index of each patch token
    info = {"kept": [], "dropped": [], "keep_prob": [], "stage_outputs": [], "stages": stages}
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        n = x.shape[1] - T
        logp, _ = predictor_forward(x[:, T:], params, f"tofe.predictor.{s}.", xp.ones((B, n), dtype=x.dtype))
        keep_prob = xp.exp(logp[..., 0])                               # (B, n)
        chosen = _replayed(kept_masks, s, positions, B, P, xp) if kept_masks is not None else None
        top = _top_tokens(keep_prob, ratios[s], P, chosen)            # (B, K) ascending
        x = gather_tokens(x, xp.concatenate([xp.broadcast_to(xp.arange(T), (B, T)), top + T], axis=1))
        info["keep_prob"].append(to_numpy(values_at_positions(keep_prob, positions, P)))
        positions = xp.take_along_axis(positions, top, axis=1)
        x = run(x, params, cfg, lo, hi)
        kept = to_numpy(values_at_positions(xp.ones(positions.shape, dtype=bool), positions, P))
        info["kept"].append(kept)
        info["dropped"].append(~kept)
        info["stage_outputs"].append(x)
    logits, _ = head_forward(x, params, cfg)
    kept_counts = np.stack([k.sum(axis=1) for k in info["kept"]], axis=1)           # (B, S)
    macs, _ = tofe_macs(cfg, stages, kept_counts.astype(np.float64) + T, selector=False, approximator=False,
                        predictor=True)
    none = [np.zeros_like(k) for k in info["kept"]]
    info.update(frozen=none, reused=none, kept_counts=kept_counts, macs=macs,
                macs_ratio=macs / dense_macs(cfg))
    return logits, info


def _top_tokens(keep_prob, ratio, P, chosen=None):
    """Current indices (B, K), ascending, of the tokens a stage keeps: the ``patches_to_keep`` most
    probable, or the ``chosen`` ones (bool (B, n), the same count per image)."""
    xp = get_xp(keep_prob)
    if chosen is None:
        K = patches_to_keep(ratio, P, keep_prob.shape[1])
        return xp.sort(xp.argsort(-keep_prob, axis=1, kind="stable")[:, :K], axis=1)
    counts = chosen.sum(axis=1)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise ValueError(f"kept_masks for dynamicvit must keep the same number (> 0) of patches in every "
                         f"image, got {counts.tolist()}")
    return xp.argsort(~chosen, axis=1, kind="stable")[:, :int(counts[0])]


def _replayed(kept_masks, s, positions, B, P, xp):
    """kept_masks[s] (B, P) at the current tokens' positions -> (B, n) bool; refuses reviving a token."""
    if len(kept_masks) <= s:
        raise ValueError(f"kept_masks has {len(kept_masks)} entries, stage {s} needs one")
    m = xp.asarray(kept_masks[s])
    if m.shape != (B, P) or m.dtype != bool:
        raise ValueError(f"kept_masks[{s}] must be bool of shape ({B}, {P}), got {m.dtype} {m.shape}")
    chosen = xp.take_along_axis(m, positions, axis=1)
    if int(chosen.sum()) != int(m.sum()):
        raise ValueError(f"kept_masks[{s}] keeps a token that method 'dynamicvit' already dropped")
    return chosen
