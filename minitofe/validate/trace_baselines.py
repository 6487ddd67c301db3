"""Recording the authors' baselines, ``evit`` and ``dynamicvit``, for a golden bundle (docs/validate.md,
"EViT and DynamicViT bundles"; their conventions next to the authors' code: docs/baselines.md).

As in ``trace.py``, the values come from minitofe's own forwards (``train_forward`` / ``predict``) and
what they do not return is computed again with the same layer functions; the recomputed logits must equal
the forward's bit for bit (``TraceMismatch`` otherwise).

    EViT        per stage: the reduction block's norm1 / attn, ``stage.<s>.cls_attn`` (B, n) the class
                token's attention to the n candidates, ``stage.<s>.kept_idx`` (B, K) the kept candidates
                (indices into the stage's candidates, increasing), ``stage.<s>.fused`` (B, 1, C), the
                block's mlp / out on the T + K + 1 tokens left, the stage's other blocks, ``stage.<s>.out``
    DynamicViT  training: per stage ``stage.<s>.logp`` (B, P, 2) the predictor's log-probabilities,
                ``stage.<s>.mask`` (B, N) the cumulative hard decision, the stage's blocks (kept rows),
                ``stage.<s>.out``; then loss.cls / ratio / kl / token / total. Inference: per stage
                ``stage.<s>.scores`` (B, n) keep probability of the n tokens left, ``stage.<s>.kept_idx``
                (B, K), the blocks on the T + K tokens kept, ``stage.<s>.out``
"""
import numpy as np

from .trace import _dense_start, _same, traced_block
from ..model import predict, train_backward, train_forward
from ..nn.attention import attention_forward
from ..nn.block import mlp_forward
from ..nn.embed import head_forward
from ..nn.layers import layernorm_forward
from ..methods.dynamicvit_budget import dynamicvit_ratios
from ..methods.dynamicvit_predictor import patches_to_keep, predictor_forward
from ..methods.evit_block import cls_attention, evit_block_forward, keep_count, reduce_forward
from ..methods.evit_budget import evit_keep_rate
from ..tofe.gumbel import gumbel_softmax_forward
from ..tofe.scoring import stage_ranges
from ..tofe.tokens import gather_tokens


def _evit_block(rec, x, params, i, s, H, T, K, fuse):
    """EViT's reduction block i at stage s on x (B, n, C), recorded; checked against evit_block_forward."""
    p = f"blocks.{i}."
    g1, g2 = params.get(p + "ls1.gamma"), params.get(p + "ls2.gamma")
    n1, _ = layernorm_forward(x, params[p + "norm1.weight"], params[p + "norm1.bias"])
    a, c_attn = attention_forward(n1, params, p + "attn.", H)
    x1 = x + (a * g1 if g1 is not None else a)
    cls_attn = cls_attention(c_attn[6], T)                               # (B, n - T)
    r, kept_idx, _ = reduce_forward(x1, cls_attn, K, T, fuse)
    f, _ = mlp_forward(layernorm_forward(r, params[p + "norm2.weight"], params[p + "norm2.bias"])[0], params,
                       p + "mlp.")
    out = _same(r + (f * g2 if g2 is not None else f), evit_block_forward(x, params, p, H, T, K, fuse)[0],
                f"EViT block {i}")
    rec.add(p + "norm1", n1, f"block {i}: LN1 of its input")
    rec.add(p + "attn", a, f"block {i}: attention branch (after proj, before residual)")
    rec.add(f"stage.{s}.cls_attn", cls_attn, f"stage {s}: class token's attention to each candidate, mean "
                                              f"over heads (B, n)")
    rec.add(f"stage.{s}.kept_idx", kept_idx[:, T:] - T, f"stage {s}: kept candidates, increasing (B, K)",
            kind="int")
    if fuse:
        rec.add(f"stage.{s}.fused", r[:, -1:], f"stage {s}: fused token, sum of the others' x1 weighted by "
                                                f"their class attention (B, 1, C)")
    rec.add(p + "mlp", f, f"block {i}: MLP branch on the T + K (+ 1) tokens left")
    rec.add(p + "out", out, f"block {i}: output")
    return out


def trace_evit(rec, model, images, labels, mode, noise=None, teacher=None):
    """EViT's forward (and, ``mode == "train"``, its loss and gradients) recorded into ``rec``."""
    cfg, tcfg, params = model.cfg, model.tofe, model.params
    stages, T, H = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens, cfg.num_heads
    rate = evit_keep_rate(cfg, tcfg)
    if mode == "train":
        out, cache = train_forward(model, images, labels, None)
        logits, info = out["logits"], out
    else:
        logits, info = predict(model, images)
    x = _dense_start(rec, model, images, stages[0])
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        K = keep_count(rate, x.shape[1] - T)
        if K < x.shape[1] - T:
            x = _evit_block(rec, x, params, lo, s, H, T, K, tcfg.evit_fuse)
        else:
            x = traced_block(rec, x, params, lo, H)
        for j in range(lo + 1, hi):
            x = traced_block(rec, x, params, j, H)
        rec.add(f"stage.{s}.out", x, f"stage {s}: output, the T + K (+ 1) tokens left (B, n_s, C)")
    rec.add("logits", _same(head_forward(x, params, cfg)[0], logits, "logits"), "logits (B, classes)")
    train = mode == "train"
    _ends(rec, model, images, info, mode, cache if train else None, ("cls", "total") if train else ())


