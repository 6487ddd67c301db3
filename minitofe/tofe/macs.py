"""The ONE compute-cost function of minitofe (docs/method.md, "MACs"), used by the FLOPs loss, the benchmarks,
the notebooks and the README.

It counts multiply-accumulates (MACs): one ``a * b + c`` is one MAC, a matmul (n, k) @ (k, m) is n k m.
Papers usually call these "FLOPs" (DeiT-S "4.6 GFLOPs" is 4.6 G MACs); here they are named MACs
everywhere. Only matmuls are counted (LayerNorm, softmax, GELU, adds are O(nC), negligible), and the counts
are exact for the matmuls minitofe's code runs (a test counts them independently):

    block (n tokens)      qkv 3nC^2 + q@k^T n^2 C + A@v n^2 C + proj nC^2 + MLP 2 mlp_ratio nC^2
                          = (4 + 2 mlp_ratio) n C^2 + 2 n^2 C
    selector (n tokens)   n C (C/2) + n (2 (C/2)) (C/4) + n (C/4) 2          ~ 0.75 n C^2
    approximator (n)      n (C (C/r) + (C/r) C)                               = 2 n C^2 / r
    class-attention score n candidate tokens: class query C^2 + keys n C^2 + dot products n C
                          (evit-drop / idle scorer, ``methods/cls_attention.py``)
    DynamicViT predictor  n patch tokens: n (C C + C (C/2) + (C/2)(C/4) + (C/4) 2)  ~ 1.63 n C^2
    EViT reduction block  attention on the n tokens it receives ((4 n C^2 + 2 n^2 C): ``attention_macs``),
                          MLP on the n' it keeps (2 mlp_ratio n' C^2): the class attention it ranks by is
                          the block's own, so EViT has no scorer cost; the fused token is a weighted sum,
                          O(nC), not counted, and it counts as a token in every later block
    ToFe's fused frozen   option ``fuse_frozen``: a stage that froze a patch runs its blocks on the kept
    token                 tokens and one fused token, n + 1; the weighted sum that makes it is O(NC), not
                          counted (as EViT's)
    patch embedding       P C (in_chans p^2);   head  C num_classes (twice when distilled)

``tofe_macs`` takes the kept token counts per stage as FLOATS (from a straight-through mask sum), so the
FLOPs loss can differentiate through it; it returns the exact derivative as well.
"""
from ..backend import get_xp


def block_macs(n, C, mlp_ratio):
    """MACs of one transformer block on n tokens (n may be an array)."""
    return (4 + 2 * mlp_ratio) * n * C * C + 2 * n * n * C


def _dblock_macs_dn(n, C, mlp_ratio):
    return (4 + 2 * mlp_ratio) * C * C + 4 * n * C


def attention_macs(n, C):
    """MACs of a block's attention half (qkv, q k^T, A v, proj) on n tokens; the rest is ``mlp_macs``."""
    return 4 * n * C * C + 2 * n * n * C


def mlp_macs(n, C, mlp_ratio):
    """MACs of a block's MLP half on n tokens: block_macs(n) = attention_macs(n) + mlp_macs(n)."""
    return 2 * mlp_ratio * n * C * C


