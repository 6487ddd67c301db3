"""A small PyTorch ToFe, written from docs/method.md as a validator would write theirs and independent of
minitofe's NumPy code: the "other implementation" of notebook 07 and of the kit's tests.

It is plain PyTorch: ``nn.Module``s under timm's module paths (so its parameters carry timm's state-dict
keys), ToFe's selectors and approximators under ``tofe.selector.<s>`` / ``tofe.approx.<s>``, and a
``record(name, tensor)`` call (a no-op outside a capture) for each value no module returns: masks, stage
outputs, logits, losses, MACs. It covers ``tofe``, ``tofe-identity`` and ``tofe-uniform`` training on a
plain ViT (class token, optionally a distillation token, LayerScale). ``BUGS`` are three classic porting
mistakes, each switched on by name.

``run`` is the whole adapter to a golden bundle (docs/validate.md, "From PyTorch in a few lines"):

    outputs = run("golden.safetensors", out="theirs.safetensors")    # then: minitofe compare ...
    run(path, bug="ln_eps")
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import record

BUGS = {
    "ln_eps": "LayerNorm eps 1e-5 (torch's default) instead of the ViT's 1e-6",
    "cls_in_context": "the class token included in the selector's global context",
    "qkv_split": "the qkv features split as (H, 3, hs) instead of (3, H, hs)",
}
METHODS = ("tofe", "tofe-identity", "tofe-uniform")
PLAIN_VIT = {"reg_tokens": 0, "no_embed_class": False, "pre_norm": False, "final_norm": True,
             "pool_include_prefix": False, "norm_eps": 1e-6, "act_layer": "gelu"}   # what this file covers


def run(bundle, bug=None, dtype=None, out=None):
    """The adapter: this implementation's outputs on a golden bundle, {name: array} (``out``: also saved)."""
    from .bundle import read_bundle
    from .torch import capture
    b = read_bundle(bundle)
    model = ToFeViT(b.meta["config"], b.meta["tofe"], bug)
    names = {"tofe.selector.{s}": "stage.{s}.selector_logits", "tofe.approx.{s}": "stage.{s}.approx"}
    return capture(b, model, lambda x: training_loss(model, **x), names, out=out, dtype=dtype)


def layer_norm(C, bug):
    return nn.LayerNorm(C, eps=1e-5 if bug == "ln_eps" else 1e-6)


