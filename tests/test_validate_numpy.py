"""An implementation that is plain functions (NumPy here; JAX reads the same): EViT's top-K inference
written from its definition, independently of minitofe's code, recording its intermediates by name with
``record`` inside ``recording()`` and checked with the same ``compare``: it passes, and a planted bug is
localised (docs/validate.md, "Plain functions: NumPy, JAX")."""
import math

import numpy as np
import pytest
from scipy.special import erf

from minitofe.validate import compare, example_golden, read_bundle, record, recording


def layer_norm(x, w, b, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def block(p, x, i, H, keep=None, stage=None, fuse=True, bug=None, T=1):
    """Block i; with ``keep`` (a count) EViT's reduction of stage ``stage`` between attention and MLP."""
    k = f"blocks.{i}."
    B, N, C = x.shape
    h = record(k + "norm1", layer_norm(x, p[k + "norm1.weight"], p[k + "norm1.bias"]))
    qkv = h @ p[k + "attn.qkv.weight"].T + p[k + "attn.qkv.bias"]
    q, kk, v = qkv.reshape(B, N, 3, H, C // H).transpose(2, 0, 3, 1, 4)
    A = softmax(q @ kk.transpose(0, 1, 3, 2) / math.sqrt(C // H))                      # (B, H, N, N)
    a = record(k + "attn", (A @ v).transpose(0, 2, 1, 3).reshape(B, N, C) @ p[k + "attn.proj.weight"].T
               + p[k + "attn.proj.bias"])
    x = x + a
    if keep is not None:
        cls = A[:, :, 0, T:].mean(1)                                                    # (B, n)
        idx = np.sort(np.argsort(-cls, axis=1, kind="stable")[:, :keep], axis=1)
        record(f"stage.{stage}.cls_attn", cls)
        record(f"stage.{stage}.kept_idx", idx)
        cand = x[:, T:]
        kept = np.take_along_axis(cand, idx[..., None], 1)
        w = cls.copy()
        np.put_along_axis(w, idx, 0.0, 1)
        if bug == "fuse_mean":
            w = (w > 0) / (w > 0).sum(1, keepdims=True)
        fused = record(f"stage.{stage}.fused", (w[..., None] * cand).sum(1, keepdims=True))
        x = np.concatenate([x[:, :T], kept, fused] if fuse else [x[:, :T], kept], 1)
    h = layer_norm(x, p[k + "norm2.weight"], p[k + "norm2.bias"])
    f = record(k + "mlp", gelu(h @ p[k + "mlp.fc1.weight"].T + p[k + "mlp.fc1.bias"]) @ p[k + "mlp.fc2.weight"].T
               + p[k + "mlp.fc2.bias"])
    return record(k + "out", x + f)


def evit_infer(p, images, cfg, hp, bug=None):
    B, ps, C = len(images), cfg["patch_size"], cfg["embed_dim"]
    g = cfg["img_size"] // ps
    patches = images.reshape(B, cfg["in_chans"], g, ps, g, ps).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, -1)
    x = patches @ p["patch_embed.proj.weight"].reshape(C, -1).T + p["patch_embed.proj.bias"]
    x = record("embed", np.concatenate([np.broadcast_to(p["cls_token"], (B, 1, C)), x], 1) + p["pos_embed"])
    starts = hp["stages"]
    for i in range(starts[0]):
        x = block(p, x, i, cfg["num_heads"])
    for s, (lo, hi) in enumerate(zip(starts, starts[1:] + [cfg["depth"]])):
        n = x.shape[1] - 1
        K = max(1, min(n, math.ceil(hp["evit_keep_rate"] * n)))
        x = block(p, x, lo, cfg["num_heads"], K if K < n else None, s, hp["evit_fuse"], bug)
        for j in range(lo + 1, hi):
            x = block(p, x, j, cfg["num_heads"])
        record(f"stage.{s}.out", x)
    h = layer_norm(x[:, 0], p["norm.weight"], p["norm.bias"])
    return record("logits", h @ p["head.weight"].T + p["head.bias"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return read_bundle(example_golden(tmp_path_factory.mktemp("g") / "evit.safetensors", "evit", "topk"))


@pytest.mark.parametrize("bug, first", [(None, None), ("fuse_mean", "stage.0.fused")])
def test_plain_functions_record_by_name_and_compare(bundle, bug, first):
    params = {e.name[len("param."):]: bundle.arrays[e.name] for e in bundle.of_role("param")}
    with recording() as outputs:
        evit_infer(params, bundle.arrays["input.images"], bundle.meta["config"], bundle.meta["tofe"], bug)
    report = compare(bundle, dict(outputs))
    assert report["compared"] > 20 and report["passed"] == (bug is None)
    assert (report["first_divergence"] or {}).get("name") == first
