"""Write the golden timm fixtures in ``tests/fixtures/`` (torch is optional for the tests; these files are not).

Runs timm once, on small ViTs with random weights and a fixed seed, and saves for each config and
dtype one ``<name>_<dtype>.npz`` holding the inputs, the timm state dict, the logits (the pooled
features for a model without classifier), a few intermediate activations and (float64) the gradients of
``sum(logits * R)`` and of ``sum(forward_features * R_features)`` with respect to every parameter and
the images. The configs cover the plain DeiT layouts and the timm options minitofe supports beyond them
(register tokens, ``no_embed_class``, ``pre_norm``, head-less, non-square images, LayerNorm eps, the
activations, avg pooling without ``fc_norm``). The default test run (``tests/test_timm_fixtures.py``)
compares minitofe against these files without torch.

This script imports torch, timm and NumPy only -- never minitofe -- so the fixtures do not depend on the
code they test. ``tests/test_timm_live.py`` reuses ``build_model`` and ``randomise_`` from here.

Run with a Python that has torch and timm (``pip install ".[torch]"``):

    python scripts/make_fixtures.py            # (re)write tests/fixtures/*.npz
    python scripts/make_fixtures.py --check    # regenerate in memory, compare, write nothing
"""
import argparse
import copy
import functools
import json
import pathlib
import sys

import numpy as np
import timm
import torch
from timm.layers import LayerNorm
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

FIXTURE_VERSION = 2
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
MAX_TOTAL_BYTES = 2 * 1024 * 1024

# Field names are minitofe's ViTConfig fields (== timm's constructor arguments, plus ``distilled`` for
# VisionTransformerDistilled and ``norm_eps`` for timm's ``norm_layer=partial(LayerNorm, eps=...)``).
_PLAIN = dict(in_chans=3, depth=2, qkv_bias=True, init_values=None, class_token=True, global_pool="token",
              distilled=False)
CONFIGS = {
    # (a) DeiT-like: class token, qkv bias, no LayerScale.
    "deit_cls": dict(_PLAIN, img_size=8, patch_size=2, num_classes=5, embed_dim=12, num_heads=3, mlp_ratio=4.0),
    # (b) distilled DeiT (class + distillation tokens, two heads averaged) with LayerScale.
    "deit_distilled_ls": dict(_PLAIN, img_size=8, patch_size=2, num_classes=4, embed_dim=16, num_heads=2,
                              mlp_ratio=2.0, init_values=0.1, distilled=True),
    # (c) no class token, mean of patch tokens + fc_norm (timm has no ``norm`` then), no qkv bias, grey.
    "avg_nocls": dict(_PLAIN, img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, num_heads=2,
                      mlp_ratio=3.0, qkv_bias=False, class_token=False, global_pool="avg"),
    # (d) DINOv2-reg-like backbone: no classifier, 4 register tokens, pos_embed on the patches only,
    #     LayerScale, non-square images (8x6: a 4x3 patch grid).
    "dinov2_reg_headless": dict(_PLAIN, img_size=[8, 6], patch_size=2, num_classes=0, embed_dim=12, num_heads=2,
                                mlp_ratio=4.0, init_values=1e-5, reg_tokens=4, no_embed_class=True),
    # (e) CLIP-like: norm_pre after the embedding (no patch bias), LayerNorm eps 1e-5, quick_gelu.
    "clip_prenorm": dict(_PLAIN, img_size=[6, 8], patch_size=2, num_classes=4, embed_dim=12, num_heads=3,
                         mlp_ratio=4.0, pre_norm=True, norm_eps=1e-5, act_layer="quick_gelu"),
    # (f) timm's *_gap_*: avg pooling with the norm before pooling (fc_norm=False), a class token and a
    #     register token that are not pooled, gelu_tanh.
    "gap_reg_nofcnorm": dict(_PLAIN, img_size=8, patch_size=2, in_chans=2, num_classes=3, embed_dim=8,
                             num_heads=2, mlp_ratio=2.0, global_pool="avg", fc_norm=False, reg_tokens=1,
                             act_layer="gelu_tanh"),
}
BATCH = {"deit_cls": 2, "deit_distilled_ls": 3, "avg_nocls": 2, "dinov2_reg_headless": 2, "clip_prenorm": 2,
         "gap_reg_nofcnorm": 2}
SEED = {name: i for i, name in enumerate(CONFIGS)}


def build_model(cfg):
    """A timm ViT (float32, eval mode, timm's own init) for a minitofe-style config dict."""
    kw = {k: v for k, v in cfg.items() if k not in ("distilled", "norm_eps")}
    if isinstance(kw["img_size"], list):
        kw["img_size"] = tuple(kw["img_size"])
    if "norm_eps" in cfg:
        kw["norm_layer"] = functools.partial(LayerNorm, eps=cfg["norm_eps"])
    model = (VisionTransformerDistilled if cfg["distilled"] else VisionTransformer)(**kw)
    return model.eval()