class Attention(nn.Module):
    def __init__(self, C, H, bug):
        super().__init__()
        self.H, self.bug = H, bug
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x, mask=None):
        B, N, C = x.shape
        hs = C // self.H
        split = (B, N, self.H, 3, hs) if self.bug == "qkv_split" else (B, N, 3, self.H, hs)
        qkv = self.qkv(x).reshape(split)
        q, k, v = (qkv[:, :, :, i] if self.bug == "qkv_split" else qkv[:, :, i] for i in range(3))
        p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hs), dim=-1)
        if mask is not None:                      # kept keys only; a token always sees itself
            eye = torch.eye(N, dtype=x.dtype)
            allowed = mask[:, None, None, :] * (1 - eye) + eye
            p = allowed * p / (allowed * p).sum(-1, keepdim=True)
        self.weights = p                          # (B, H, N, N), read by EViT (torch_baselines)
        return self.proj(torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, hidden), nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(C))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg, bug):
        super().__init__()
        C, ls = cfg["embed_dim"], bool(cfg["init_values"])
        self.norm1, self.norm2 = layer_norm(C, bug), layer_norm(C, bug)
        self.attn, self.mlp = Attention(C, cfg["num_heads"], bug), Mlp(C, round(cfg["mlp_ratio"] * C))
        self.ls1, self.ls2 = (LayerScale(C), LayerScale(C)) if ls else (nn.Identity(), nn.Identity())

    def forward(self, x, mask=None):
        x = x + self.ls1(self.attn(self.norm1(x), mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Selector(nn.Module):
    """[keep, freeze] logits of the patch tokens from local features and their mean over the patches."""
    def __init__(self, C, T, bug):
        super().__init__()
        self.T, self.bug, self.norm = T, bug, layer_norm(C, bug)
        self.fc1, self.fc2 = nn.Linear(C, C // 2), nn.Linear(2 * (C // 2), C // 4)
        self.fc3 = nn.Linear(C // 4, 2)

    def forward(self, x):
        u = F.gelu(self.fc1(self.norm(x)))
        g = u.mean(1, keepdim=True) if self.bug == "cls_in_context" else u[:, self.T:].mean(1, keepdim=True)
        return self.fc3(F.gelu(self.fc2(torch.cat([u, g.expand_as(u)], -1))))[:, self.T:]   # (B, P, 2)


class Approximator(nn.Module):
    def __init__(self, C, r, bug):
        super().__init__()
        self.norm, self.fc1, self.fc2 = layer_norm(C, bug), nn.Linear(C, C // r), nn.Linear(C // r, C)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ViT(nn.Module):
    """The plain ViT; ``cfg`` / ``tofe``: a bundle's ``config`` / ``tofe`` metadata (the hyper-parameters
    are kept as ``hp``)."""
    def __init__(self, cfg, tofe, bug=None, methods=METHODS, bugs=BUGS):
        super().__init__()
        if bug is not None and bug not in bugs:
            raise ValueError(f"unknown bug {bug!r}; one of {list(bugs)}")
        other = {k: cfg[k] for k, v in PLAIN_VIT.items() if cfg.get(k, v) != v}
        if tofe["method"] not in methods or other or not isinstance(cfg["img_size"], int):
            raise ValueError(f"this small implementation covers {list(methods)} on the plain ViT with square "
                             f"images, not {tofe['method']!r} {other}")
        C, p = cfg["embed_dim"], cfg["patch_size"]
        self.cfg, self.hp, self.T = cfg, tofe, int(cfg["class_token"]) + int(cfg["distilled"])
        self.method, self.bug = tofe["method"], bug
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg["in_chans"], C, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        if cfg["distilled"]:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg["num_tokens"], C))
        self.pos_drop = nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg, bug) for _ in range(cfg["depth"]))
        self.norm = layer_norm(C, bug)
        self.head = nn.Linear(C, cfg["num_classes"])
        if cfg["distilled"]:
            self.head_dist = nn.Linear(C, cfg["num_classes"])


    def embed(self, images):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        prefix = [t.expand(len(x), -1, -1) for t in (self.cls_token, getattr(self, "dist_token", None))
                  if t is not None]
        return self.pos_drop(torch.cat(prefix + [x], 1) + self.pos_embed)

    def head_logits(self, x):
        if self.cfg["global_pool"] == "avg":
            raise ValueError("this small implementation covers the class-token head only")
        h = self.norm(x)
        z = self.head(h[:, 0])
        return 0.5 * (z + self.head_dist(h[:, 1])) if self.cfg["distilled"] else z


class ToFeViT(ViT):
    """The ViT with ToFe's selectors and approximators under ``tofe``."""
    def __init__(self, cfg, tofe, bug=None):
        super().__init__(cfg, tofe, bug)
        C, S = cfg["embed_dim"], len(tofe["stages"])
        approx = [Approximator(C, tofe["approx_reduction"], bug) for _ in range(S)]
        self.tofe = nn.ModuleDict({"selector": nn.ModuleList(Selector(C, self.T, bug) for _ in range(S)),
                                   "approx": nn.ModuleList(approx if self.has_approx else [])})

    has_approx = property(lambda self: self.method != "tofe-identity")


def training_loss(model, images, labels, noise, teacher_tokens, teacher_logits, **_):
    """One ToFe training step's total loss, recording masks, stage outputs, logits, losses and MACs."""
    cfg, tofe, T = model.cfg, model.hp, model.T
    starts = tofe["stages"]
    bounds = list(zip(starts, starts[1:] + [cfg["depth"]]))
    x = model.embed(images)
    for i in range(starts[0]):
        x = model.blocks[i](x)
    masks, approx_loss = [], 0.0
    for s, (lo, hi) in enumerate(bounds):
        logits = model.tofe["selector"][s](x)
        y = torch.softmax((logits + noise[s]) / tofe["tau"], -1)             # straight-through hard Gumbel
        keep = (F.one_hot(y.argmax(-1), 2).to(y.dtype) + (y - y.detach()))[..., 0]
        m = record(f"stage.{s}.mask", torch.cat([torch.ones(len(x), T, dtype=x.dtype), keep], 1))
        h = x
        for j in range(lo, hi):
            h = model.blocks[j](h, m)
        a = x
        if model.has_approx:
            a = model.tofe["approx"][s](x)
            frozen = (keep < 0.5).to(x.dtype)[..., None]
            err = (frozen * (a[:, T:] - teacher_tokens[s][:, T:]) ** 2).sum()
            approx_loss = approx_loss + err / (cfg["embed_dim"] * frozen.sum().clamp(min=1))
        x = record(f"stage.{s}.out", m[..., None] * h + (1 - m[..., None]) * a)
        masks.append(m)
    z = record("logits", model.head_logits(x))
    return losses(model, z, teacher_logits, labels, masks, approx_loss, bounds)


def macs(cfg, tofe, bounds, kept):
    """MACs per image for token counts ``kept`` (B, S) (prefix included), selectors and approximators
    counted; ``kept=None``: the dense model."""
    C, N, mr, r = cfg["embed_dim"], cfg["num_tokens"], cfg["mlp_ratio"], tofe["approx_reduction"]
    block = lambda n: (4 + 2 * mr) * n * C * C + 2 * n * n * C                 # noqa: E731
    total = cfg["num_patches"] * C * cfg["in_chans"] * cfg["patch_size"] ** 2 + C * cfg["num_classes"] * (
        1 + cfg["distilled"])
    if kept is None:
        return total + cfg["depth"] * block(N)
    total = total + bounds[0][0] * block(N)
    for s, (lo, hi) in enumerate(bounds):
        total = total + (hi - lo) * block(kept[:, s]) + N * C * (C // 2) + N * C * (C // 4) + N * (C // 4) * 2
        if tofe["method"] != "tofe-identity":
            total = total + 2 * (N - kept[:, s]) * C * (C // r)
    return total


def losses(model, z, t_logits, labels, masks, approx_loss, bounds):
    cfg, tofe = model.cfg, model.hp
    Tk = tofe["kd_temperature"]
    cls = record("loss.cls", F.cross_entropy(z, labels, label_smoothing=tofe["label_smoothing"]))
    kd = F.kl_div(F.log_softmax(z / Tk, -1), F.log_softmax(t_logits / Tk, -1), log_target=True,
                  reduction="batchmean") * Tk * Tk
    kd = record("loss.kd", kd if tofe["alpha"] > 0 else torch.zeros((), dtype=z.dtype))
    approx = record("loss.approx", torch.as_tensor(approx_loss if tofe["beta"] > 0 else 0.0, dtype=z.dtype))
    kept = torch.stack([m.sum(1) for m in masks], 1)                          # (B, S), prefix included
    ratio = record("macs_ratio", macs(cfg, tofe, bounds, kept) / macs(cfg, tofe, bounds, None))
    if tofe["method"] == "tofe-uniform":
        frac = (kept - model.T).mean(0) / cfg["num_patches"]
        flops = tofe["lam"] * ((frac - torch.tensor(tofe["keep_ratios"], dtype=z.dtype)) ** 2).sum()
    elif tofe["per_image_budget"]:
        flops = tofe["lam"] * ((ratio - tofe["target_ratio"]) ** 2).mean()
    else:
        flops = tofe["lam"] * (ratio.mean() - tofe["target_ratio"]) ** 2
    record("loss.flops", flops)
    return cls + tofe["alpha"] * kd + tofe["beta"] * approx + flops
