"""Reduced inference (docs/method.md, "Keep path" and "Freeze path", inference).

At each stage every patch is scored (frozen ones too: that is what lets a token be *reused*), the kept
tokens are gathered (prefix tokens + K patches, original order), the stage's blocks run on them only and
the results are scattered back; frozen tokens go through the stage's approximator (``tofe``), are carried
unchanged (``tofe-identity``), or are dropped for good (``tofe-cumulative``: they are never candidates
again). A caller may score with its own ``scoring.Scorer`` instead of the learned selector (the
training-free methods of ``minitofe.methods`` do). ``topk`` keeps the same K = round(rho_i * P) in every
image; ``threshold`` keeps ``keep_prob > threshold`` per image and runs the blocks on a packed ragged batch.
With ``fuse_frozen`` the frozen patches of each image are fused into one token that runs with its kept
ones and is dropped after the stage's blocks (``fuse.py``).

Returns the logits and a record per stage of which patches were kept, frozen and reused (frozen at an
earlier stage, kept now; ``record.record_stage``, shared with training), with the realised MACs per
image (``macs.tofe_macs``). ``tofe_inference`` reads embed -> dense blocks -> per stage ``decide`` then
``run_stage`` -> head; ``ops`` holds the functions a stage runs on (``ops.REFERENCE`` or the caller's twins).
"""
import numpy as np

from .budget import fused_tokens, method_macs
from .config import is_sequence
from .fuse import with_fused_token
from .params import check_tofe_params
from .parts import approximator_of
from .macs import dense_macs
from .ops import resolve
from .record import new_record, record_stage
from .scoring import stage_ranges, stage_scores, topk_mask
from .tokens import mask_to_indices, ragged_indices
from ..backend import get_xp, to_numpy
from ..nn.embed import check_images, embed_forward, head_forward
from ..nn.params import check_params


def resolve_keep_ratios(tcfg, keep_ratios=None, learned=None):
    """Explicit ``keep_ratios`` > ratios learned in training (stored with the weights) > the config's."""
    for r in (keep_ratios, learned, tcfg.keep_ratios):
        if r is not None:
            if not is_sequence(r):
                raise TypeError(f"keep ratios must be a sequence (one per stage), "
                                f"got {type(r).__name__} {r!r}")
            r = tuple(float(v) for v in r)
            if any(not (0.0 < v <= 1.0) for v in r):
                raise ValueError(f"keep ratios must lie in (0, 1], got {r}")
            return r


def tofe_inference(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, check=True, ops=None,
                   scorer=None):
    """images: (B, Cin, Hh, W) -> logits (B, num_classes), info dict.

    ``keep_ratios`` overrides the config's rho_i for ``topk``; ``kept_masks`` (one bool (B, P) per stage)
    replaces the decision altogether (to replay a training mask, or another implementation's). info:

    ``kept``, ``frozen``, ``reused``: lists (one per stage) of bool (B, P) NumPy arrays;
    ``dropped`` (drop methods): patches gone for good; ``kept_counts`` (B, S) patch counts;
    ``keep_prob``: per-stage (B, P) scores; ``stage_outputs``: per-stage (B, N, C) tokens;
    ``macs`` (B,) realised MACs; ``macs_ratio`` (B,) of dense.
    ``ops`` holds the functions the blocks, gather/scatter and pack/unpack run on (None: the reference,
    ``ops.REFERENCE``; the caller may pass the Numba twins, ``kernels.ops(fast, like)``: same results up
    to float rounding). ``scorer``: a ``scoring.Scorer`` instead of the learned selector.
    """
    if check:
        check_images(images, cfg, check_params(params, cfg, extra_ok=("tofe.",)))
        check_tofe_params(params, cfg, tcfg)
    ops = resolve(ops)
    stages = tcfg.resolved_stages(cfg.depth)
    xp, B, P, drop = get_xp(images), images.shape[0], cfg.num_patches, not tcfg.reuses_tokens
    info = dict(new_record("dropped", "keep_prob", "stage_outputs"), stages=stages)
    x, _ = embed_forward(images, params, cfg)                                          # embed
    ratios = _stage_ratios(tcfg, keep_ratios, stages)
    x = ops.run_blocks(x, params, cfg, 0, stages[0])                                   # dense blocks
    alive = xp.ones((B, P), dtype=bool) if drop else None          # drop methods: not yet dropped
    ever_frozen, candidates = xp.zeros((B, P), dtype=bool), []
    for s, blocks in enumerate(stage_ranges(cfg, stages)):                             # stages
        candidates.append(P if alive is None else to_numpy(alive.sum(axis=1)))
        scores = stage_scores(x, params, cfg, tcfg, s, f"blocks.{blocks[0]}.", alive, ops, scorer)
        kept = decide(scores, s, alive, ratios, kept_masks, tcfg, scorer is None)      # (B, P) bool
        frozen, ever_frozen = record_stage(info, kept, drop, ever_frozen)
        x = run_stage(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, scores)
        info["dropped"].append(to_numpy(~kept) if alive is not None else np.zeros((B, P), bool))
        info["keep_prob"].append(to_numpy(scores))
        info["stage_outputs"].append(x)
        alive = kept if alive is not None else None
    logits, _ = head_forward(x, params, cfg, ops=ops)                                  # head
    kept_counts = np.stack([k.sum(axis=1) for k in info["kept"]], axis=1)              # (B, S)
    macs = realised_macs(cfg, tcfg, stages, kept_counts, candidates, scorer)
    info.update(kept_counts=kept_counts, macs=macs, macs_ratio=macs / dense_macs(cfg))
    return logits, info


