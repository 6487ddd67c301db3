"""EViT and DynamicViT in small PyTorch, written from their papers' and authors' definitions (plain ceil
and floor for the keep counts, the authors' ``PredictorLG`` layout) and independent of minitofe's NumPy
code: the other implementation the ``evit`` / ``dynamicvit`` golden bundles are checked against
(docs/baselines.md lists where minitofe's conventions differ from the authors' code). The ViT's modules
are ``torch_ref``'s; ``record`` names what no module returns. ``BUGS`` are seeded on purpose.

    outputs = run("golden_evit.safetensors", out="theirs.safetensors")      # training or topk bundles
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import record
from .torch_ref import ViT

BUGS = {
    "cls_head0": "EViT ranks by the first head's class attention instead of the mean over heads",
    "fuse_renormalised": "EViT's fused token weights renormalised to sum to 1",
    "predictor_eps": "DynamicViT's predictor LayerNorm with the ViT's eps 1e-6 instead of torch's 1e-5",
    "global_unweighted": "DynamicViT's global feature a plain mean, ignoring the previous decision",
}
METHODS = ("evit", "dynamicvit")


def run(bundle, bug=None, dtype=None, out=None):
    """The adapter: this implementation's outputs on an evit / dynamicvit bundle, {name: array}."""
    from .bundle import read_bundle
    from .torch import capture
    b = read_bundle(bundle)
    model = BaselineViT(b.meta["config"], b.meta["tofe"], bug)
    train = b.meta["mode"] == "train"
    step = (lambda x: training_loss(model, **x)) if train else (lambda x: infer(model, **x))
    names = {"tofe.predictor.{s}": "stage.{s}.logp"} if train else {}
    return capture(b, model, step, names, out=out, dtype=dtype)


