"""How each method scores patch tokens at a stage boundary, and how scores become a keep decision.

- learned methods (``tofe*``, ``dynamicvit``): the stage's token selector, ``keep_prob`` (B, P);
- ``evit`` and ``idle``: the class token's attention to each patch in the stage's first block, averaged
  over heads, with every candidate token as a key (EViT's score). For ``idle`` the candidates are all
  tokens, frozen ones included, so a frozen token can be reused; for ``evit`` they are the tokens still
  alive. [ours: computed with the stage's first block so frozen tokens are scored too; its MACs are
  counted by ``macs.cls_attention_macs``.]

Decisions: ``topk`` keeps the K highest-scoring candidates in every image (ties go to the lower index);
``threshold`` keeps the patches with ``keep_prob > threshold`` (a ragged batch).
"""
from .selector import keep_probability, selector_forward
from .tokens import gather_tokens, mask_to_indices
from ..nn.layers import layernorm_forward, softmax_forward
from ..backend import get_xp


def stage_ranges(cfg, stages):
    """[(first block, last block + 1)] for each stage; blocks before stages[0] run dense."""
    ends = list(stages[1:]) + [cfg.depth]
    return list(zip(stages, ends))


def cls_attention_scores(x, params, block_prefix, cfg):
    """x: (B, n, C) -> (B, n - T): mean over heads of the class token's attention to each patch, every
    token given as a key."""
    B, n, C = x.shape
    H, hs, T = cfg.num_heads, C // cfg.num_heads, cfg.num_prefix_tokens
    h, _ = layernorm_forward(x, params[block_prefix + "norm1.weight"], params[block_prefix + "norm1.bias"])
    w = params[block_prefix + "attn.qkv.weight"]                      # (3C, C): rows [q; k; v]
    b = params.get(block_prefix + "attn.qkv.bias")
    q = h[:, 0] @ w[:C].T                                             # (B, C) class-token query
    k = h @ w[C:2 * C].T                                              # (B, n, C)
    if b is not None:
        q = q + b[:C]
        k = k + b[C:2 * C]
    q = q.reshape(B, H, 1, hs)
    k = k.reshape(B, n, H, hs).transpose(0, 2, 3, 1)                   # (B, H, hs, n)
    s = (q @ k)[:, :, 0] * hs ** -0.5                                 # (B, H, n)
    attn, _ = softmax_forward(s)
    return attn.mean(axis=1)[:, T:]


def stage_scores(x, params, cfg, tcfg, stage, block_prefix, alive=None, ops=None):
    """Keep scores (B, P) at the start of ``stage``; ``alive`` (B, P) bool limits the candidates (drop
    methods: only alive tokens are scored, and only they are computed on). Non-candidates score 0.
    ``ops``: the namespace the selector's LayerNorm and GELU run on (None: the reference)."""
    xp = get_xp(x)
    T = cfg.num_prefix_tokens
    if alive is None:
        if tcfg.learned_selector:
            logits, _ = selector_forward(x, params, f"tofe.selector.{stage}.", T, ops=ops)
            return keep_probability(logits[:, T:])
        return cls_attention_scores(x, params, block_prefix, cfg)
    scores = xp.zeros(alive.shape, dtype=x.dtype)
    for b, rows in _same_count_groups(alive):                         # one group per distinct count
        if not bool(alive[b[0]].any()):
            continue                                                  # nothing left to score
        cand = xp.concatenate([xp.ones((len(b), T), dtype=bool), alive[b]], axis=1)
        idx = mask_to_indices(cand)                                   # (b, T + n) alive tokens only
        xs = gather_tokens(x[b], idx)
        if tcfg.learned_selector:
            logits, _ = selector_forward(xs, params, f"tofe.selector.{stage}.", T, ops=ops)
            sc = keep_probability(logits[:, T:])
        else:
            sc = cls_attention_scores(xs, params, block_prefix, cfg)
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