def decide(scores, s, alive, ratios, kept_masks, tcfg, learned=True):
    """Stage s's kept patches (B, P) bool: the given ``kept_masks[s]``, ``keep_prob > threshold``
    (``threshold`` with a ``learned`` selector; any count per image) or the top K = round(rho_s * P)."""
    B, P = scores.shape
    if kept_masks is not None:
        kept = _given_mask(kept_masks, s, B, P, get_xp(scores))
        if alive is not None and bool((kept & ~alive).any()):
            raise ValueError(f"kept_masks[{s}] keeps a token that method {tcfg.method!r} already dropped")
        return kept
    if tcfg.inference == "threshold" and learned:
        kept = scores > tcfg.threshold
        return kept & alive if alive is not None else kept
    return topk_mask(scores, int(round(ratios[s] * P)), alive)


def run_stage(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob=None):
    """Stage s on x (B, N, C): the keep path runs the blocks (lo, hi) on the prefix and kept tokens only
    (gathered when every image keeps as many, else packed into one ragged batch) and writes them back;
    the freeze path puts the frozen tokens through the approximator (or leaves them) -> x_out (B, N, C).
    ``keep_prob`` (B, P): the selector's, to weight the fused frozen token (``tcfg.fuses_frozen``)."""
    xp, T, N = get_xp(x), cfg.num_prefix_tokens, x.shape[1]
    token_mask = xp.concatenate([xp.ones((x.shape[0], T), dtype=bool), kept], axis=1)     # (B, N)
    x_in = x
    if tcfg.fuses_frozen:                                   # token N: the fused frozen patches, if any
        x_in, token_mask = with_fused_token(x, token_mask, frozen, keep_prob, T)       # (B, N + 1, ...)
    counts = token_mask.sum(axis=1)
    if bool((counts == counts[0]).all()):
        idx = mask_to_indices(token_mask)                                              # (B, T + K [+ 1])
        h = ops.run_blocks(ops.gather_tokens(x_in, idx), params, cfg, *blocks)
        x_out = ops.scatter_tokens(x_in, h, idx)
    else:                                                             # ragged: pack real tokens only
        idx_list = ragged_indices(token_mask)
        h, offsets = ops.pack_rows(x_in, idx_list)
        for j in range(*blocks):
            h = ops.ragged_block_forward(h, offsets, params, f"blocks.{j}.", cfg.num_heads)
        x_out = ops.unpack_rows(x_in, h, idx_list, offsets)
    if x_out.shape[1] > N:                                  # the fused token is dropped after the blocks
        x_out = xp.ascontiguousarray(x_out[:, :N])
    if tcfg.approximated_stages(cfg.depth)[s] and bool(frozen.any()):
        rows = xp.nonzero(frozen)
        a, _ = approximator_of(tcfg).forward(x[rows[0], rows[1] + T], params, f"tofe.approx.{s}.", ops)
        x_out[rows[0], rows[1] + T] = a
    return x_out


def _stage_ratios(tcfg, keep_ratios, stages):
    ratios = resolve_keep_ratios(tcfg, keep_ratios)
    if len(ratios) != len(stages):
        raise ValueError(f"{len(stages)} stages but {len(ratios)} keep ratios {ratios}")
    return ratios


def _given_mask(kept_masks, s, B, P, xp):
    if len(kept_masks) <= s:
        raise ValueError(f"kept_masks has {len(kept_masks)} entries, stage {s} needs one")
    m = xp.asarray(kept_masks[s])
    if m.shape != (B, P) or m.dtype != bool:
        raise ValueError(f"kept_masks[{s}] must be bool of shape ({B}, {P}), got {m.dtype} {m.shape}")
    return m


def realised_macs(cfg, tcfg, stages, kept_counts, candidates, scorer=None):
    """MACs per image (B,) for patch counts (B, S); ``candidates[s]`` = tokens scored at stage s;
    ``scorer``: the caller's ``scoring.Scorer`` (its MACs), None: the learned selector."""
    T = cfg.num_prefix_tokens
    kept = kept_counts.astype(np.float64) + T
    fused = fused_tokens(tcfg, kept_counts < cfg.num_patches)      # (B, S) an image that froze a patch
    macs, _ = method_macs(cfg, tcfg, stages, kept, fused, scorer)
    if scorer is not None:                                    # the caller's scorer, on every candidate
        for n in candidates:                                  # nothing is scored once no patch is left
            n = np.asarray(n, dtype=np.float64)
            macs = macs + np.where(n > 0, scorer.macs(n + T, cfg.embed_dim), 0.0)
    return macs