def trace_dynamicvit(rec, model, images, labels, mode, noise=None, teacher=None):
    """DynamicViT's training step (``mode == "train"``, with the Gumbel ``noise`` and the dense
    ``teacher``) or its top-K inference, recorded into ``rec``."""
    if mode != "train":
        return _dynamicvit_inference(rec, model, images)
    cfg, tcfg, params = model.cfg, model.tofe, model.params
    stages, T, H = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens, cfg.num_heads
    out, cache = train_forward(model, images, labels, noise, teacher)
    x = _dense_start(rec, model, images, stages[0])
    prev = np.ones((len(images), cfg.num_patches), dtype=images.dtype)
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        logp, _ = predictor_forward(x[:, T:], params, f"tofe.predictor.{s}.", prev)
        rec.add(f"stage.{s}.logp", logp, f"stage {s}: predictor log-probabilities (B, P, 2) [keep, drop], "
                                         f"the previous decision as policy")
        y, _ = gumbel_softmax_forward(logp, noise[s], tcfg.tau, hard=True)
        prev = y[..., 0] * prev
        m = np.concatenate([np.ones((len(images), T), dtype=x.dtype), prev], axis=1)
        rec.add(f"stage.{s}.mask", _same(m, out["masks"][s], f"stage {s} mask"),
                f"stage {s}: cumulative hard decision (B, N), 1 keep, 0 dropped", kind="mask")
        for j in range(lo, hi):
            x = traced_block(rec, x, params, j, H, m, rows=f"stage.{s}.mask==1")
        rec.add(f"stage.{s}.out", x, f"stage {s}: output (B, N, C), kept rows", rows=f"stage.{s}.mask==1")
    rec.add("logits", _same(head_forward(x, params, cfg)[0], out["logits"], "logits"), "logits (B, classes)")
    _ends(rec, model, images, out, "train", cache, ("cls", "ratio", "kl", "token", "total"))


def _dynamicvit_inference(rec, model, images):
    cfg, tcfg, params = model.cfg, model.tofe, model.params
    stages, T, H, P = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens, cfg.num_heads, cfg.num_patches
    logits, info = predict(model, images)
    ratios = dynamicvit_ratios(cfg, tcfg)
    x = _dense_start(rec, model, images, stages[0])
    B = len(images)
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        n = x.shape[1] - T
        logp, _ = predictor_forward(x[:, T:], params, f"tofe.predictor.{s}.", np.ones((B, n), dtype=x.dtype))
        keep_prob = np.exp(logp[..., 0])                                  # (B, n)
        top = np.sort(np.argsort(-keep_prob, axis=1, kind="stable")[:, :patches_to_keep(ratios[s], P, n)], 1)
        rec.add(f"stage.{s}.scores", keep_prob, f"stage {s}: keep probability of the n patches left (B, n)")
        rec.add(f"stage.{s}.kept_idx", top, f"stage {s}: kept patches among those left, increasing (B, K)",
                kind="int")
        x = gather_tokens(x, np.concatenate([np.broadcast_to(np.arange(T), (B, T)), top + T], axis=1))
        for j in range(lo, hi):
            x = traced_block(rec, x, params, j, H)
        rec.add(f"stage.{s}.out", x, f"stage {s}: output, the T + K tokens kept (B, T + K, C)")
    rec.add("logits", _same(head_forward(x, params, cfg)[0], logits, "logits"), "logits (B, classes)")
    _ends(rec, model, images, info, "topk", None, ())


def _ends(rec, model, images, info, mode, cache, losses):
    """Counts, MACs, losses and gradients: what every baseline bundle ends with."""
    from .trace import param_order
    dtype = images.dtype
    if mode != "train":
        rec.add("kept_counts", np.asarray(info["kept_counts"], dtype=np.int64),
                "patches kept as themselves per image and stage (B, S)", kind="int")
        rec.add("macs", np.broadcast_to(info["macs"], (len(images),)), "realised MACs per image (B,)")
    rec.add("macs_ratio", np.broadcast_to(info["macs_ratio"], (len(images),)),
            "MACs / dense MACs per image (B,)")
    weights = {"total": " (the weighted sum)", "ratio": " (weight included)"}
    for k in losses:
        rec.add(f"loss.{k}", np.asarray(info["losses"][k], dtype),
                f"loss term {k}" + weights.get(k, " (unweighted)"))
    if cache is None:
        return
    dimages, grads = train_backward(cache)
    for key in reversed(param_order(model)):
        rec.add(f"grad.{key}", grads[key], f"d loss.total / d {key}", role="backward")
    rec.add("grad.images", dimages, "d loss.total / d input.images", role="backward")
