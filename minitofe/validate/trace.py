"""Recording the reference's intermediates in execution order, for a golden bundle.

The values come from the public API (``train_forward`` / ``train_backward``, ``predict``); what those do
not return (each block's LN1, attention and MLP branches and output, the approximator's output) is
computed again here with the same layer functions, and every stage output computed again must equal
``train_forward``'s bit for bit, so a bundle can never describe a different computation than the one
minitofe runs (``TraceMismatch`` otherwise).
"""
from dataclasses import dataclass, field

import numpy as np

from .bundle import Entry
from ..model import predict, train_backward, train_forward
from ..nn.attention import attention_forward
from ..nn.block import block_forward, mlp_forward
from ..nn.embed import embed_forward
from ..nn.layers import layernorm_forward
from ..tofe.approximator import approximator_forward
from ..tofe.scoring import stage_ranges


class TraceMismatch(ValueError):
    """The recomputed intermediates disagree with what train_forward / predict returned (a backbone
    that is not timm's default block, or a trace left behind by a change of the forward)."""


@dataclass
class Record:
    """Entries in order and their arrays (plain data)."""
    entries: list = field(default_factory=list)
    arrays: dict = field(default_factory=dict)

    def add(self, name, array, what, role="forward", kind="float", rows="all"):
        self.entries.append(Entry(name, role, what, kind, rows or "all"))
        self.arrays[name] = np.array(array, order="C")                 # a copy; 0-d stays 0-d


def _same(mine, theirs, where):
    if not np.array_equal(mine, theirs):
        raise TraceMismatch(f"golden trace: {where} recomputed differs from minitofe's own by "
                            f"{float(np.abs(mine - theirs).max()):.3g}; the kit traces timm's default block "
                            f"(LayerNorm eps 1e-6, exact GELU) and ToFe's stages only")
    return theirs


def traced_block(rec, x, params, i, num_heads, key_mask=None, rows="all"):
    """Block i on x (B, N, C), recording norm1 / attn / mlp / out; checked against ``block_forward``."""
    p = f"blocks.{i}."
    g1, g2 = params.get(p + "ls1.gamma"), params.get(p + "ls2.gamma")
    n1, _ = layernorm_forward(x, params[p + "norm1.weight"], params[p + "norm1.bias"])
    a, _ = attention_forward(n1, params, p + "attn.", num_heads, key_mask)
    x1 = x + (a * g1 if g1 is not None else a)
    n2, _ = layernorm_forward(x1, params[p + "norm2.weight"], params[p + "norm2.bias"])
    f, _ = mlp_forward(n2, params, p + "mlp.")
    out = _same(x1 + (f * g2 if g2 is not None else f), block_forward(x, params, p, num_heads, key_mask)[0],
                f"block {i}")
    rec.add(p + "norm1", n1, f"block {i}: LN1 of its input", rows=rows)
    rec.add(p + "attn", a, f"block {i}: attention branch (after proj, before residual)", rows=rows)
    rec.add(p + "mlp", f, f"block {i}: MLP branch (before residual)", rows=rows)
    rec.add(p + "out", out, f"block {i}: output", rows=rows)
    return out


def _dense_start(rec, model, images, stages_start):
    x, _ = embed_forward(images, model.params, model.cfg)
    rec.add("embed", x, "patch embedding + prefix tokens + position embedding (B, N, C)")
    for i in range(stages_start):
        x = traced_block(rec, x, model.params, i, model.cfg.num_heads)
    return x


