"""A small PyTorch implementation of ToFe's training step, written from the method as documented and
independent of minitofe's NumPy code (it imports only torch and safetensors): the "other
implementation" of notebook 07 and of the kit's tests.

    outputs = run("golden.safetensors")                  # {name: tensor}, the bundle's names
    save_file(outputs, "theirs.safetensors")             # then: minitofe compare golden... theirs...
    run(path, bug="ln_eps")                              # one of BUGS, seeded on purpose

It reads the bundle's inputs (images, labels, Gumbel noise, the dense teacher's outputs), parameters and
metadata (``config``, ``tofe``) and returns every forward tensor and every gradient (torch autograd) of
the ``tofe``, ``tofe-identity`` and ``tofe-uniform`` methods. ``BUGS`` are three classic porting
mistakes, each switched on by name.
"""
import json
import math

import torch
import torch.nn.functional as F
from safetensors import safe_open

BUGS = {
    "ln_eps": "LayerNorm eps 1e-5 (torch's default) instead of the ViT's 1e-6",
    "cls_in_context": "the class token included in the selector's global context",
    "qkv_split": "the qkv features split as (H, 3, hs) instead of (3, H, hs)",
}
METHODS = ("tofe", "tofe-identity", "tofe-uniform")
PLAIN_VIT = {"reg_tokens": 0, "no_embed_class": False, "pre_norm": False, "fc_norm": None, "final_norm": True,
             "pool_include_prefix": False, "norm_eps": 1e-6, "act_layer": "gelu"}   # what this file covers


