"""Checks for notebook 04's and 05's exercises: the MACs of one stage, the budget loss and its gradient in
the kept counts, and the ``topk`` / ``threshold`` keep decisions (docs/method.md "MACs", "Losses", "Token
selector" / Inference). The references are ``macs.tofe_macs`` (the one cost function), ``losses`` and
``scoring.topk_mask``."""
import numpy as np

from ..config import ViTConfig
from ..tofe.losses import flops_loss_backward, flops_loss_forward
from ..tofe.macs import (approximator_macs, block_macs, dense_macs, head_macs, patch_embed_macs,
                         selector_macs, tofe_macs)
from ..tofe.scoring import topk_mask
from .calls import call, exercise
from .verdict import as_array, fmt, parts, same, same_as_finite_differences, search


def macs_of_one_stage(n, grid, C, mlp_ratio, num_blocks, r):
    """The stage's MACs read off ``tofe_macs``: a ViT of ``num_blocks`` blocks that is all one stage
    (N = grid^2 + 1 tokens), minus its patch embedding and head."""
    cfg = ViTConfig(img_size=grid, patch_size=1, in_chans=1, num_classes=1, embed_dim=C, depth=num_blocks,
                    num_heads=1, mlp_ratio=mlp_ratio)
    macs, _ = tofe_macs(cfg, (0,), np.array([float(n)]), approx_reduction=r)
    return float(macs) - patch_embed_macs(cfg) - head_macs(cfg)


