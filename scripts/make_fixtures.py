"""Write the golden timm fixtures in ``tests/fixtures/`` (STYLE.md §7: oracles optional, fixtures not).

Runs timm once, on small ViTs with random weights and a fixed seed, and saves for each config and
dtype one ``<name>_<dtype>.npz`` holding the inputs, the timm state dict, the logits, a few intermediate
activations and (float64) the gradient of ``sum(logits * R)`` with respect to every parameter and the
images. The default test run (``tests/test_timm_fixtures.py``) compares minitofe against these files
without torch.

This script imports torch, timm and NumPy only -- never minitofe -- so the fixtures do not depend on the
code they test. ``tests/test_timm_live.py`` reuses ``build_model`` and ``randomise_`` from here.

    /work/torchenv/bin/python scripts/make_fixtures.py            # (re)write tests/fixtures/*.npz
    /work/torchenv/bin/python scripts/make_fixtures.py --check    # regenerate in memory, compare, write nothing
"""
import argparse
import copy
import json
import pathlib
import sys

import numpy as np
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

FIXTURE_VERSION = 1
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
MAX_TOTAL_BYTES = 2 * 1024 * 1024

# Field names are minitofe's ViTConfig fields (== timm's constructor arguments, plus ``distilled``).
CONFIGS = {
    # (a) DeiT-like: class token, qkv bias, no LayerScale.
    "deit_cls": dict(img_size=8, patch_size=2, in_chans=3, num_classes=5, embed_dim=12, depth=2,
                     num_heads=3, mlp_ratio=4.0, qkv_bias=True, init_values=None, class_token=True,
                     global_pool="token", distilled=False),
    # (b) distilled DeiT (class + distillation tokens, two heads averaged) with LayerScale.
    "deit_distilled_ls": dict(img_size=8, patch_size=2, in_chans=3, num_classes=4, embed_dim=16, depth=2,
                              num_heads=2, mlp_ratio=2.0, qkv_bias=True, init_values=0.1, class_token=True,
                              global_pool="token", distilled=True),
    # (c) no class token, mean of patch tokens + fc_norm (timm has no ``norm`` then), no qkv bias, grey.
    "avg_nocls": dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=2,
                      num_heads=2, mlp_ratio=3.0, qkv_bias=False, init_values=None, class_token=False,
                      global_pool="avg", distilled=False),
}
BATCH = {"deit_cls": 2, "deit_distilled_ls": 3, "avg_nocls": 2}
SEED = {"deit_cls": 0, "deit_distilled_ls": 1, "avg_nocls": 2}


def build_model(cfg):
    """A timm ViT (float32, eval mode, timm's own init) for a minitofe-style config dict."""
    kw = {k: v for k, v in cfg.items() if k != "distilled"}
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


def run_timm(model, images, R=None):
    """Forward (and, if R is given, backward of sum(logits * R)) -> dict of named NumPy arrays."""
    out = {"images": _np(images)}
    for k, v in model.state_dict().items():
        out["param/" + k] = _np(v)
    with torch.no_grad():
        embed = model._pos_embed(model.patch_embed(images))        # (B, N, C), eval: no dropout
        out["act/embed"] = _np(embed)
        out["act/block0"] = _np(model.blocks[0](embed))
        features = model.forward_features(images)                  # after the final norm (or none for avg)
        out["act/features"] = _np(features)
        out["act/pre_logits"] = _np(model.forward_head(features, pre_logits=True))
    if R is None:
        with torch.no_grad():
            out["logits"] = _np(model(images))
        return out
    model.zero_grad(set_to_none=True)
    x = images.clone().requires_grad_(True)
    logits = model(x)
    (logits * R).sum().backward()
    out["logits"] = _np(logits)
    out["R"] = _np(R)
    for k, p in model.named_parameters():
        out["grad/" + k] = _np(p.grad)
    out["grad/images"] = _np(x.grad)
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
    images = torch.randn(B, cfg["in_chans"], cfg["img_size"], cfg["img_size"], generator=gen, dtype=torch.float64)
    R = torch.randn(B, cfg["num_classes"], generator=gen, dtype=torch.float64)
    meta = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "timm_version": np.array(timm.__version__),
        "torch_version": np.array(torch.__version__),
        "numpy_version": np.array(np.__version__),
        "fixture_version": np.array(FIXTURE_VERSION),
        "seed": np.array(SEED[name]),
        "fused_attn": np.array(bool(model.blocks[0].attn.fused_attn)),
    }
    f64 = run_timm(model, images, R)
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