def load(path, dtype=None):
    """-> (inputs and params {name: tensor}, config dict, tofe dict) of a golden bundle."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("input.", "param."))}
    if dtype is not None:
        t = {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}
    return t, json.loads(meta["config"]), json.loads(meta["tofe"])


class Net:
    """The parameters, the sizes and the seeded bug; ``rec`` collects the named outputs."""

    def __init__(self, params, cfg, tofe, bug=None):
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; one of {list(BUGS)}")
        self.P, self.cfg, self.tofe, self.bug, self.rec = params, cfg, tofe, bug, {}
        self.T = int(cfg["class_token"]) + int(cfg["distilled"])
        self.C, self.H = cfg["embed_dim"], cfg["num_heads"]

    def ln(self, x, name):
        eps = 1e-5 if self.bug == "ln_eps" else 1e-6
        return F.layer_norm(x, (self.C,), self.P[name + ".weight"], self.P[name + ".bias"], eps)

    def lin(self, x, name):
        return F.linear(x, self.P[name + ".weight"], self.P.get(name + ".bias"))

    def attention(self, x, name, mask):
        B, N, C = x.shape
        hs = C // self.H
        split = (B, N, self.H, 3, hs) if self.bug == "qkv_split" else (B, N, 3, self.H, hs)
        qkv = self.lin(x, name + ".qkv").reshape(split)
        q, k, v = (qkv[:, :, :, i] if self.bug == "qkv_split" else qkv[:, :, i] for i in range(3))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hs)
        p = torch.softmax(scores, dim=-1)
        if mask is not None:                      # kept keys only; a token always sees itself
            eye = torch.eye(N, dtype=x.dtype)
            allowed = mask[:, None, None, :] * (1 - eye) + eye
            p = allowed * p / (allowed * p).sum(-1, keepdim=True)
        return self.lin(torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, N, C), name + ".proj")

    def block(self, x, i, mask=None):
        name, P = f"blocks.{i}", self.P
        n1 = self.ln(x, name + ".norm1")
        a = self.attention(n1, name + ".attn", mask)
        x1 = x + a * P.get(name + ".ls1.gamma", 1.0)
        f = self.lin(F.gelu(self.lin(self.ln(x1, name + ".norm2"), name + ".mlp.fc1")), name + ".mlp.fc2")
        out = x1 + f * P.get(name + ".ls2.gamma", 1.0)
        self.rec.update({name + ".norm1": n1, name + ".attn": a, name + ".mlp": f, name + ".out": out})
        return out

    def embed(self, images):
        cfg, C, p = self.cfg, self.C, self.cfg["patch_size"]
        w = self.P["patch_embed.proj.weight"].reshape(C, cfg["in_chans"], p, p)
        x = F.conv2d(images, w, self.P["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
        prefix = [self.P[k].expand(len(images), 1, C) for k in ("cls_token", "dist_token") if k in self.P]
        return torch.cat(prefix + [x], 1) + self.P["pos_embed"]

    def head(self, x):
        if self.cfg["global_pool"] == "avg":
            return self.lin(self.ln(x[:, self.T:].mean(1), "fc_norm"), "head")
        h = self.ln(x, "norm")
        z = self.lin(h[:, 0], "head")
        return 0.5 * (z + self.lin(h[:, 1], "head_dist")) if self.cfg["distilled"] else z

    def selector(self, x, s):
        name = f"tofe.selector.{s}"
        u = F.gelu(self.lin(self.ln(x, name + ".norm"), name + ".fc1"))
        g = u.mean(1, keepdim=True) if self.bug == "cls_in_context" else u[:, self.T:].mean(1, keepdim=True)
        w = F.gelu(self.lin(torch.cat([u, g.expand_as(u)], -1), name + ".fc2"))
        return self.lin(w, name + ".fc3")[:, self.T:]                          # (B, P, 2)

    def approximator(self, x, s):
        name = f"tofe.approx.{s}"
        return x + self.lin(F.gelu(self.lin(self.ln(x, name + ".norm"), name + ".fc1")), name + ".fc2")


def stage_bounds(cfg, tofe):
    depth = cfg["depth"]
    starts = tofe["stages"] or [round(depth * k / 4) for k in (1, 2, 3)]
    return list(zip(starts, starts[1:] + [depth]))


def hard_gumbel(logits, noise, tau):
    """Straight-through hard Gumbel-Softmax: the value is the one-hot decision, the gradient the soft one."""
    y = torch.softmax((logits + noise) / tau, -1)
    hard = F.one_hot(y.argmax(-1), 2).to(y.dtype)
    return (hard + (y - y.detach()))[..., 0]                                   # keep column


def macs(cfg, tofe, bounds, kept):
    """MACs per image for token counts ``kept`` (B, S) (prefix included), selectors and approximators
    counted; ``kept=None``: the dense model."""
    C, N, mr = cfg["embed_dim"], len_tokens(cfg), cfg["mlp_ratio"]
    block = lambda n: (4 + 2 * mr) * n * C * C + 2 * n * n * C                 # noqa: E731
    P, r = N - int(cfg["class_token"]) - int(cfg["distilled"]), tofe["approx_reduction"]
    total = P * C * cfg["in_chans"] * cfg["patch_size"] ** 2 + C * cfg["num_classes"] * (1 + cfg["distilled"])
    if kept is None:
        return total + cfg["depth"] * block(N)
    total = total + bounds[0][0] * block(N)
    for s, (lo, hi) in enumerate(bounds):
        total = total + (hi - lo) * block(kept[:, s]) + N * C * (C // 2) + N * C * (C // 4) + N * (C // 4) * 2
        if tofe["method"] != "tofe-identity":
            total = total + 2 * (N - kept[:, s]) * C * (C // r)
    return total


def len_tokens(cfg):
    return (cfg["img_size"] // cfg["patch_size"]) ** 2 + int(cfg["class_token"]) + int(cfg["distilled"])


def forward(net, images, labels, noise, t_logits, t_tokens):
    """The training forward given the Gumbel noise and the teacher's logits and tokens per stage: fills
    ``net.rec`` with every named forward tensor; returns the total loss."""
    cfg, tofe, T, rec = net.cfg, net.tofe, net.T, net.rec
    bounds = stage_bounds(cfg, tofe)
    x = rec["embed"] = net.embed(images)
    for i in range(bounds[0][0]):
        x = net.block(x, i)
    masks, approx_loss = [], 0.0
    for s, (lo, hi) in enumerate(bounds):
        logits = rec[f"stage.{s}.selector_logits"] = net.selector(x, s)
        keep = hard_gumbel(logits, noise[s], tofe["tau"])                      # (B, P)
        m = rec[f"stage.{s}.mask"] = torch.cat([torch.ones(len(x), T, dtype=x.dtype), keep], 1)
        h = x
        for j in range(lo, hi):
            h = net.block(h, j, m)
        a = x
        if tofe["method"] != "tofe-identity":
            a = rec[f"stage.{s}.approx"] = net.approximator(x, s)
            frozen = (keep < 0.5).to(x.dtype)[..., None]
            err = (frozen * (a[:, T:] - t_tokens[s][:, T:]) ** 2).sum()
            approx_loss = approx_loss + err / (net.C * frozen.sum().clamp(min=1))
        x = rec[f"stage.{s}.out"] = m[..., None] * h + (1 - m[..., None]) * a
        masks.append(m)
    z = rec["logits"] = net.head(x)
    return losses(net, z, t_logits, labels, masks, approx_loss, bounds)


def losses(net, z, t_logits, labels, masks, approx_loss, bounds):
    cfg, tofe, rec = net.cfg, net.tofe, net.rec
    Tk = tofe["kd_temperature"]
    rec["loss.cls"] = F.cross_entropy(z, labels, label_smoothing=tofe["label_smoothing"])
    kd = F.kl_div(F.log_softmax(z / Tk, -1), F.log_softmax(t_logits / Tk, -1), log_target=True,
                  reduction="batchmean") * Tk * Tk
    rec["loss.kd"] = kd if tofe["alpha"] > 0 else torch.zeros((), dtype=z.dtype)
    rec["loss.approx"] = torch.as_tensor(approx_loss if tofe["beta"] > 0 else 0.0, dtype=z.dtype)
    kept = torch.stack([m.sum(1) for m in masks], 1)                          # (B, S), prefix included
    ratio = rec["macs_ratio"] = macs(cfg, tofe, bounds, kept) / macs(cfg, tofe, bounds, None)
    if tofe["method"] == "tofe-uniform":
        frac = (kept - net.T).mean(0) / (len_tokens(cfg) - net.T)
        flops = tofe["lam"] * ((frac - torch.tensor(tofe["keep_ratios"], dtype=z.dtype)) ** 2).sum()
    elif tofe["per_image_budget"]:
        flops = tofe["lam"] * ((ratio - tofe["target_ratio"]) ** 2).mean()
    else:
        flops = tofe["lam"] * (ratio.mean() - tofe["target_ratio"]) ** 2
    rec["loss.flops"] = flops
    rec["loss.total"] = (rec["loss.cls"] + tofe["alpha"] * rec["loss.kd"] + tofe["beta"] * rec["loss.approx"]
                         + flops)
    return rec["loss.total"]


def run(path, bug=None, dtype=None):
    """Forward and backward on a golden bundle's inputs -> {name: tensor} (forward tensors detached,
    ``grad.<param>`` and ``grad.images``), in ``dtype`` (default: the bundle's)."""
    t, cfg, tofe = load(path, dtype)
    if tofe["method"] not in METHODS:
        raise ValueError(f"this small implementation covers {list(METHODS)}, not {tofe['method']!r}")
    other = {k: cfg[k] for k, v in PLAIN_VIT.items() if cfg.get(k, v) != v}
    if other or not isinstance(cfg["img_size"], int):
        raise ValueError(f"this small implementation covers the plain ViT with square images, not {other}")
    params = {k[len("param."):]: v.clone().requires_grad_(True) for k, v in t.items()
              if k.startswith("param.")}
    images = t["input.images"].clone().requires_grad_(True)
    S = len(stage_bounds(cfg, tofe))
    noise = [t[f"input.noise.{s}"] for s in range(S)]
    t_tokens = [t[f"input.teacher_tokens.{s}"] for s in range(S)]
    net = Net(params, cfg, tofe, bug)
    forward(net, images, t["input.labels"], noise, t["input.teacher_logits"], t_tokens).backward()
    out = {k: v.detach().contiguous() for k, v in net.rec.items()}
    out.update({f"grad.{k}": p.grad for k, p in params.items() if p.grad is not None})
    out["grad.images"] = images.grad
    return out