class Predictor(nn.Module):
    """The authors' PredictorLG: LayerNorm (torch's default eps), Linear, GELU; a local and a global
    half; an MLP to [keep, drop] log-probabilities."""
    def __init__(self, C, bug):
        super().__init__()
        self.bug = bug
        ln = nn.LayerNorm(C, eps=1e-6) if bug == "predictor_eps" else nn.LayerNorm(C)
        self.in_conv = nn.Sequential(ln, nn.Linear(C, C), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(C, C // 2), nn.GELU(), nn.Linear(C // 2, C // 4), nn.GELU(),
                                      nn.Linear(C // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x, policy):                          # x (B, n, C), policy (B, n)
        x = self.in_conv(x)
        h = x.shape[-1] // 2
        w = torch.ones_like(policy) if self.bug == "global_unweighted" else policy
        total = w.sum(1)[:, None, None]          # 0 when an image kept no patch: g = 0 (the authors: 0 / 0)
        total = torch.where(total > 0, total, torch.ones_like(total))
        g = (x[..., h:] * w[..., None]).sum(1, keepdim=True) / total
        return self.out_conv(torch.cat([x[..., :h], g.expand(-1, x.shape[1], -1)], -1))


class BaselineViT(ViT):
    def __init__(self, cfg, tofe, bug=None):
        super().__init__(cfg, tofe, bug, METHODS, BUGS)
        S = len(tofe["stages"])
        if self.method == "dynamicvit":
            self.tofe = nn.ModuleDict({"predictor": nn.ModuleList(Predictor(cfg["embed_dim"], bug)
                                                                  for _ in range(S))})
        self.bounds = list(zip(tofe["stages"], tofe["stages"][1:] + [cfg["depth"]]))


def _block_macs(model, n):
    C, mr = model.cfg["embed_dim"], model.cfg["mlp_ratio"]
    return (4 + 2 * mr) * n * C * C + 2 * n * n * C


def _macs(model, counts):
    """MACs of one image given the tokens after each stage (prefix, and EViT's fused token, included)."""
    cfg, C, N = model.cfg, model.cfg["embed_dim"], model.cfg["num_tokens"]
    total = cfg["num_patches"] * C * cfg["in_chans"] * cfg["patch_size"] ** 2 + C * cfg["num_classes"]
    if counts is None:
        return total + cfg["depth"] * _block_macs(model, N)
    total += model.bounds[0][0] * _block_macs(model, N)
    n_in = N
    for (lo, hi), n in zip(model.bounds, counts):
        if model.method == "evit":                       # the reduction block: attention on n_in, MLP on n
            total += 4 * n_in * C * C + 2 * n_in * n_in * C + 2 * cfg["mlp_ratio"] * n * C * C
            total += (hi - lo - 1) * _block_macs(model, n)
        else:                                            # the predictor on the patches alive, then the blocks
            a = n_in - model.T
            total += a * (C * C + C * (C // 2) + (C // 2) * (C // 4) + (C // 4) * 2)
            total += (hi - lo) * _block_macs(model, n)
        n_in = n
    return total


def _evit_reduce(model, blk, x, s, i):
    """EViT's reduction in block ``blk`` (index i) at stage s: x (B, n, C) -> (B, T + K (+ 1), C)."""
    T, rate, bug = model.T, model.hp["evit_keep_rate"], model.bug
    n = x.shape[1] - T
    K = max(1, min(n, math.ceil(rate * n)))
    if K == n:
        return blk(x), None
    x1 = x + blk.ls1(blk.attn(blk.norm1(x)))
    A = blk.attn.weights
    a = record(f"stage.{s}.cls_attn", A[:, 0, 0, T:] if bug == "cls_head0" else A[:, :, 0, T:].mean(1))
    top = torch.argsort(a, dim=1, descending=True, stable=True)[:, :K]       # ties: the lower position
    idx = record(f"stage.{s}.kept_idx", top.sort(1).values)                # (B, K)
    cand = x1[:, T:]
    parts = [x1[:, :T], torch.gather(cand, 1, idx[..., None].expand(-1, -1, cand.shape[-1]))]
    if model.hp["evit_fuse"]:
        w = a.scatter(1, idx, 0.0)                                       # the others' attention
        w = w / w.sum(1, keepdim=True) if bug == "fuse_renormalised" else w
        parts.append(record(f"stage.{s}.fused", (w[..., None] * cand).sum(1, keepdim=True)))
    x = torch.cat(parts, 1)
    return record(f"blocks.{i}.out", x + blk.ls2(blk.mlp(blk.norm2(x)))), idx


def evit_forward(model, images):
    """-> logits, tokens after each stage, patches kept as themselves per image and stage (B, S)."""
    x = model.embed(images)
    for i in range(model.bounds[0][0]):
        x = model.blocks[i](x)
    pos = torch.arange(model.cfg["num_patches"]).expand(len(x), -1)    # original patch of each candidate
    counts, kept = [], []
    for s, (lo, hi) in enumerate(model.bounds):
        x, idx = _evit_reduce(model, model.blocks[lo], x, s, lo)
        if idx is not None:
            pos = torch.gather(pos, 1, idx)
            pos = torch.cat([pos, torch.full((len(x), 1), -1)], 1) if model.hp["evit_fuse"] else pos
        for j in range(lo + 1, hi):
            x = model.blocks[j](x)
        record(f"stage.{s}.out", x)
        counts.append(x.shape[1])
        kept.append((pos >= 0).sum(1))
    return record("logits", model.head_logits(x)), counts, torch.stack(kept, 1)


def dynamicvit_forward(model, images, noise):
    """Training forward -> logits, final tokens, the last decision (B, P), decisions per stage."""
    x = model.embed(images)
    for i in range(model.bounds[0][0]):
        x = model.blocks[i](x)
    prev, decisions = torch.ones(len(x), model.cfg["num_patches"], dtype=x.dtype), []
    for s, (lo, hi) in enumerate(model.bounds):
        logp = model.tofe["predictor"][s](x[:, model.T:], prev)
        y = torch.softmax((logp + noise[s]) / model.hp["tau"], -1)
        hard = F.one_hot(y.argmax(-1), 2).to(y.dtype) + (y - y.detach())       # straight through
        prev = hard[..., 0] * prev
        m = record(f"stage.{s}.mask", torch.cat([torch.ones(len(x), model.T, dtype=x.dtype), prev], 1))
        for j in range(lo, hi):
            x = model.blocks[j](x, m)
        record(f"stage.{s}.out", x)
        decisions.append(prev)
    return record("logits", model.head_logits(x)), x, prev, decisions


def training_loss(model, images, labels, noise=(), teacher_logits=None, teacher_features=None, **_):
    hp, T = model.hp, model.T
    if model.method == "evit":
        z, counts, _ = evit_forward(model, images)
        record("macs_ratio", torch.full((len(z),), _macs(model, counts) / _macs(model, None), dtype=z.dtype))
        return record("loss.cls", F.cross_entropy(z, labels, label_smoothing=hp["label_smoothing"]))
    z, x, last, decisions = dynamicvit_forward(model, images, noise)
    S = len(decisions)
    kept = torch.stack([d.sum(1) for d in decisions], 1) + T                       # (B, S)
    record("macs_ratio", torch.stack([_macs(model, k) for k in kept]) / _macs(model, None))
    cls = record("loss.cls", F.cross_entropy(z, labels, label_smoothing=hp["label_smoothing"]))
    ratio = record("loss.ratio", hp["dvit_ratio_weight"] / S * sum(
        ((d.mean(1) - hp["dvit_rho"] ** (s + 1)) ** 2).mean() for s, d in enumerate(decisions)))
    kl = record("loss.kl", F.kl_div(F.log_softmax(z, -1), F.log_softmax(teacher_logits, -1), log_target=True,
                                    reduction="batchmean"))
    keep = (last > 0.5).to(x.dtype)[..., None]                                     # a constant mask
    err = (keep * (model.norm(x[:, T:]) - teacher_features[:, T:]) ** 2).sum()
    token = record("loss.token", err / (keep.sum() * x.shape[-1]).clamp(min=1))
    return cls + ratio + hp["dvit_kl_weight"] * kl + hp["dvit_token_weight"] * token


def infer(model, images, **_):
    """topk inference: EViT as in training; DynamicViT keeps floor(rho^(s+1) P) (at least 1) per stage."""
    if model.method == "evit":
        z, counts, kept = evit_forward(model, images)
        macs = torch.full((len(z),), _macs(model, counts), dtype=z.dtype)
    else:
        z, kept, counts = _dynamicvit_infer(model, images)
        macs = torch.full((len(z),), _macs(model, counts), dtype=z.dtype)
    record("kept_counts", kept.to(torch.int64))
    record("macs", macs)
    record("macs_ratio", macs / _macs(model, None))
    return z


def _dynamicvit_infer(model, images):
    x, T, P = model.embed(images), model.T, model.cfg["num_patches"]
    for i in range(model.bounds[0][0]):
        x = model.blocks[i](x)
    counts, kept = [], []
    for s, (lo, hi) in enumerate(model.bounds):
        n = x.shape[1] - T
        score = model.tofe["predictor"][s](x[:, T:], torch.ones(len(x), n, dtype=x.dtype))[..., 0].exp()
        record(f"stage.{s}.scores", score)
        K = max(1, min(n, int(P * model.hp["dvit_rho"] ** (s + 1))))
        top = torch.argsort(score, dim=1, descending=True, stable=True)[:, :K]   # ties: the lower index
        idx = record(f"stage.{s}.kept_idx", top.sort(1).values)
        x = torch.cat([x[:, :T], torch.gather(x[:, T:], 1, idx[..., None].expand(-1, -1, x.shape[-1]))], 1)
        for j in range(lo, hi):
            x = model.blocks[j](x)
        record(f"stage.{s}.out", x)
        counts.append(x.shape[1])
        kept.append(torch.full((len(x),), K))
    return record("logits", model.head_logits(x)), torch.stack(kept, 1), counts