def _stage_mistakes(n, N, C, mlp_ratio, num_blocks, r):
    """[(cause, MACs a common mistake adds)], the arguments named in each cause."""
    named = f" (n={n}, N={N}, C={C}, mlp_ratio={mlp_ratio}, num_blocks={num_blocks}, r={r})"
    extras = [
        ("the attention matmuls q k^T and A v (2 n^2 C per block) are missing", -num_blocks * 2 * n * n * C),
        ("the selector is missing (one per stage, on all N tokens)", -selector_macs(N, C)),
        ("the selector scores all N tokens, not only the n kept", selector_macs(n, C) - selector_macs(N, C)),
        ("the selector's second layer reads v = [u, g], C/2 + C/2 = C wide, not C/2",
         -N * (C // 2) * (C // 4)),
        ("the approximator is missing (on the N - n frozen tokens)", -approximator_macs(N - n, C, r)),
        ("the approximator runs on the N - n frozen tokens, not on the n kept",
         approximator_macs(n, C, r) - approximator_macs(N - n, C, r)),
        ("the stage's blocks ran on all N tokens; they run on the n kept tokens only",
         num_blocks * (block_macs(N, C, mlp_ratio) - block_macs(n, C, mlp_ratio))),
        ("the MLP (2 mlp_ratio n C^2 per block) is missing", -num_blocks * 2 * mlp_ratio * n * C * C),
        ("one block counted, not num_blocks", -(num_blocks - 1) * block_macs(n, C, mlp_ratio))]
    return [(why + named, extra) for why, extra in extras if extra != 0]


def _stage_agrees(stage_macs, n, grid, C, mlp_ratio, num_blocks, r):
    N = grid * grid + 1
    want = macs_of_one_stage(n, grid, C, mlp_ratio, num_blocks, r)
    args = dict(n=n, N=N, C=C, mlp_ratio=mlp_ratio, num_blocks=num_blocks, r=r)
    got = call(stage_macs, **args)

    def explain(_):
        return f" for {', '.join(f'{k}={v}' for k, v in args.items())}"
    same("stage_macs", got, np.asarray(want), rtol=1e-9, atol=0.5, explain=explain,
         mistakes=[(why, want + extra) for why, extra in _stage_mistakes(**args)])


@exercise("stage_macs", replaces=(block_macs, selector_macs, approximator_macs, tofe_macs, dense_macs,
                                 macs_of_one_stage, "minitofe.tofe.macs.attention_macs",
                                 "minitofe.tofe.macs.mlp_macs"))
def check_stage_macs(stage_macs):
    """stage_macs(n, N, C, mlp_ratio, num_blocks, r) -> MACs, against ``tofe_macs``."""
    _stage_agrees(stage_macs, n=99, grid=14, C=384, mlp_ratio=4.0, num_blocks=3, r=4)   # a DeiT-S stage
    sizes = {"grid": (1, 6), "kept": (0, 36), "c8": (1, 6), "mlp": (1, 4), "blocks": (1, 4), "r": (0, 1)}
    test = lambda c: _stage_agrees(stage_macs, 1 + min(c["kept"], c["grid"] ** 2), c["grid"], 8 * c["c8"],
                                   float(c["mlp"]), c["blocks"], (2, 4)[c["r"]])
    tried = search(sizes, test, examples=40)                             # the message names the arguments
    return f"stage_macs equals what tofe_macs counts, on a DeiT-S stage and on {tried}"


SMALL = ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2)
STAGES = (1, 2, 3)


def budget_reference(kept, cfg, stages, target, lam):
    """L_flops and dL/dkept from ``tofe_macs``, ``flops_loss_forward`` and ``flops_loss_backward``."""
    macs, dmacs = tofe_macs(cfg, stages, kept)
    dense = dense_macs(cfg)
    loss, cache = flops_loss_forward(macs / dense, target, lam)
    return loss, flops_loss_backward(1.0, cache)[:, None] * dmacs / dense


def _budget_agrees(budget_loss, kept, target, lam, finite_differences):
    loss_want, dkept_want = budget_reference(kept, SMALL, STAGES, target, lam)
    loss, dkept = parts(call(budget_loss, kept, SMALL, STAGES, target, lam), ("loss", "dkept"))
    B, dense = kept.shape[0], dense_macs(SMALL)
    macs, dmacs = tofe_macs(SMALL, STAGES, kept)
    dev = macs / dense - target                                                   # (B,) per image
    same("loss", loss, np.asarray(loss_want), rtol=1e-9, atol=1e-12, mistakes=[
        ("the loss squares each image's deviation and averages; L_flops squares the deviation of the batch "
         "mean R", lam * (dev ** 2).mean()),
        ("the loss misses lam", loss_want / lam),
        ("the loss uses MACs, not the ratio R = MACs / dense MACs", lam * ((macs.mean() - target) ** 2))])
    factor = lambda f, why: (f"off by a factor {fmt(f)} everywhere: {why}", dkept_want * f)
    same("dkept", dkept, dkept_want, mistakes=[
        factor(B, "the loss uses the batch MEAN of the ratios: divide by B"),
        factor(1 / B, "divided by B once too often"), factor(-1, "the sign is flipped"),
        factor(dense, "R is MACs / dense MACs: divide dMACs/dkept by the dense MACs"),
        factor(0.5, "the factor 2 of the square is missing"),
        ("each image's gradient uses its own deviation R_b - target; every image's R enters through the "
         "batch mean, so each gets 2 lam (mean R - target) / B",
         (2 * lam * dev / B)[:, None] * dmacs / dense)])
    if finite_differences:
        loss_fn = lambda: float(budget_reference(kept, SMALL, STAGES, target, lam)[0])
        same_as_finite_differences("dkept", dkept, loss_fn, kept, rtol=1e-4)


def _budget_case(case):
    rng = np.random.default_rng(case["seed"])
    T, N = SMALL.num_prefix_tokens, SMALL.num_tokens
    kept = rng.uniform(T, N, (case["B"], len(STAGES)))
    return kept, (0.3, 0.5, 0.8)[case["target"]], (0.5, 2.0)[case["lam"]]


@exercise("budget_loss", replaces=(flops_loss_forward, flops_loss_backward, budget_reference,
                                  "minitofe.tofe.budget_loss.budget_loss_forward",
                                  "minitofe.tofe.budget_loss.budget_loss_backward"))
def check_budget_loss(budget_loss):
    """budget_loss(kept, cfg, stages, target, lam) -> (loss, dkept), against finite differences and the
    package's ``tofe_macs`` + ``flops_loss_forward`` / ``flops_loss_backward``."""
    kept = np.array([[30.0, 20.0, 10.0], [45.0, 25.0, 12.0]])               # (B, S) token counts
    _budget_agrees(budget_loss, kept, 0.5, 2.0, True)
    sizes = {"B": (1, 3), "target": (0, 2), "lam": (0, 1), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _budget_agrees(budget_loss, *_budget_case(c), False),
                   lambda c: "kept={}, target={}, lam={}".format(*_budget_case(c)), examples=30)
    return f"loss and dkept equal finite differences on a fixed case and the package's on {tried}"


def decision_reference(keep_prob, mode, ratio, threshold=0.5):
    """topk: ``topk_mask`` with K = round(ratio * P); threshold: keep_prob > threshold."""
    if mode == "topk":
        return topk_mask(keep_prob, int(round(ratio * keep_prob.shape[1])))
    return keep_prob > threshold


def _decision_mistakes(keep_prob, mode, ratio, threshold=0.5):
    P = keep_prob.shape[1]
    x = ratio * P
    top = lambda K, p=keep_prob: topk_mask(p, int(K))
    K = int(round(x))
    if mode == "threshold":
        return [("the comparison is >=; a patch is kept when keep_prob > threshold (strictly), so 0.5 is "
                 "frozen", keep_prob >= threshold),
                ("the comparison is the wrong way round: kept when keep_prob > threshold",
                 keep_prob < threshold),
                ("mode threshold keeps every patch above 0.5, however many: this is topk",
                 lambda: top(K))]
    return [(f"K = int(ratio * P) floors: ratio * P = {x:.4g} gives {int(np.floor(x))}; K = round(ratio * P) "
             f"= {K}", lambda: top(np.floor(x))),
            (f"K = int(ratio * P + 0.5) rounds halves up: ratio * P = {x:.4g} gives {int(x + 0.5)}; Python's "
             f"round (and np.round) round halves to even, K = {K}", lambda: top(x + 0.5)),
            (f"K rounds up: ratio * P = {x:.4g} gives {int(np.ceil(x))}; K = round(ratio * P) = {K}",
             lambda: top(np.ceil(x))),
            ("ties go to the higher index; the K highest with ties to the lower index (a stable sort of "
             "-keep_prob)", lambda: top(K, keep_prob[:, ::-1])[:, ::-1]),
            ("these are the K lowest keep_prob; keep the K highest", lambda: top(K, -keep_prob)),
            ("one patch too many: K + 1 kept", lambda: top(K + 1)),
            ("one patch too few: K - 1 kept", lambda: top(max(K - 1, 0)))]


def _decisions_agree(decide_tokens, keep_prob, mode, ratio):
    want = decision_reference(keep_prob, mode, ratio)
    got = as_array("keep", call(decide_tokens, keep_prob, mode, ratio), want)
    K = int(round(ratio * keep_prob.shape[1]))

    def explain(idx):
        b, j = idx
        if mode == "threshold":
            return f" (mode threshold: keep_prob[{b}, {j}] = {fmt(keep_prob[b, j])}, kept when > 0.5)"
        if got[b].sum() != K:
            return (f" (mode topk, ratio {fmt(ratio)} of P = {keep_prob.shape[1]}: image {b} keeps "
                    f"{int(got[b].sum())} patches; every image keeps K = round(ratio * P) = {K})")
        return (f" (mode topk, K = {K}: keep_prob[{b}] = {keep_prob[b].tolist()}; the K highest, ties to the "
                f"lower index)")
    same("keep", got, want, explain=explain, mistakes=_decision_mistakes(keep_prob, mode, ratio))


def _decision_case(case):
    rng = np.random.default_rng(case["seed"])
    keep_prob = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], (case["B"], case["P"]))   # ties, and exact 0.5
    return keep_prob, ("topk", "threshold")[case["mode"]], case["percent"] / 100


