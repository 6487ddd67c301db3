"""What reused tokens do (docs/study-reused-tokens.md): a traced re-run of ToFe inference, the attention
kept tokens pay to reused ones, where reused tokens sit, and interventions on their values.

``traced_forward`` re-runs ``tofe_inference``'s ``topk`` path (same K in every image) stage by stage with
the reference layers: the kept tokens are gathered, the stage's blocks run with ``block_forward`` (whose
caches hold the attention probabilities), the frozen tokens go through the approximator (or are carried
unchanged: ``freeze="identity"``). With no intervention its logits equal ``predict``'s bit for bit.
An intervention replaces, at the input of stage s (after the decision, before the blocks), chosen patch
tokens by given values; the decisions are then replayed from ``kept_masks`` so only the values change.
Shapes: B images, P patches, T prefix tokens, N = T + P, K kept patches, n = T + K, H heads, C channels.
"""
import numpy as np

from ..nn.block import block_forward, run_blocks
from ..nn.embed import embed_forward, head_forward
from ..tofe.inference import decide, resolve_keep_ratios
from ..tofe.parts import approximator_of
from ..tofe.record import new_record, record_stage
from ..tofe.scoring import stage_ranges, stage_scores
from ..tofe.tokens import gather_tokens, mask_to_indices, scatter_tokens

GROUPS = ("cls", "reused", "other")     # key groups of the attention shares: prefix, reused, other kept


def traced_forward(model, images, keep_ratios=None, freeze="approximator", kept_masks=None, replace=None):
    """images (B, Cin, H, W) -> logits (B, classes), trace. ``freeze``: "approximator" (as trained) or
    "identity" (frozen tokens carried unchanged; the decisions follow the tokens that path produces).
    ``kept_masks``: one bool (B, P) per stage to replay instead of deciding. ``replace``: None or one entry
    per stage, None or (mask (B, P) bool, values (B, N, C)): the masked patch tokens set to ``values``
    at the stage's input. trace: ``kept`` / ``frozen`` / ``reused`` (lists of (B, P) bool), ``inputs``
    (the stage inputs (B, N, C) after any replacement), ``attention`` (per stage, per block (B, H, n, n),
    rows = queries, over the gathered tokens), ``idx`` (per stage (B, n) the gathered token positions)."""
    if freeze not in ("approximator", "identity"):
        raise ValueError(f"freeze must be 'approximator' or 'identity', got {freeze!r}")
    cfg, tcfg, params = model.cfg, model.tofe, model.params
    if tcfg.fuses_frozen:
        raise ValueError("traced_forward re-runs plain ToFe inference; this model fuses its frozen tokens "
                         "(fuse_frozen), which the trace does not follow")
    stages, T = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens
    learned = model.learned_keep_ratios if tcfg.learned_ratios else None
    ratios = resolve_keep_ratios(tcfg, keep_ratios, learned)
    x, _ = embed_forward(images, params, cfg)
    x = run_blocks(x, params, cfg, 0, stages[0])
    trace = dict(new_record("inputs", "attention", "idx"))
    ever = np.zeros((len(images), cfg.num_patches), dtype=bool)
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        scores = stage_scores(x, params, cfg, tcfg, s, f"blocks.{lo}.")
        kept = decide(scores, s, None, ratios, kept_masks, tcfg)
        frozen, ever = record_stage(trace, kept, False, ever)
        if replace is not None and replace[s] is not None:
            mask, values = replace[s]
            x = x.copy()
            b, p = np.nonzero(mask)
            x[b, p + T] = values[b, p + T]
        trace["inputs"].append(x)
        idx = mask_to_indices(np.concatenate([np.ones((len(x), T), dtype=bool), kept], axis=1))
        h, probs = gather_tokens(x, idx), []
        for j in range(lo, hi):
            h, cache = block_forward(h, params, f"blocks.{j}.", cfg.num_heads)
            probs.append(cache.c_attn[6])            # (B, H, n, n): attention_forward's A
        out = scatter_tokens(x, h, idx)
        if freeze == "approximator" and tcfg.approximated_stages(cfg.depth)[s] and bool(frozen.any()):
            b, p = np.nonzero(frozen)
            out[b, p + T], _ = approximator_of(tcfg).forward(x[b, p + T], params, f"tofe.approx.{s}.")
        trace["attention"].append(probs)
        trace["idx"].append(idx)
        x = out
    logits, _ = head_forward(x, params, cfg)
    return logits, trace


def dense_stage_inputs(model, images):
    """The model's own backbone run dense: the tokens (B, N, C) at the input of each stage (a list)."""
    cfg = model.cfg
    stages = model.tofe.resolved_stages(cfg.depth)
    x, _ = embed_forward(images, model.params, cfg)
    out, at = [], 0
    for lo in stages:
        x = run_blocks(x, model.params, cfg, at, lo)
        out.append(x)
        at = lo
    return out


