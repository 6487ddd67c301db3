"""Run minitofe's timm conversion over timm's registered ViT architectures and ``VisionTransformer``
constructor options, and say for each whether minitofe computes exactly what timm computes or refuses.

Every case is a timm model in float64 with random weights (every parameter perturbed, nothing left at
0 or 1: ``make_fixtures.randomise_``), reduced to ``DEPTH`` blocks and a small non-square image, run
through two entry points:

- ``live``: ``minitofe.io.from_timm_model(model)``;
- ``file``: the state dict saved to ``.safetensors`` by torch (timm's own metadata, nothing from
  minitofe), read back by ``minitofe.io.load_weights`` with the architecture stated: the registered
  name (``--model NAME``: built on torch's meta device with the file's depth and class count, and the
  image size stated), or a meta-device timm module with the same arguments (the constructor options,
  and the DeiT names that are also minitofe presets, whose preset says depth 12 at 224).

Outcomes: ``equal`` (logits or pooled features AND ``forward_features`` within ``ATOL`` = 1e-12),
``refused`` (a ValueError/TypeError naming what minitofe does not compute), ``WRONG`` (loaded and
differs: must never happen; the tests fail on it).

Run with a Python that has torch and timm (``pip install ".[torch]"``):

    python scripts/timm_matrix.py               # everything (a few minutes)
    python scripts/timm_matrix.py --only 'deit*' 'opt:*'
"""
import argparse
import collections
import fnmatch
import functools
import importlib.util
import pathlib
import sys
import tempfile

import numpy as np
import torch
import timm
from safetensors.torch import save_file
from timm.layers import LayerNorm, RmsNorm, SwiGLUPacked
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock, VisionTransformer

from minitofe.config import PRESETS
from minitofe.io import from_timm_model, load_weights, read_timm_module
from minitofe.nn.vit import vit_forward, vit_forward_features

ATOL = 1e-12
DEPTH = 2
_spec = importlib.util.spec_from_file_location("make_fixtures", pathlib.Path(__file__).with_name("make_fixtures.py"))
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)

SMALL = dict(img_size=(8, 12), patch_size=4, embed_dim=24, depth=DEPTH, num_heads=3, num_classes=5, mlp_ratio=2.0)
OPTIONS = {                                  # constructor arguments on top of SMALL
    "plain": {}, "qkv_bias=False": dict(qkv_bias=False), "init_values (LayerScale)": dict(init_values=0.1),
    "reg_tokens=4": dict(reg_tokens=4), "no_embed_class": dict(no_embed_class=True),
    "reg_tokens=4 + no_embed_class (DINOv2-reg)": dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),
    "pre_norm (CLIP)": dict(pre_norm=True),
    "CLIP: pre_norm, eps 1e-5, quick_gelu": dict(pre_norm=True, norm_layer=functools.partial(LayerNorm, eps=1e-5),
                                                act_layer="quick_gelu"),
    "norm eps 1e-5": dict(norm_layer=functools.partial(LayerNorm, eps=1e-5)),
    "act_layer=gelu_tanh": dict(act_layer="gelu_tanh"), "global_pool=avg": dict(global_pool="avg"),
    "avg, fc_norm=False (gap)": dict(global_pool="avg", fc_norm=False),
    "avg, no class token": dict(global_pool="avg", class_token=False),
    "avg, no class token, reg_tokens=4": dict(global_pool="avg", class_token=False, reg_tokens=4),
    "token, fc_norm=True": dict(fc_norm=True), "avg, pool_include_prefix": dict(global_pool="avg",
                                                                                pool_include_prefix=True),
    "final_norm=False": dict(final_norm=False), "avg, final_norm=False": dict(global_pool="avg", final_norm=False),
    "num_classes=0": dict(num_classes=0), "num_classes=0, avg": dict(num_classes=0, global_pool="avg"),
    "square image": dict(img_size=12), "dynamic_img_size": dict(dynamic_img_size=True),
    "dynamic_img_pad": dict(dynamic_img_pad=True), "drop rates (eval)": dict(drop_rate=0.2, drop_path_rate=0.2,
                                                                             patch_drop_rate=0.2),
    "fix_init": dict(fix_init=True),
    # refused: minitofe does not compute these
    "block_fn=ResPostBlock (post-norm)": dict(block_fn=ResPostBlock),
    "block_fn=ParallelScalingBlock": dict(block_fn=ParallelScalingBlock), "qk_norm": dict(qk_norm=True),
    "scale_attn_norm": dict(scale_attn_norm=True), "scale_mlp_norm": dict(scale_mlp_norm=True),
    "global_pool=max": dict(global_pool="max"), "global_pool=avgmax": dict(global_pool="avgmax"),
    "global_pool=map": dict(global_pool="map"), "global_pool=''": dict(global_pool=""),
    "norm_layer=RmsNorm": dict(norm_layer=RmsNorm), "mlp_layer=SwiGLUPacked": dict(mlp_layer=SwiGLUPacked,
                                                                                   act_layer="silu"),
    "proj_bias=False": dict(proj_bias=False), "pos_embed='none'": dict(pos_embed="none"),
    "embed_norm_layer": dict(embed_norm_layer="layernorm"),
}


