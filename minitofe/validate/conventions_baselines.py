"""The conventions of an ``evit`` or ``dynamicvit`` golden bundle, with this bundle's numbers, and where
they differ from the authors' released code (docs/baselines.md has the same list, with the reasons)."""
from ..methods.dynamicvit_budget import dynamicvit_ratios
from ..methods.dynamicvit_predictor import PREDICTOR_LN_EPS
from ..methods.evit_budget import evit_keep_rate, evit_token_counts

EVIT_AUTHORS = (
    "differences from the authors' EViT code: their class and argument default is fuse_token=False (their "
    "released scripts pass --fuse_token; minitofe's default evit_fuse is true); they keep "
    "ceil(keep_rate * (N - 1)) with a plain ceil, minitofe takes ceil of the product rounded to 9 decimals "
    "(different only within 5e-10 of a whole product; this bundle's rate is not there); kept tokens ordered "
    "by attention there, by position here; ties: lower position here")
DVIT_AUTHORS = (
    "differences from the authors' DynamicViT code: their attention with the policy adds eps = 1e-6 "
    "((exp * policy + eps / N) / (sum + eps)) and computes it in float32, minitofe's masked softmax has no "
    "eps and stays in the working dtype; in inference they keep int(P rho^(s+1)) patches (0 is possible), "
    "minitofe at least 1 and the floor of the product rounded to 9 decimals; kept tokens ordered by score "
    "there, by position here; an image whose previous decision keeps no patch: their global half divides "
    "0 by 0 (NaN), minitofe takes g = 0")


def baseline_conventions(cfg, tcfg, mode):
    """{topic: sentence} for method evit / dynamicvit and mode train / topk."""
    if tcfg.method == "evit":
        return _evit(cfg, tcfg, mode)
    return _dynamicvit(cfg, tcfg, mode)


def _evit(cfg, tcfg, mode):
    rate = evit_keep_rate(cfg, tcfg)
    counts = evit_token_counts(cfg, tcfg, (rate,) * len(tcfg.resolved_stages(cfg.depth)))
    others = ("the others fused into one token sum_j a_j x1_j, weights not renormalised (stage.<s>.fused), "
              "appended after the kept tokens" if tcfg.evit_fuse else "the others dropped (evit_fuse false)")
    c = {
        "reduction": f"in the first block of each stage, after the attention residual x1 = x + attn and "
                     f"before the MLP: the class token's attention a_j = mean over heads of A[h, 0, T + j] "
                     f"(stage.<s>.cls_attn, (B, n)); K = ceil(r n) of the n = tokens - T candidates kept, "
                     f"r = {rate!r} (stage.<s>.kept_idx: indices into the candidates, increasing); {others}; "
                     f"the block's MLP and the later blocks run on the tokens left: {counts} tokens after "
                     f"each stage (prefix and fused token included)",
        "token_order": "after a reduction: prefix tokens, the kept candidates in their current order, the "
                       "fused token last; every block tensor and stage.<s>.out is in that order (the "
                       "authors' gather orders the kept tokens by attention: sort yours by kept_idx)",
        "losses": (f"loss.cls = mean over the batch of cross-entropy (label smoothing "
                   f"{tcfg.label_smoothing:g}); loss.total = loss.cls (no distillation, the authors' "
                   f"recipe); the keep rate is the target rate (no annealing within one step)")
                  if mode == "train" else "inference: no losses",
        "authors_code": EVIT_AUTHORS,
    }
    if mode == "train":
        c["gradients"] = ("grad.<key> = d loss.total / d param.<key>; the top-K is a hard choice: the "
                          "gradient flows through the gathered tokens, the fused token's inputs and its "
                          "weights a_j")
    return c


def _dynamicvit(cfg, tcfg, mode):
    ratios = dynamicvit_ratios(cfg, tcfg)
    c = {
        "predictor": f"stage.<s>: u = GELU(in_conv.1(LN(x))) on the patch tokens, LayerNorm eps "
                     f"{PREDICTOR_LN_EPS:g} (torch's default, as the authors' PredictorLG); global half "
                     f"g = sum_j policy_j u_j[C/2:] / sum_j policy_j; logp = "
                     f"log_softmax(out_conv(concat(u[:C/2], g))) (B, P, 2) [keep, drop]",
        "keep_ratios": f"rho = {ratios[0]!r}; stage s keeps rho^(s+1) of the P = {cfg.num_patches} "
                       f"patches: {list(ratios)}",
        "authors_code": DVIT_AUTHORS,
    }
    if mode != "train":
        c["decision"] = ("topk: at stage s the predictor scores the n patches left with policy 1 "
                         "(stage.<s>.scores = exp(logp[..., 0]), (B, n)); the floor of rho^(s+1) P of the "
                         "highest stay (stage.<s>.kept_idx, indices among those left, increasing), the "
                         "others are gone; the stage's blocks run on the T + K tokens kept")
        return c
    c.update({
        "noise": "input.noise.<s>: (B, P, 2) standard Gumbel noise G = -log(-log U), column 0 keep, 1 drop",
        "decisions": f"stage.<s>.mask (B, N): prefix 1, patches d_s = onehot(argmax((logp_s + G_s) / tau))"
                     f"[keep] * d_(s-1), tau = {tcfg.tau:g}, d_(-1) = 1; the value is the hard decision, the "
                     f"gradient the straight-through soft one; the predictor's policy at stage s is d_(s-1)",
        "attention_mask": "inside stage s every block runs on all N tokens, a query attends to the keys "
                          "stage.<s>.mask keeps and to itself; block tensors compared on the kept rows",
        "losses": f"loss.cls = mean cross-entropy (label smoothing {tcfg.label_smoothing:g}); loss.ratio = "
                  f"{tcfg.dvit_ratio_weight:g} / S * sum_s mean_b (mean_p d_s - rho^(s+1))^2 (weight "
                  f"included); loss.kl = mean_b KL(softmax(teacher_logits) || softmax(logits)); loss.token "
                  f"= mean over the kept patches (d_S > 0.5) and channels of (norm(x) - "
                  f"input.teacher_features)^2, norm the student's final LayerNorm; loss.total = cls + ratio "
                  f"+ {tcfg.dvit_kl_weight:g} kl + {tcfg.dvit_token_weight:g} token",
        "teacher": "input.teacher_logits (B, K) and input.teacher_features (B, N, C), the dense teacher's "
                   "final tokens after its norm (metadata 'source' says which weights)",
        "gradients": "grad.<key> = d loss.total / d param.<key>",
    })
    return c