def randomise_(model, gen):
    """Overwrite EVERY parameter with seeded random values so that nothing is trivially 0 or 1:
    LayerNorm weights 1 + 0.2 N(0,1), biases 0.1 N(0,1), Linear/conv weights N(0,1)/sqrt(fan_in),
    cls/dist/pos tokens 0.5 N(0,1), LayerScale gammas init_values * (1 + 0.5 N(0,1)) (not constant)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            parts = name.split(".")
            if parts[-1] == "gamma":
                v = float(p.flatten()[0]) * (1.0 + 0.5 * z)
            elif len(parts) >= 2 and "norm" in parts[-2]:
                v = 1.0 + 0.2 * z if parts[-1] == "weight" else 0.1 * z
            elif parts[-1] == "weight":
                v = z / np.sqrt(np.prod(p.shape[1:]))
            elif parts[-1] == "bias":
                v = 0.1 * z
            else:                                           # cls_token, dist_token, pos_embed
                v = 0.5 * z
            p.copy_(v.to(p.dtype))
    return model


def _np(t):
    return t.detach().cpu().numpy().copy()


def _grads(model, images, fn, R, prefix):
    """Gradients of sum(fn(images) * R) for every parameter and the images, keyed ``prefix + name``."""
    model.zero_grad(set_to_none=True)
    x = images.clone().requires_grad_(True)
    (fn(x) * R).sum().backward()
    out = {prefix + k: _np(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), dtype=np.float64)
           for k, p in model.named_parameters()}          # a parameter the output ignores: zeros
    out[prefix + "images"] = _np(x.grad)
    return out


def run_timm(model, images, R=None, R_features=None):
    """Forward (and, if R is given, the gradients of sum(logits * R) and sum(features * R_features))
    -> dict of named NumPy arrays."""
    out = {"images": _np(images)}
    for k, v in model.state_dict().items():
        out["param/" + k] = _np(v)
    with torch.no_grad():
        embed = model.norm_pre(model._pos_embed(model.patch_embed(images)))   # what enters blocks.0
        out["act/embed"] = _np(embed)
        out["act/block0"] = _np(model.blocks[0](embed))
        features = model.forward_features(images)                  # after the final norm (if any)
        out["act/features"] = _np(features)
        out["act/pre_logits"] = _np(model.forward_head(features, pre_logits=True))
        out["logits"] = _np(model(images))
    if R is not None:
        out["R"], out["R_features"] = _np(R), _np(R_features)
        out.update(_grads(model, images, model, R, "grad/"))
        out.update(_grads(model, images, model.forward_features, R_features, "grad_features/"))
    return out


def make(name):
    """-> {"<name>_float64": arrays, "<name>_float32": arrays} for one config."""
    cfg = CONFIGS[name]
    gen = torch.Generator().manual_seed(SEED[name])
    torch.manual_seed(SEED[name])                                  # timm's own init (overwritten anyway)
    model = randomise_(build_model(cfg).double(), gen)
    if set(model.state_dict()) != {k for k, _ in model.named_parameters()}:
        raise RuntimeError(f"{name}: state dict has buffers or missing parameters")
    B = BATCH[name]
    hw = tuple(cfg["img_size"]) if isinstance(cfg["img_size"], list) else (cfg["img_size"],) * 2
    images = torch.randn(B, cfg["in_chans"], *hw, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out_shape, feature_shape = model(images).shape, model.forward_features(images).shape
    R = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    R_features = torch.randn(feature_shape, generator=gen, dtype=torch.float64)
    meta = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "timm_version": np.array(timm.__version__),
        "torch_version": np.array(torch.__version__),
        "numpy_version": np.array(np.__version__),
        "fixture_version": np.array(FIXTURE_VERSION),
        "seed": np.array(SEED[name]),
        "fused_attn": np.array(bool(model.blocks[0].attn.fused_attn)),
    }
    f64 = run_timm(model, images, R, R_features)
    model32 = copy.deepcopy(model).float()                         # the same weights, rounded to float32
    f32 = run_timm(model32, images.float())
    return {f"{name}_float64": {**meta, "dtype": np.array("float64"), **f64},
            f"{name}_float32": {**meta, "dtype": np.array("float32"), **f32}}


def _same(a, b):
    """Arrays equal (float arrays up to a few ulps: another BLAS may round differently)."""
    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype.kind == "f":
            if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5 if x.dtype == np.float32 else 1e-12, atol=0):
                return False
        elif k not in ("timm_version", "torch_version", "numpy_version") and not np.array_equal(x, y):
            return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="regenerate in memory and compare with the files")
    ap.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)                                       # fewer sources of rounding differences
    files = {}
    for name in CONFIGS:
        files.update(make(name))
    if args.check:
        bad = []
        for stem, arrays in files.items():
            path = args.out / f"{stem}.npz"
            if not path.exists():
                bad.append(f"{path} missing")
                continue
            with np.load(path, allow_pickle=False) as f:
                if not _same(arrays, {k: f[k] for k in f.files}):
                    bad.append(f"{path} differs")
        print("\n".join(bad) or f"all {len(files)} fixtures reproduce")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for stem, arrays in files.items():
        path = args.out / f"{stem}.npz"
        np.savez_compressed(path, **arrays)
        total += path.stat().st_size
        print(f"{path.name:32s} {path.stat().st_size / 1024:7.1f} KiB  {len(arrays)} arrays")
    print(f"total {total / 1024:.1f} KiB (timm {timm.__version__}, torch {torch.__version__})")
    if total >= MAX_TOTAL_BYTES:
        print(f"fixtures are {total} bytes, over the {MAX_TOTAL_BYTES} byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
