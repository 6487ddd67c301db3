"""How patch tokens are scored at a stage boundary, and how scores become a keep decision.

- ToFe: the stage's learned token selector, ``keep_prob`` (B, P);
- a method that scores without a learned selector hands its own ``Scorer`` to ``tofe_inference``: a
  function of the stage's input tokens (B, n, C) -> scores (B, n - T) and its MACs on n tokens
  (``minitofe.methods.cls_attention``: the class token's attention, used by ``idle`` and ``evit-drop``).
  Every candidate is scored, frozen ones too, so a frozen token can be reused.

Decisions: ``topk`` keeps the K highest-scoring candidates in every image (ties go to the lower index);
``threshold`` keeps the patches with ``keep_prob > threshold`` (a ragged batch).
"""
from typing import Callable, NamedTuple

from .parts import selector_of
from .selector import keep_probability
from .tokens import gather_tokens, mask_to_indices
from ..backend import get_xp


class Scorer(NamedTuple):
    """A training-free scorer: ``score(x, params, block_prefix, cfg)`` with x (B, n, C) the candidates
    (prefix tokens first) -> (B, n - T) scores; ``macs(n, C)``: its MACs on n candidate tokens."""
    score: Callable
    macs: Callable


def stage_ranges(cfg, stages):
    """[(first block, last block + 1)] for each stage; blocks before stages[0] run dense."""
    ends = list(stages[1:]) + [cfg.depth]
    return list(zip(stages, ends))


def stage_scores(x, params, cfg, tcfg, stage, block_prefix, alive=None, ops=None, scorer=None):
    """Keep scores (B, P) at the start of ``stage``; ``alive`` (B, P) bool limits the candidates (drop
    methods: only alive tokens are scored, and only they are computed on). Non-candidates score 0.
    ``ops``: the namespace the selector's LayerNorm and GELU run on (None: the reference); ``scorer``:
    a ``Scorer`` instead of the learned selector."""
    xp = get_xp(x)
    T = cfg.num_prefix_tokens
    if alive is None:
        if scorer is None:
            logits, _ = selector_of(tcfg).forward(x, params, f"tofe.selector.{stage}.", T, ops=ops)
            return keep_probability(logits[:, T:])
        return scorer.score(x, params, block_prefix, cfg)
    scores = xp.zeros(alive.shape, dtype=x.dtype)
    for b, rows in _same_count_groups(alive):                         # one group per distinct count
        if not bool(alive[b[0]].any()):
            continue                                                  # nothing left to score
        cand = xp.concatenate([xp.ones((len(b), T), dtype=bool), alive[b]], axis=1)
        idx = mask_to_indices(cand)                                   # (b, T + n) alive tokens only
        xs = gather_tokens(x[b], idx)
        if scorer is None:
            logits, _ = selector_of(tcfg).forward(xs, params, f"tofe.selector.{stage}.", T, ops=ops)
            sc = keep_probability(logits[:, T:])
        else:
            sc = scorer.score(xs, params, block_prefix, cfg)
        sub = xp.zeros((len(b), alive.shape[1]), dtype=x.dtype)
        sub[xp.arange(len(b))[:, None], idx[:, T:] - T] = sc
        scores[b] = sub
    return scores


def _same_count_groups(alive):
    """Split the batch into groups of images with the same number of alive tokens: [(indices, count)]."""
    xp = get_xp(alive)
    counts = alive.sum(axis=1)
    return [(xp.nonzero(counts == c)[0], int(c)) for c in sorted(set(int(v) for v in counts))]


def topk_mask(scores, K, alive=None):
    """scores: (B, P) -> bool (B, P) with the K best per image (only among ``alive`` when given)."""
    xp = get_xp(scores)
    B, P = scores.shape
    if alive is not None:
        scores = xp.where(alive, scores, -xp.inf)
    order = xp.argsort(-scores, axis=1, kind="stable")[:, :K]        # ties -> lower index first
    mask = xp.zeros((B, P), dtype=bool)
    mask[xp.arange(B)[:, None], order] = True
    if alive is not None:
        mask &= alive
    return mask