def registered():
    return timm.list_models(module=["vision_transformer", "deit"])


def _small_image(name):
    p = timm.create_model(name, pretrained=False, depth=1, device="meta").patch_embed.patch_size
    return (2 * p[0], 3 * p[1])


def build(case, device="meta"):
    """'name' (registered) or 'opt:<option>' -> (float64 timm model on ``device``, its file statement,
    the options stated with it). Built on the meta device first (no memory, no init), so that what
    minitofe refuses is never materialised."""
    torch.manual_seed(0)
    dd = dict(device=device, dtype=torch.float64)
    if case.startswith("opt:"):
        kw = dict(SMALL, **OPTIONS[case[4:]])
        return VisionTransformer(**kw, **dd), VisionTransformer(**kw, device="meta"), {}
    img = _small_image(case)
    model = timm.create_model(case, pretrained=False, depth=DEPTH, img_size=img, **dd)
    if case in PRESETS:           # a minitofe preset states depth 12 at 224: state the reduced model instead
        return model, timm.create_model(case, pretrained=False, depth=DEPTH, img_size=img, device="meta"), {}
    return model, case, {"img_size": img}


def materialise(model):
    """meta -> CPU, every parameter random (make_fixtures.randomise_; LayerScale around 0.1), eval mode."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.1)
    return make_fixtures.randomise_(model, torch.Generator().manual_seed(1)).eval()


def _run_timm(model):
    h, w = model.patch_embed.img_size
    x = torch.randn(2, model.patch_embed.proj.in_channels, h, w, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    with torch.no_grad():
        return x.numpy(), model(x).numpy(), model.forward_features(x).numpy()


def compare(params, cfg, x, out, features):
    got = vit_forward(params, x, cfg)[0]
    feats = vit_forward_features(params, x, cfg)[0]
    if got.shape != out.shape or feats.shape != features.shape:
        return float("inf")
    return float(max(np.abs(got - out).max(), np.abs(feats - features).max()))


def outcome(load, x, out, features):
    """-> ('equal' | 'refused' | 'WRONG', detail)."""
    try:
        params, cfg = load()
    except (ValueError, TypeError) as e:
        return "refused", str(e).split("\n")[0]
    err = compare(params, cfg, x, out, features)
    return ("equal", f"{err:.1e}") if err <= ATOL else ("WRONG", f"max |diff| {err:.2e}")


def run_case(case, folder):
    """-> {'live': (outcome, detail), 'file': (outcome, detail)} for one case. A model minitofe refuses
    is judged on its meta-device twin (the reader looks at classes, attributes and shapes only) and its
    file holds zeros of the right shapes: a refusal cannot depend on the values. If such a file loads
    anyway, the case is run again on real random weights."""
    try:
        probe, statement, stated = build(case)
    except Exception as e:                          # timm itself cannot build it at this size
        return {"build": ("skipped", f"timm: {type(e).__name__}: {e}".split("\n")[0])}
    path = pathlib.Path(folder) / "model.safetensors"
    file_load = lambda: load_weights(path, model=statement, **stated)[:2]   # noqa: E731
    try:
        read_timm_module(probe)
    except (ValueError, TypeError) as e:
        save_file({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in probe.state_dict().items()}, str(path),
                  metadata={"format": "pt"})
        try:
            file_load()
        except (ValueError, TypeError) as f:
            return {"live": ("refused", str(e)), "file": ("refused", str(f))}
    model = materialise(probe)
    x, out, features = _run_timm(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"})
    return {"live": outcome(lambda: from_timm_model(model), x, out, features),
            "file": outcome(file_load, x, out, features)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="fnmatch patterns of case names ('opt:*' for the options)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = registered() + [f"opt:{o}" for o in OPTIONS]
    if args.only:
        cases = [c for c in cases if any(fnmatch.fnmatch(c, p) for p in args.only)]
    counts = collections.Counter()
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            for entry, (result, detail) in run_case(case, folder).items():
                counts[result] += 1
                print(f"{case:48s} {entry:5s} {result:8s} {detail}", flush=True)
    print(f"{len(cases)} cases: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if counts["WRONG"] else 0


if __name__ == "__main__":
    sys.exit(main())