def trace_train(rec, model, images, labels, noise, teacher):
    """Training forward and backward of ``model`` (reference path) recorded into ``rec``; ``teacher``
    is the dict of ``teacher_forward`` (an input of the step, recorded by the caller)."""
    cfg, tcfg, params = model.cfg, model.tofe, model.params
    out, cache = train_forward(model, images, labels, noise, teacher)
    dimages, grads = train_backward(cache)
    stages, T, dtype = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens, images.dtype
    x = _dense_start(rec, model, images, stages[0])
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        m = out["masks"][s]                                                   # (B, N)
        rec.add(f"stage.{s}.selector_logits", out["selector_logits"][s][:, T:],
                f"stage {s}: selector logits of the patches (B, P, 2) [keep, freeze]")
        rec.add(f"stage.{s}.mask", m, f"stage {s}: hard mask (B, N), 1 keep, 0 freeze", kind="mask")
        h = x
        for j in range(lo, hi):
            h = traced_block(rec, h, params, j, cfg.num_heads, m, rows=f"stage.{s}.mask==1")
        a = x
        if tcfg.uses_approximator:
            a, _ = approximator_forward(x, params, f"tofe.approx.{s}.")
            rec.add(f"stage.{s}.approx", a, f"stage {s}: approximator output on the stage input",
                    rows=f"stage.{s}.mask==0")
        x = _same(m[..., None] * h + (1.0 - m[..., None]) * a, out["stage_outputs"][s], f"stage {s} output")
        rec.add(f"stage.{s}.out", x, f"stage {s}: output, mask * blocks + (1 - mask) * approximator")
    rec.add("logits", out["logits"], "student logits (B, classes)")
    for k in ("cls", "kd", "approx"):
        rec.add(f"loss.{k}", np.asarray(out["losses"][k], dtype), f"loss term {k} (unweighted)")
    rec.add("macs_ratio", out["macs_ratio"], "MACs / dense MACs per image, counts from the masks (B,)")
    rec.add("loss.flops", np.asarray(out["losses"]["flops"], dtype), "loss term flops (lam included)")
    rec.add("loss.total", np.asarray(out["losses"]["total"], dtype), "cls + alpha kd + beta approx + flops")
    for key in reversed(param_order(model)):
        rec.add(f"grad.{key}", grads[key], f"d loss.total / d {key}", role="backward")
    rec.add("grad.images", dimages, "d loss.total / d input.images", role="backward")
    return out


def trace_infer(rec, model, images, inference):
    """Reduced inference (``topk`` / ``threshold``, reference path) recorded into ``rec``."""
    cfg, tcfg = model.cfg, model.tofe.replace(inference=inference)
    logits, info = predict(model, images, inference=inference)
    dense = tcfg.method == "dense"
    _dense_start(rec, model, images, cfg.depth if dense else tcfg.resolved_stages(cfg.depth)[0])
    T = cfg.num_prefix_tokens
    rows = None if tcfg.reuses_tokens else "stage.{s}.mask==1"
    for s, kept in enumerate(info["kept"]):
        rec.add(f"stage.{s}.scores", info["keep_prob"][s], f"stage {s}: patch scores (B, P)")
        rec.add(f"stage.{s}.kept_idx", kept_indices(kept), f"stage {s}: kept patches, -1 padded", kind="int")
        mask = np.concatenate([np.ones((len(kept), T), bool), kept], axis=1).astype(images.dtype)
        rec.add(f"stage.{s}.mask", mask, f"stage {s}: 1 prefix and kept tokens, 0 others (B, N)", kind="mask")
        rec.add(f"stage.{s}.out", info["stage_outputs"][s], f"stage {s}: output tokens (B, N, C)",
                rows=rows and rows.format(s=s))
    rec.add("logits", logits, "logits (B, classes)")
    if not dense:
        rec.add("kept_counts", info["kept_counts"].astype(np.int64), "kept patches per image and stage",
                kind="int")
    rec.add("macs", info["macs"], "realised MACs per image (B,)")
    rec.add("macs_ratio", info["macs_ratio"], "realised MACs / dense MACs per image (B,)")
    return logits, info


def kept_indices(kept):
    """bool (B, P) -> int64 (B, K_max): each row's kept patch indices, increasing, padded with -1."""
    rows = [np.flatnonzero(k) for k in kept]
    out = np.full((len(rows), max([len(r) for r in rows] + [0])), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out


def param_order(model):
    """The parameter keys in the order the forward first uses them: embedding, blocks before the first
    stage, then per stage selector (or DynamicViT's predictor), blocks, approximator, then the head.
    Backward order is the reverse."""
    from ..nn.params import param_shapes
    cfg, tcfg, keys = model.cfg, model.tofe, list(model.params)
    backbone = list(param_shapes(cfg))
    embed = [k for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "dist_token",
                         "pos_embed") if k in keys]
    block = {i: [k for k in backbone if k.startswith(f"blocks.{i}.")] for i in range(cfg.depth)}
    order = embed[:]
    stages = tcfg.resolved_stages(cfg.depth) if tcfg.method != "dense" else (cfg.depth,)
    for i in range(stages[0]):
        order += block[i]
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages) if tcfg.method != "dense" else ()):
        order += [k for k in keys if k.startswith((f"tofe.selector.{s}.", f"tofe.predictor.{s}."))]
        for j in range(lo, hi):
            order += block[j]
        order += [k for k in keys if k.startswith(f"tofe.approx.{s}.")]
    head = [k for k in backbone if k not in order]
    return order + head + [k for k in keys if k not in order and k not in head]
