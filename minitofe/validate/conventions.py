"""The conventions a golden bundle is made under, as sentences stored in its metadata (docs/method.md's
semantics, with this bundle's numbers filled in), so that someone holding only the file knows what each
tensor means; and the resolved configs and MACs terms it states (no nulls: every value as it was used).
"""
from ..config import LN_EPS
from ..tofe import macs as M
from ..methods.dynamicvit_budget import dynamicvit_ratios
from ..methods.evit_budget import evit_keep_rate


def resolved_config(cfg):
    """ViTConfig as a dict with the values timm's rules resolve (fc_norm), LayerScale's init value 0 when
    there is none (no ls1/ls2 parameters), and the token counts."""
    d = cfg.to_dict()
    d.update(fc_norm=bool(cfg.use_fc_norm), init_values=cfg.init_values or 0.0,
             num_prefix_tokens=cfg.num_prefix_tokens, num_patches=cfg.num_patches, num_tokens=cfg.num_tokens)
    return d


def resolved_tofe(cfg, tcfg):
    """ToFeConfig as a dict with the stages, the temperature's end, EViT's keep rate and DynamicViT's rho
    (their budget values when the config leaves them to the budget) resolved."""
    d = tcfg.to_dict()
    stages = tcfg.resolved_stages(cfg.depth) if tcfg.method != "dense" else ()
    d.update(stages=list(stages), tau_end=tcfg.tau if tcfg.tau_end is None else tcfg.tau_end)
    if stages:
        d.update(evit_keep_rate=evit_keep_rate(cfg, tcfg), dvit_rho=dynamicvit_ratios(cfg, tcfg)[0])
    else:
        d.update(evit_keep_rate=1.0, dvit_rho=1.0)
    return d


def macs_terms(cfg):
    """The dense MACs of one image (the denominator of every macs_ratio) and its terms."""
    N, C = cfg.num_tokens, cfg.embed_dim
    terms = {"patch_embed": M.patch_embed_macs(cfg), "blocks": cfg.depth * M.block_macs(N, C, cfg.mlp_ratio),
             "head": M.head_macs(cfg)}
    return {"dense": float(sum(terms.values())), "dense_terms": {k: float(v) for k, v in terms.items()},
            "block_on_n_tokens": f"(4 + 2 * {cfg.mlp_ratio:g}) * n * {C}^2 + 2 * n^2 * {C}",
            "counted": "matmuls only (LayerNorm, softmax, GELU, additions not counted)"}


def conventions(cfg, tcfg, mode, dtype):
    """{topic: sentence} for ViTConfig ``cfg``, ToFeConfig ``tcfg``, mode train/topk/threshold."""
    T, P, N = cfg.num_prefix_tokens, cfg.num_patches, cfg.num_tokens
    stages = tcfg.resolved_stages(cfg.depth) if tcfg.method != "dense" else ()
    c = {
        "dtype": f"every float tensor is {dtype}; labels and indices are int64",
        "tokens": f"N = T + P = {T} + {P} = {N}: prefix tokens first (class token, then distillation "
                  f"token if any), then patches in raster order; blocks run on all N tokens in training",
        "layout": "parameters under param.<timm state-dict key> in the shapes of timm's state dict (Linear "
                  "weight (out, in), param.patch_embed.proj.weight the conv weight (C, in_chans, p, p), "
                  "cls_token (1, 1, C), pos_embed (1, N, C)); grad.<key> has its parameter's shape",
        "backbone": f"pre-norm blocks x = x + ls1*Attn(LN1(x)); x = x + ls2*MLP(LN2(x)); LayerNorm eps "
                    f"{LN_EPS:g}, biased variance; exact-erf GELU; qkv output features split as (3, H, hs) "
                    f"(q, k, v each H heads of hs); attention scale hs**-0.5",
        "block_tensors": "blocks.<i>.norm1 = LN1(x), blocks.<i>.attn = Attn(LN1(x)) after proj, before "
                         "LayerScale and residual; blocks.<i>.mlp = MLP(LN2(x1)) likewise; blocks.<i>.out = "
                         "the block's output",
        "stages": f"stages start at blocks {list(stages)}; stage s runs blocks stages[s] .. "
                  f"stages[s+1]-1 (the last to the end); blocks before stages[0] are dense",
    }
    if tcfg.method in ("evit", "dynamicvit"):
        from .conventions_baselines import baseline_conventions
        c.update(baseline_conventions(cfg, tcfg, mode))
    elif mode == "train":
        c.update(_train_conventions(cfg, tcfg, T))
    else:
        c.update(_inference_conventions(tcfg, mode))
    m = macs_terms(cfg)["dense_terms"]
    c["macs"] = ("multiply-accumulates of the matmuls (minitofe.tofe.macs): block on n tokens "
                 "(4 + 2 mlp_ratio) n C^2 + 2 n^2 C, selector per stage on N tokens N C (C/2) + N C (C/4) "
                 "+ N (C/4) 2 (tofe-cumulative: on the tokens alive), approximator 2 (N - n) C^2 / r, "
                 "DynamicViT predictor n (C^2 + C^2/2 + C^2/8 + C/2) on the n patches alive, EViT's "
                 "reduction block its attention on the tokens it receives and its MLP on those it keeps, "
                 "patch embedding P C in_chans p^2, head C classes; n = T + kept patches; macs_ratio = macs "
                 f"/ dense macs, per image, dense macs = patch embedding {m['patch_embed']:.0f} + "
                 f"{cfg.depth} blocks on N = {N} tokens {m['blocks']:.0f} + head {m['head']:.0f} = "
                 f"{sum(m.values()):.0f} (metadata 'macs')")
    return c