def attention_shares(probs, idx, reused, T):
    """One stage's attention over its gathered tokens, split by key group (``GROUPS``: prefix tokens,
    reused patches, other kept patches), self excluded. probs: list of (B, H, n, n) (one per block);
    idx (B, n) gathered positions; reused (B, P) bool. Returns {query group: {"mass": (3,) the mean share
    of the query's attention (self excluded, renormalised) per key group, summing to 1; "uniform": (3,)
    the share each group would get under uniform attention; "n": (query, head, block) rows counted}};
    query groups are ``GROUPS`` too. Only images with at least one reused patch gathered count."""
    B, n = idx.shape
    is_patch = idx >= T
    key_reused = np.zeros((B, n), dtype=bool)
    b, k = np.nonzero(is_patch)
    key_reused[b, k] = reused[b, idx[b, k] - T]
    group = np.where(~is_patch, 0, np.where(key_reused, 1, 2))                  # (B, n)
    onehot = (group[..., None] == np.arange(3)).astype(np.float64)              # (B, n, 3)
    has = key_reused.any(axis=1)
    eye = np.eye(n, dtype=bool)
    res = {g: {"mass": np.zeros(3), "uniform": np.zeros(3), "n": 0} for g in GROUPS}
    for A in probs:
        A = np.where(eye, 0.0, A.astype(np.float64))                            # (B, H, n, n) self out
        A = A / A.sum(axis=-1, keepdims=True)
        mass = A @ onehot[:, None]                                              # (B, H, n, 3)
        uni = (onehot.sum(axis=1)[:, None, :] - onehot) / (n - 1)               # (B, n, 3) self out
        for gi, g in enumerate(GROUPS):
            sel = (group == gi) & has[:, None]                                  # (B, n) queries
            if not sel.any():
                continue
            res[g]["mass"] += mass.transpose(0, 2, 1, 3)[sel].sum(axis=(0, 1))
            res[g]["uniform"] += uni[sel].sum(axis=0) * A.shape[1]
            res[g]["n"] += int(sel.sum()) * A.shape[1]
    for g in GROUPS:
        if res[g]["n"]:
            res[g]["mass"] = res[g]["mass"] / res[g]["n"]
            res[g]["uniform"] = res[g]["uniform"] / res[g]["n"]
    return res


def background_patches(raw, patch, threshold=0.1):
    """raw: (B, 1, H, W) pixels in [0, 1] -> (B, P) bool, patches whose mean pixel is below ``threshold``
    (patches in row-major order, as the patch embedding makes them)."""
    B, _, H, W = raw.shape
    m = raw.mean(axis=1).reshape(B, H // patch, patch, W // patch, patch).mean(axis=(2, 4))
    return (m < threshold).reshape(B, -1)


def reuse_maps(reused, labels, num_classes, grid):
    """reused: list (per stage) of (B, P) bool, labels (B,) -> (counts (num_classes + 1, g, g) of reuse
    events per patch, summed over stages: one map per class and the last over all images; images
    (num_classes + 1,) per map). Divide counts by images for the reuse frequency per image."""
    total = np.sum([r.astype(np.int64) for r in reused], axis=0)                # (B, P)
    counts = np.zeros((num_classes + 1, grid * grid), dtype=np.int64)
    np.add.at(counts, labels, total)
    counts[-1] = total.sum(axis=0)
    images = np.append(np.bincount(labels, minlength=num_classes), len(labels))
    return counts.reshape(num_classes + 1, grid, grid), images


def matched_masks(kept, reused, rng):
    """Per image, n = min(reused, kept non-reused) patches drawn at random from each: (reused subset,
    control), two (B, P) bool with the same count per image. kept, reused: (B, P) bool."""
    sub, ctrl = np.zeros_like(reused), np.zeros_like(reused)
    for b in range(len(kept)):
        pool, mine = np.flatnonzero(kept[b] & ~reused[b]), np.flatnonzero(reused[b])
        n = min(len(pool), len(mine))
        if n:
            sub[b, rng.choice(mine, size=n, replace=False)] = True
            ctrl[b, rng.choice(pool, size=n, replace=False)] = True
    return sub, ctrl


def intervention_logits(model, images, trace, masks, values):
    """Logits (B, classes) with the decisions of ``trace`` (a ``traced_forward`` trace) replayed and, at
    the input of each stage s, the patches in ``masks[s]`` (B, P) bool set to ``values[s]`` (B, N, C) at
    the same positions (e.g. ``dense_stage_inputs``, zeros, or ``trace["inputs"]``: nothing changes)."""
    replace = [(m, v) for m, v in zip(masks, values)]
    logits, _ = traced_forward(model, images, freeze="approximator", kept_masks=trace["kept"],
                               replace=replace)
    return logits


def logit_change(ref, new):
    """ref, new: (B, classes) logits -> {"agree": share of images whose top-1 is unchanged, "abs": mean
    |logit change|, "kl": mean KL(softmax(ref) || softmax(new))}."""
    ref, new = ref.astype(np.float64), new.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = new - new.max(-1, keepdims=True)
    lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
    return {"agree": float((ref.argmax(-1) == new.argmax(-1)).mean()), "abs": float(np.abs(new - ref).mean()),
            "kl": float((np.exp(lp) * (lp - lq)).sum(-1).mean())}