def predictor_macs(n, C):
    """MACs of one DynamicViT predictor on n patch tokens (``predictor.py``'s four matmuls)."""
    return n * C * C + n * C * (C // 2) + n * (C // 2) * (C // 4) + n * (C // 4) * 2


def selector_macs(n, C):
    """MACs of one token selector scoring n tokens (selector.py's three matmuls)."""
    return n * C * (C // 2) + n * (2 * (C // 2)) * (C // 4) + n * (C // 4) * 2


def approximator_macs(n, C, r):
    """MACs of one approximator on n tokens (approximator.py's two matmuls)."""
    return n * (C * (C // r) + (C // r) * C)


def cls_attention_macs(n, C):
    """MACs of scoring n candidate tokens (prefix included; n may be an array) by the class token's
    attention: the class token's query projection, n key projections, n query-key dot products."""
    return C * C + n * C * C + n * C


def patch_embed_macs(cfg):
    return cfg.num_patches * cfg.embed_dim * cfg.in_chans * cfg.patch_size ** 2


def head_macs(cfg):
    return cfg.embed_dim * cfg.num_classes * (2 if cfg.distilled else 1)


def dense_macs(cfg):
    """MACs of the dense ViT ``cfg`` (ViTConfig) on one image."""
    return (patch_embed_macs(cfg) + cfg.depth * block_macs(cfg.num_tokens, cfg.embed_dim, cfg.mlp_ratio)
            + head_macs(cfg))


def tofe_macs(cfg, stages, kept, *, selector=True, approximator=True, approx_reduction=4, drop=False,
              predictor=False, reduce_in_block=False, parts=None, fused=None):
    """Per-image MACs of a reduced ViT and their derivative with respect to ``kept``.

    cfg: ViTConfig; stages: S increasing block indices; kept: (B, S) or (S,) float token counts per stage
    INCLUDING prefix tokens. Blocks before stages[0] run on N tokens, stage i's blocks on kept[:, i].
    selector: one selector per stage scores N tokens, or with ``drop`` (DynamicViT: dropped tokens are
    gone) the tokens alive before the stage, kept[:, i-1] (N at stage 0). approximator: one per stage on
    the N - kept[:, i] frozen tokens; or S bools, which stages have one (``ToFeConfig.approximated_stages``:
    none at the last under ``last_stage="drop"``). (With ``drop``, a stage whose images have no patch left
    alive scores nothing.) predictor (DynamicViT): one per stage on the patch tokens alive before it (P,
    then kept[:, i-1] - T). reduce_in_block (EViT): stage i's first block runs its attention on the tokens
    it receives (N, then kept[:, i-1]) and its MLP on kept[:, i]. parts: (selector kind, approximator kind)
    (``tofe.part.Part``: their ``macs`` / ``dmacs``); None: ToFe's MLP selector and approximator, counted
    here. fused (ToFe's ``fuse_frozen``): (B, S) / (S,) 0 / 1, 1 where stage i froze a patch: its blocks
    run on kept[:, i] + 1 tokens (a constant: d/dkept at that count); it does not change what the
    approximators count. Returns (macs (B,) or (), dmacs_dkept (B, S) or (S,)).
    """
    xp = get_xp(kept)
    kept, stages = _checked(xp, kept, stages, cfg.depth)
    S, depth, N = len(stages), cfg.depth, cfg.num_tokens
    sel_macs, sel_dmacs, app_macs, app_dmacs = _part_costs(parts)
    approximated = _per_stage(approximator, S)
    single = kept.ndim == 1
    k = kept[None] if single else kept                                  # (B, S)
    extra = _fused_counts(xp, fused, k, reduce_in_block)                # (B, S) tokens besides the kept
    C, mr = cfg.embed_dim, cfg.mlp_ratio
    ends = stages[1:] + (depth,)
    macs = xp.full(k.shape[:1], float(patch_embed_macs(cfg) + head_macs(cfg)
                                      + stages[0] * block_macs(N, C, mr)), dtype=k.dtype)  # (B,)
    dmacs = xp.zeros_like(k)                                            # (B, S)
    for i in range(S):
        nb = ends[i] - stages[i]                                        # blocks in stage i
        if reduce_in_block:
            _reduction_block(macs, dmacs, k, i, N, C, mr)
            nb -= 1
        macs += nb * block_macs(k[:, i] + extra[:, i], C, mr)
        dmacs[:, i] += nb * _dblock_macs_dn(k[:, i] + extra[:, i], C, mr)
        if predictor:
            alive = k[:, i - 1] - cfg.num_prefix_tokens if i > 0 else cfg.num_patches
            macs += predictor_macs(alive, C)
            if i > 0:
                dmacs[:, i - 1] += predictor_macs(1, C)
        if selector:
            if drop and i > 0:
                # nothing is scored once every patch is gone (only prefix tokens alive)
                scored = xp.where(k[:, i - 1] > cfg.num_prefix_tokens, 1.0, 0.0)
                macs += scored * sel_macs(k[:, i - 1], C, approx_reduction)
                dmacs[:, i - 1] += scored * sel_dmacs(k[:, i - 1], C, approx_reduction)
            else:
                macs += sel_macs(N, C, approx_reduction)
        if approximated[i]:
            macs += app_macs(N - k[:, i], C, approx_reduction)
            dmacs[:, i] -= app_dmacs(N - k[:, i], C, approx_reduction)
    return (macs[0], dmacs[0]) if single else (macs, dmacs)


def _checked(xp, kept, stages, depth):
    """``tofe_macs``'s kept counts (as floats) and stages (as ints), or a ValueError naming the misfit."""
    kept = xp.asarray(kept)
    if kept.dtype.kind != "f":
        kept = kept.astype(xp.float64)
    stages = tuple(int(s) for s in stages)
    S = len(stages)
    if kept.ndim not in (1, 2) or kept.shape[-1] != S:
        raise ValueError(f"tofe_macs: kept must be (B, {S}) or ({S},) for stages {stages}, "
                         f"got shape {tuple(kept.shape)}")
    if S == 0 or stages[0] < 0 or stages[-1] >= depth or any(b <= a for a, b in zip(stages, stages[1:])):
        raise ValueError(f"tofe_macs: stages must be strictly increasing in [0, {depth}), got {stages}")
    return kept, stages


def _per_stage(approximator, S):
    """``tofe_macs``'s ``approximator``: one bool for every stage, or S of them -> a tuple of S bools."""
    if isinstance(approximator, (bool, int)):
        return (bool(approximator),) * S
    flags = tuple(bool(a) for a in approximator)
    if len(flags) != S:
        raise ValueError(f"tofe_macs: approximator must be a bool or {S} bools (one per stage), "
                         f"got {len(flags)}: {approximator!r}")
    return flags


def _fused_counts(xp, fused, k, reduce_in_block):
    """``fused`` as (B, S) floats of k's dtype (zeros when None); checked against k's shape."""
    if fused is None:
        return xp.zeros_like(k)
    if reduce_in_block:
        raise ValueError("tofe_macs: fused (ToFe's fused frozen token) and reduce_in_block (EViT's own "
                         "fusion) do not go together")
    extra = xp.asarray(fused).astype(k.dtype)
    if extra.ndim == 1:
        extra = extra[None]
    if extra.shape[-1] != k.shape[-1] or extra.shape[0] not in (1, k.shape[0]):
        raise ValueError(f"tofe_macs: fused must have the shape of kept {tuple(k.shape)}, got "
                         f"{tuple(xp.asarray(fused).shape)}")
    return xp.broadcast_to(extra, k.shape)


def _part_costs(parts):
    """(selector macs, its d/dn, approximator macs, its d/dn), each (n, C, r) -> MACs."""
    if parts is None:
        return (lambda n, C, r: selector_macs(n, C), lambda n, C, r: selector_macs(1, C),
                approximator_macs, lambda n, C, r: approximator_macs(1, C, r))
    sel, app = parts
    return sel.macs, sel.dmacs, app.macs, app.dmacs


def _reduction_block(macs, dmacs, k, i, N, C, mr):
    """EViT's stage-start block, in place: attention on the tokens it receives, MLP on those it keeps."""
    n_in = k[:, i - 1] if i > 0 else N
    macs += attention_macs(n_in, C) + mlp_macs(k[:, i], C, mr)
    if i > 0:
        dmacs[:, i - 1] += 4 * C * C + 4 * n_in * C
    dmacs[:, i] += 2 * mr * C * C