def _train_conventions(cfg, tcfg, T):
    return {
        "teacher": "inputs of the step: input.teacher_tokens.<s> (B, N, C) are the dense teacher's tokens "
                   "at the end of stage s, input.teacher_logits its logits (metadata 'source' says which "
                   "weights; an inference bundle of method dense checks a teacher implementation)",
        "noise": "input.noise.<s>: (B, P, 2) standard Gumbel noise G = -log(-log U) for stage s, patch "
                 "tokens only, column 0 = keep, 1 = freeze",
        "selector": "stage.<s>.selector_logits: (B, P, 2) [keep, freeze] for the patch tokens (prefix "
                    "tokens are always kept); global context g = mean of u over the patch tokens only"
                    + (" still alive (tofe-cumulative)" if tcfg.method == "tofe-cumulative" else ""),
        "masks": f"stage.<s>.mask: (B, N), 1 = keep (runs the stage's blocks), 0 = freeze; the {T} prefix "
                 f"token(s) always 1; value = the hard decision onehot(argmax softmax((logits + G) / tau)) "
                 f"column 0 with tau = {tcfg.tau:g}, ties to keep; gradient straight through the soft "
                 f"softmax" + ("; tofe-cumulative multiplies by the previous stage's mask" if tcfg.method ==
                               "tofe-cumulative" else ""),
        "attention_mask": "inside stage s, A_ij = m'_ij exp(s_ij) / sum_k m'_ik exp(s_ik) with m'_ij = "
                          "mask_j for j != i and m'_ii = 1; block tensors of stage s are compared on the "
                          "rows the mask keeps only (stage.<s>.mask==1)",
        "approximator": "stage.<s>.approx = x + fc2(GELU(fc1(LN(x)))) on the stage input x, compared on "
                        "the frozen rows only (stage.<s>.mask==0)" if tcfg.uses_approximator else
                        "no approximator: frozen tokens are carried unchanged",
        "stage_output": "stage.<s>.out = mask * blocks(x) + (1 - mask) * approx(x), per token",
        "losses": f"loss.cls = mean over the batch of cross-entropy (label smoothing "
                  f"{tcfg.label_smoothing:g}); loss.kd = Tkd^2 * sum KL(softmax(teacher_logits/Tkd) || "
                  f"softmax(student/Tkd)) / B, Tkd = {tcfg.kd_temperature:g}; loss.approx = sum over stages "
                  f"of sum over frozen patches (mask < 0.5) ||approx - teacher_tokens||^2 / (C * max(number "
                  f"frozen, 1)) (0 without an approximator); loss.flops = " + (
                      "lam * sum_s (mean_b keep_fraction_s - rho_s)^2" if tcfg.method == "tofe-uniform"
                      else "lam * (mean_b macs_ratio - gamma)^2" + (" per image, averaged" if
                                                                    tcfg.per_image_budget else "")) +
                  f" with lam = {tcfg.lam:g}, gamma = {tcfg.target_ratio:g}; loss.total = cls + "
                  f"{tcfg.alpha:g} kd + {tcfg.beta:g} approx + flops",
        "gradients": "grad.<key> = d loss.total / d param.<key>, grad.images = d loss.total / d "
                     "input.images; listed in the order a backward pass produces them",
    }


def _inference_conventions(tcfg, mode):
    rule = (f"the round(rho_s * P) patches of highest score per image, rho = {list(tcfg.keep_ratios)}"
            if mode == "topk" else f"the patches with score > {tcfg.threshold:g} (a ragged batch)")
    return {
        "decision": f"{mode}: stage s keeps {rule}; kept tokens run the stage's blocks, frozen ones "
                    f"the approximator (or are carried / dropped, by method)",
        "scores": "stage.<s>.scores: (B, P) keep probability softmax(selector_logits)[..., 0], or the "
                  "class-token attention for evit-drop / idle",
        "kept": "stage.<s>.kept_idx: (B, K_max) int64 indices of the kept patches (0 = first patch, "
                "prefix tokens not counted) in increasing order, padded with -1; stage.<s>.mask: (B, N) "
                "1 for the prefix and kept tokens, 0 otherwise; kept_counts (B, S)",
        "stage_output": "stage.<s>.out: all N tokens after stage s (tokens dropped for good by evit-drop / "
                        "tofe-cumulative are not compared: rows stage.<s>.mask==1)",
    }