def shipped_ratio_case():
    """49 patches (the shipped model's 7 x 7) at its learned first-stage ratio 0.607: 29.7 patches, where
    rounding and flooring differ; distinct scores."""
    return np.random.default_rng(5).permutation(49)[None, :] / 49.0, 0.607


@exercise("decide_tokens", replaces=(topk_mask, decision_reference, "minitofe.tofe.inference.decide"))
def check_decide_tokens(decide_tokens):
    """decide_tokens(keep_prob, mode, ratio) -> bool (B, P), against ``topk_mask`` and ``> threshold``."""
    keep_prob = np.array([[0.9, 0.2, 0.5, 0.7, 0.5, 0.1], [0.3, 0.8, 0.6, 0.5, 0.4, 0.95]])
    for mode in ("topk", "threshold"):
        _decisions_agree(decide_tokens, keep_prob, mode, 0.5)
    probs, ratio = shipped_ratio_case()
    for r in (ratio, 0.25, 0.3):                     # 29.74 -> 30, 12.25 -> 12, 14.7 -> 15 of 49
        _decisions_agree(decide_tokens, probs, "topk", r)
    _decisions_agree(decide_tokens, keep_prob[:, :5], "topk", 0.5)        # 2.5 -> 2: halves to even
    sizes = {"B": (1, 3), "P": (1, 8), "percent": (1, 100), "mode": (0, 1), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _decisions_agree(decide_tokens, *_decision_case(c)),
                   lambda c: "keep_prob={}, mode={}, ratio={:.3g}".format(*_decision_case(c)))
    return (f"both modes equal the package's decisions on a fixed case, at ratio * P = 29.74, 12.25, 14.7 "
            f"and 2.5 (rounded, halves to even), and on {tried}")
