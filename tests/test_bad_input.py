"""Bad input at every public entry point, as one table (``CASES``), mirrored for users in
``docs/bad-input.md`` (``test_doc_lists_exactly_the_cases`` keeps the two in step).

A row is ``Case(id, entry, wrong, error, match, run)``; ``run(ctx)`` does the call on the shared tiny
files and models of the ``ctx`` fixture. ``error`` says what must happen:

- an exception class: the call raises exactly that type, its message matching the regex ``match``;
- an int: a CLI row, run in-process through ``minitofe.cli.main``: that exit code (2 bad input,
  1 runtime failure), ``minitofe: error:`` (argparse: ``minitofe COMMAND: error:``) and ``match`` on
  stderr, no traceback;
- ``None``: the input must WORK; ``run`` asserts the result (same as the clean input, or the documented
  conversion of an image file).
"""
import contextlib
import gzip
import io
import json
import pathlib
import re
import struct
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.numpy as stnp
from safetensors import safe_open
from PIL import Image

import minitofe
from minitofe import data as D
from minitofe import validate as VAL
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.io import weights as W
from minitofe.io.timm import to_timm_state_dict
from minitofe.nn.vit import vit_features_backward
from minitofe.methods import inference as tofe_inference
from minitofe.train import TrainConfig

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2)
TCFG = minitofe.ToFeConfig(stages=(1, 2, 3), keep_ratios=(0.5, 0.5, 0.5))
OTHER = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=12, depth=4,
                  num_heads=3)                                      # a DeiT-tiny-like small RGB model, 3 heads
SAME = 1e-12      # float64: one image alone vs. inside a batch, or a strided / read-only copy (BLAS rounding)

Case = namedtuple("Case", "id entry wrong error match run")


# ---------------------------------------------------------------- shared tiny inputs
def _idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def _files(d, model32, rng):
    minitofe.save_model(d / "w.npz", model32)
    other = minitofe.new_model(OTHER, minitofe.ToFeConfig(method="dense"), rng, np.float32)
    W.save_safetensors(d / "other.safetensors", other.params, OTHER)
    stnp.save_file(to_timm_state_dict(other.params, OTHER), str(d / "timm.safetensors"), metadata={"format": "pt"})
    headless = minitofe.new_model(CFG.replace(num_classes=0), minitofe.ToFeConfig(method="dense"), rng, np.float32)
    minitofe.save_model(d / "headless.npz", headless)
    qk = dict(to_timm_state_dict(other.params, OTHER), **{"blocks.0.attn.q_norm.weight": np.ones(4, np.float32)})
    stnp.save_file(qk, str(d / "qknorm.safetensors"), metadata={"format": "pt"})
    (d / "a.txt").write_text("not weights, not an image")
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 but not a zip")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / "grey.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(d / "i16.png")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(d / "one.png")
    for c in ("a", "b"):
        (d / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / "data" / c / f"{i}.png")
    (d / "fm").mkdir()
    for split in ("train", "t10k"):
        _idx(d / "fm" / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28)).astype(np.uint8), 0x803)
        _idx(d / "fm" / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 4, 4).astype(np.uint8), 0x801)
    (d / "bad.json").write_text('{"stepz": 3}')


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    model = minitofe.new_model(CFG, TCFG, np.random.default_rng(0), np.float64)
    x = rng.standard_normal((3, 1, 8, 8))
    labels = np.array([0, 1, 3])
    noise = minitofe.draw_noise(np.random.default_rng(2), CFG, TCFG, 3, np.float64)
    teacher = minitofe.teacher_forward(model.backbone_params(), x, CFG, (1, 2, 3))
    _files(d, minitofe.new_model(CFG, TCFG, np.random.default_rng(0), np.float32), rng)
    dense = minitofe.Model(model.backbone_params(), CFG, minitofe.ToFeConfig(method="dense"))
    other = minitofe.new_model(OTHER, minitofe.ToFeConfig(method="dense"), rng, np.float64)
    return SimpleNamespace(d=d, m=model, x=x, y=labels, noise=noise, teacher=teacher, dense=dense,
                           other=other.params)


# ---------------------------------------------------------------- helpers for the rows
def cli(*argv):
    """A CLI row: ``{d}`` in an argument is the fixture's folder. -> (exit code, stderr)."""
    def run(c):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a).format(d=c.d) for a in argv])
        return code, err.getvalue()
    return run


def with_model(c, **changes):
    """The fixture's model with some params replaced (``None`` drops the key)."""
    params = {k: v for k, v in {**c.m.params, **changes}.items() if v is not None}
    return minitofe.Model(params, c.m.cfg, c.m.tofe)


def images_like(c, **kw):
    return np.zeros(kw.pop("shape", c.x.shape), kw.pop("dtype", np.float64))


def poke(c, value):
    x = c.x.copy()
    x[1, 0, 3, 4] = value
    return x


def strided_read_only(x):
    """The same values as ``x``: every other pixel of a bigger Fortran-order array, not writeable."""
    big = np.zeros(x.shape[:2] + (2 * x.shape[2], 2 * x.shape[3]), order="F")
    big[:, :, ::2, ::2] = x
    view = big[:, :, ::2, ::2]
    view.flags.writeable = False
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def read_only_params(params):
    out = {k: v.copy() for k, v in params.items()}
    for v in out.values():
        v.flags.writeable = False
    return out


def batch_of_one_predict(c):
    for inference in ("topk", "threshold"):
        for fast in (False, True):
            big, _ = minitofe.predict(c.m, c.x, inference=inference, fast=fast)
            one, info = minitofe.predict(c.m, c.x[1:2], inference=inference, fast=fast)
            assert one.shape == (1, 4) and info["macs"].shape == (1,)
            np.testing.assert_allclose(one[0], big[1], rtol=0, atol=SAME)


def teacher_of(c, images):
    return minitofe.teacher_forward(c.m.backbone_params(), images, CFG, (1, 2, 3))


def batch_of_one_train(c):
    out, cache = minitofe.train_forward(c.m, c.x, c.y, c.noise, c.teacher)
    one, cache1 = minitofe.train_forward(c.m, c.x[1:2], c.y[1:2], [n[1:2] for n in c.noise], teacher_of(c, c.x[1:2]))
    np.testing.assert_allclose(one["logits"][0], out["logits"][1], rtol=0, atol=SAME)
    assert all(np.array_equal(a[1], b[0]) for a, b in zip(out["masks"], one["masks"]))
    _, grads = minitofe.train_backward(cache1)
    assert set(grads) == set(c.m.params) and all(np.all(np.isfinite(g)) for g in grads.values())


def strided_predict(c):
    for fast in (False, True):
        ref, _ = minitofe.predict(c.m, c.x, fast=fast)
        model = minitofe.Model(read_only_params(c.m.params), CFG, TCFG)
        got, _ = minitofe.predict(model, strided_read_only(c.x), fast=fast)
        np.testing.assert_allclose(got, ref, rtol=0, atol=SAME)


def strided_train(c):
    for fast in (False, True):
        _, cache = minitofe.train_forward(c.m, c.x, c.y, c.noise, c.teacher, fast=fast)
        ref = minitofe.train_backward(cache)[1]
        model = minitofe.Model(read_only_params(c.m.params), CFG, TCFG)
        noise = [strided_read_only(n[None])[0] for n in c.noise]
        _, cache = minitofe.train_forward(model, strided_read_only(c.x), c.y, noise, c.teacher, fast=fast)
        got = minitofe.train_backward(cache)[1]
        assert all(np.allclose(got[k], ref[k], rtol=0, atol=SAME) for k in ref)


def strided_vit(c):
    params = c.m.backbone_params()
    for fast in (False, True):
        ref, _ = minitofe.vit_forward(params, c.x, CFG, fast=fast)
        got, cache = minitofe.vit_forward(read_only_params(params), strided_read_only(c.x), CFG, fast=fast)
        np.testing.assert_allclose(got, ref, rtol=0, atol=SAME)
        dimages, _ = minitofe.vit_backward(np.ones_like(got), cache)
        assert dimages.shape == c.x.shape


def load_one(c, name, grey):
    x = D.load_images([c.d / name], 8, 0.0, 1.0, grey=grey)
    assert x.dtype == np.float32 and x.shape == (1, 1 if grey else 3, 8, 8)
    return x[0]


def grey_as_rgb(c):
    rgb, grey = load_one(c, "grey.png", grey=False), load_one(c, "grey.png", grey=True)
    assert all(np.array_equal(rgb[i], grey[0]) for i in range(3))       # grey -> R = G = B


def rgba_drops_alpha(c):
    with Image.open(c.d / "rgba.png") as im:
        want = np.asarray(im, np.float32)[:, :, :3].transpose(2, 0, 1) / 255.0
    np.testing.assert_array_equal(load_one(c, "rgba.png", grey=False), want)


def sixteen_bit_scaled(c):
    want = np.round(np.arange(64).reshape(8, 8) * 1000 * 255.0 / 65535.0) / 255.0
    got = load_one(c, "i16.png", grey=True)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.max() < 1.0                                              # not clipped to white


def one_pixel_upscaled(c):
    got = load_one(c, "one.png", grey=True)
    np.testing.assert_allclose(got, 200 / 255.0, rtol=0, atol=1e-6)


def vit_backward_of(c, dlogits):
    _, cache = minitofe.vit_forward(c.m.backbone_params(), c.x, CFG)
    return minitofe.vit_backward(dlogits, cache)


def train_forward_of(c, model=None, x=None, y=None, noise=None, teacher="same", tau=None):
    return minitofe.train_forward(model or c.m, c.x if x is None else x, c.y if y is None else y,
                                  c.noise if noise is None else noise,
                                  c.teacher if isinstance(teacher, str) else teacher, tau=tau)


def bundles(c):
    """Golden bundles of the fixture's model in ``c.d`` (made once), broken copies of them, and other
    implementations' outputs; returns ``c``."""
    d = c.d
    if (d / "golden.safetensors").exists():
        return c
    good = VAL.make_golden(d / "golden.safetensors", c.m, c.x, c.y)
    with safe_open(good, framework="np") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    nan = arrays["stage.0.out"].copy()
    nan[0, 0, 0] = np.nan
    for name, changed, m in (("g-missing", {k: v for k, v in arrays.items() if k != "blocks.1.out"}, meta),
                             ("g-shape", {**arrays, "logits": arrays["logits"].T.copy()}, meta),
                             ("g-nan", {**arrays, "stage.0.out": nan}, meta),
                             ("g-version", arrays, {**meta, "minitofe_version": "0.0.1"})):
        stnp.save_file(changed, str(d / f"{name}.safetensors"), metadata=m)
    (d / "g-cut.safetensors").write_bytes((d / "golden.safetensors").read_bytes()[:5000])
    (d / "vit.json").write_text(json.dumps(CFG.to_dict()))
    return c


def theirs(c, **changes):
    """The bundle's own forward/backward tensors with some replaced (``None`` drops the name)."""
    b = VAL.read_bundle(bundles(c).d / "golden.safetensors")
    out = {e.name: b.arrays[e.name].copy() for e in b.of_role("forward", "backward")}
    return {k: v for k, v in {**out, **changes}.items() if v is not None}


def compare_reports(c, name, match, **changes):
    """A divergence, not an error: the report fails and names ``name`` first, its text matching ``match``."""
    report = VAL.compare(bundles(c).d / "golden.safetensors", theirs(c, **changes))
    assert not report["passed"] and report["first_divergence"]["name"] == name, report["first_divergence"]
    assert re.search(match, VAL.format_report(report)), VAL.format_report(report)


def with_nan(a):
    a = a.copy()
    a.flat[1] = np.nan
    return a


def compare_any_version(c):
    bundle = bundles(c).d / "g-version.safetensors"
    assert VAL.compare(bundle, theirs(c), any_version=True)["passed"]


def golden_of(c, name, **kw):
    return VAL.make_golden(c.d / name, kw.pop("model", c.m), c.x, c.y, **kw)


TRAIN = ("train", "--init", "{d}/w.npz", "--no-progress", "--steps", "1", "--batch", "2", "--warmup-steps", "0")
ON_FOLDER = ("--data", "{d}/data")
PRED = ("--weights", "{d}/w.npz")
V, T_ = ValueError, TypeError

# ---------------------------------------------------------------- the table
CASES = [
    # ---- ViTConfig / ToFeConfig / TrainConfig construction
    Case("vitconfig-negative-depth", "ViTConfig", "depth=-1", V, r"depth must be a positive int, got -1",
         lambda c: ViTConfig(depth=-1)),
    Case("vitconfig-float-depth", "ViTConfig", "depth=4.0", V, r"depth must be a positive int, got 4.0",
         lambda c: ViTConfig(depth=4.0)),
    Case("vitconfig-heads-do-not-divide", "ViTConfig", "embed_dim 10, 4 heads", V,
         r"embed_dim 10 is not divisible by num_heads 4", lambda c: CFG.replace(embed_dim=10, num_heads=4)),
    Case("vitconfig-patch-does-not-divide", "ViTConfig", "img_size 9, patch 2", V,
         r"img_size 9 is not a multiple of patch_size 2", lambda c: CFG.replace(img_size=9)),
    Case("vitconfig-unknown-pool", "ViTConfig", "global_pool='max'", V, r"global_pool must be 'token' or 'avg'",
         lambda c: CFG.replace(global_pool="max")),
    Case("vitconfig-distilled-registers", "ViTConfig", "distilled=True with reg_tokens=4", V,
         r"distilled=True .* does not combine with reg_tokens", lambda c: CFG.replace(distilled=True, reg_tokens=4)),
    Case("vitconfig-unknown-activation", "ViTConfig", "act_layer='relu'", V,
         r"act_layer must be one of \['gelu', 'gelu_tanh', 'quick_gelu'\], got 'relu'",
         lambda c: CFG.replace(act_layer="relu")),
    Case("vitconfig-from-dict-string", "ViTConfig.from_dict", "a JSON string instead of a dict", T_,
         r"ViTConfig.from_dict needs a dict, got str", lambda c: ViTConfig.from_dict(json.dumps(CFG.to_dict()))),
    Case("tofeconfig-unknown-method", "ToFeConfig", "method='tome'", V, r"unknown method 'tome'; choose one of",
         lambda c: minitofe.ToFeConfig(method="tome")),
    Case("tofeconfig-keep-ratio-above-1", "ToFeConfig", "keep_ratios (1.5, ...)", V,
         r"keep_ratios must lie in \(0, 1\], got \(1.5", lambda c: TCFG.replace(keep_ratios=(1.5, 0.5, 0.5))),
    Case("tofeconfig-keep-ratio-zero", "ToFeConfig", "keep_ratios (0, ...)", V,
         r"keep_ratios must lie in \(0, 1\], got \(0.0", lambda c: TCFG.replace(keep_ratios=(0, 0.5, 0.5))),
    Case("tofeconfig-keep-ratio-negative", "ToFeConfig", "keep_ratios (-0.2, ...)", V,
         r"keep_ratios must lie in \(0, 1\]", lambda c: TCFG.replace(keep_ratios=(-0.2, 0.5, 0.5))),
    Case("tofeconfig-keep-ratios-scalar", "ToFeConfig", "keep_ratios=0.5 (not a tuple)", T_,
         r"keep_ratios must be a tuple, got float 0.5", lambda c: minitofe.ToFeConfig(keep_ratios=0.5)),
    Case("tofeconfig-target-ratio-zero", "ToFeConfig", "target_ratio=0", V, r"target_ratio must lie in \(0, 1\]",
         lambda c: minitofe.ToFeConfig(target_ratio=0.0)),
    Case("tofeconfig-target-ratio-above-1", "ToFeConfig", "target_ratio=1.2", V,
         r"target_ratio must lie in \(0, 1\], got 1.2", lambda c: minitofe.ToFeConfig(target_ratio=1.2)),
    Case("tofeconfig-stages-unsorted", "ToFeConfig", "stages (3, 1, 2)", V, r"strictly increasing.*\(3, 1, 2\)",
         lambda c: TCFG.replace(stages=(3, 1, 2))),
    Case("tofeconfig-stages-negative", "ToFeConfig", "stages (-1, 1, 2)", V, r"stages must be >= 0",
         lambda c: TCFG.replace(stages=(-1, 1, 2))),
    Case("tofeconfig-stages-scalar", "ToFeConfig", "stages=3 (not a tuple)", T_, r"stages must be a tuple, got int 3",
         lambda c: minitofe.ToFeConfig(stages=3)),
    Case("tofeconfig-tau-zero", "ToFeConfig", "tau=0", V, r"tau and tau_end must be > 0, got tau=0",
         lambda c: minitofe.ToFeConfig(tau=0)),
    Case("tofeconfig-tau-end-negative", "ToFeConfig", "tau_end=-1", V, r"tau_end=-1",
         lambda c: minitofe.ToFeConfig(tau_end=-1.0)),
    Case("tofeconfig-tau-string", "ToFeConfig", "tau='1'", T_, r"tau must be a number, got '1'",
         lambda c: minitofe.ToFeConfig(tau="1")),
    Case("tofeconfig-unknown-inference", "ToFeConfig", "inference='sample'", V,
         r"inference must be 'topk' or 'threshold'", lambda c: minitofe.ToFeConfig(inference="sample")),
    Case("tofeconfig-from-dict-string", "ToFeConfig.from_dict", "a JSON string (a safetensors metadata value)",
         T_, r"ToFeConfig.from_dict needs a dict, got str",
         lambda c: minitofe.ToFeConfig.from_dict(json.dumps(TCFG.to_dict()))),
    Case("trainconfig-batch-zero", "TrainConfig", "batch_size=0", V, r"batch_size must be a positive int, got 0",
         lambda c: TrainConfig(batch_size=0)),
    Case("trainconfig-steps-negative", "TrainConfig", "steps=-5", V, r"steps must be a positive int, got -5",
         lambda c: TrainConfig(steps=-5)),
    Case("trainconfig-lr-zero", "TrainConfig", "lr=0", V, r"need lr > 0", lambda c: TrainConfig(lr=0.0)),
    Case("trainconfig-warmup-negative", "TrainConfig", "warmup_steps=-1", V, r"warmup_steps >= 0.*-1",
         lambda c: TrainConfig(warmup_steps=-1)),
    Case("trainconfig-batch-bool", "TrainConfig", "batch_size=True", T_, r"batch_size must be an int, got True",
         lambda c: TrainConfig(batch_size=True)),
    Case("trainconfig-seed-string", "TrainConfig", "seed='a'", T_, r"seed must be an int, got 'a'",
         lambda c: TrainConfig(seed="a")),
    Case("trainconfig-lr-string", "TrainConfig", "lr='1'", T_, r"lr must be a finite number, got '1'",
         lambda c: TrainConfig(lr="1")),
    Case("trainconfig-clip-negative", "TrainConfig", "clip_grad=-1", V, r"clip_grad > 0 \(or None\).*-1",
         lambda c: TrainConfig(clip_grad=-1.0)),
    Case("trainconfig-weight-decay-negative", "TrainConfig", "weight_decay=-0.1", V, r"weight_decay >= 0",
         lambda c: TrainConfig(weight_decay=-0.1)),
    Case("trainconfig-momentum-2", "TrainConfig", "ratio_momentum=2", V, r"0 <= ratio_momentum < 1",
         lambda c: TrainConfig(ratio_momentum=2.0)),
    # ---- new_model
    Case("new_model-stages-beyond-depth", "new_model", "stages (1, 2, 4) for depth 4", V,
         r"stages \(1, 2, 4\) reach beyond the depth 4",
         lambda c: minitofe.new_model(CFG, TCFG.replace(stages=(1, 2, 4)))),
    Case("new_model-stage-count", "new_model", "2 stages, 3 keep ratios", V,
         r"2 stages \(1, 2\) but 3 keep_ratios", lambda c: minitofe.new_model(CFG, TCFG.replace(stages=(1, 2)))),
    Case("new_model-int-dtype", "new_model", "dtype=int64", T_, r"dtype must be float32 or float64, got int64",
         lambda c: minitofe.new_model(CFG, TCFG, dtype=np.int64)),
    Case("new_model-cfg-not-a-config", "new_model", "cfg is a dict", T_, r"needs a ViTConfig.*got dict",
         lambda c: minitofe.new_model(CFG.to_dict(), TCFG)),
    Case("new_model-selector-needs-c-div-4", "new_model", "embed_dim 6 with a learned selector", V,
         r"embed_dim divisible by 4.*got 6", lambda c: minitofe.new_model(CFG.replace(embed_dim=6), TCFG)),
    Case("new_model-rng-not-generator", "new_model", "rng=0 (an int seed)", T_,
         r"rng must be a numpy.random.Generator, got int", lambda c: minitofe.new_model(CFG, TCFG, rng=0)),
    # ---- predict
    Case("predict-wrong-image-size", "predict", "images (3, 1, 6, 6)", V,
         r"images must have shape \(B, 1, 8, 8\).*got \(3, 1, 6, 6\)",
         lambda c: minitofe.predict(c.m, images_like(c, shape=(3, 1, 6, 6)))),
    Case("predict-wrong-rank", "predict", "images (1, 8, 8), no batch axis", V, r"got \(1, 8, 8\)",
         lambda c: minitofe.predict(c.m, c.x[0])),
    Case("predict-wrong-channels", "predict", "RGB images (3, 3, 8, 8) for a grey model", V, r"got \(3, 3, 8, 8\)",
         lambda c: minitofe.predict(c.m, images_like(c, shape=(3, 3, 8, 8)))),
    Case("predict-int-images", "predict", "int64 images", T_, r"images have dtype int64 but the params are float64",
         lambda c: minitofe.predict(c.m, images_like(c, dtype=np.int64))),
    Case("predict-float32-images", "predict", "float32 images, float64 params", T_,
         r"dtype float32 but the params are float64", lambda c: minitofe.predict(c.m, c.x.astype(np.float32))),
    Case("predict-mixed-param-dtypes", "predict", "one float32 param among float64 ones", T_,
         r"params mix dtypes \['float32', 'float64'\]",
         lambda c: minitofe.predict(with_model(c, **{"head.bias": c.m.params["head.bias"].astype(np.float32)}), c.x)),
    Case("predict-empty-batch", "predict", "images (0, 1, 8, 8)", V, r"empty batch",
         lambda c: minitofe.predict(c.m, c.x[:0])),
    Case("predict-nan-pixel", "predict", "one NaN pixel", V, r"NaN or inf",
         lambda c: minitofe.predict(c.m, poke(c, np.nan))),
    Case("predict-inf-pixel", "predict", "one -inf pixel", V, r"NaN or inf",
         lambda c: minitofe.predict(c.m, poke(c, -np.inf))),
    Case("predict-images-list", "predict", "a nested list, not an array", T_, r"images must be an array.*got list",
         lambda c: minitofe.predict(c.m, c.x.tolist())),
    Case("predict-not-a-model", "predict", "the params dict instead of a Model", T_,
         r"model must be a minitofe.Model",
         lambda c: minitofe.predict(c.m.params, c.x)),
    Case("predict-unknown-method", "predict", "method='tome'", V, r"unknown method 'tome'",
         lambda c: minitofe.predict(c.m, c.x, method="tome")),
    Case("predict-keep-ratios-scalar", "predict", "keep_ratios=0.5", T_,
         r"keep ratios must be a sequence \(one per stage\), got float",
         lambda c: minitofe.predict(c.m, c.x, keep_ratios=0.5)),
    Case("predict-keep-ratio-above-1", "predict", "keep_ratios (2, 0.5, 0.5)", V, r"keep ratios must lie in \(0, 1\]",
         lambda c: minitofe.predict(c.m, c.x, keep_ratios=(2.0, 0.5, 0.5))),
    Case("predict-keep-ratio-count", "predict", "2 keep ratios for 3 stages", V, r"3 stages but 2 keep ratios",
         lambda c: minitofe.predict(c.m, c.x, keep_ratios=(0.5, 0.5))),
    Case("predict-kept-masks-shape", "predict", "kept_masks[0] of shape (16,)", V,
         r"kept_masks\[0\] must be bool of shape \(3, 16\)",
         lambda c: minitofe.predict(c.m, c.x, kept_masks=[np.ones(16, bool)] * 3)),
    Case("predict-method-needs-selector", "predict", "method 'tofe' on backbone-only weights", V,
         r"no ToFe selector/approximator parameters", lambda c: minitofe.predict(c.dense, c.x, method="tofe")),
    Case("predict-batch-of-one", "predict", "a batch of one image (topk and threshold, fast and reference)",
         None, None, batch_of_one_predict),
    Case("predict-strided-read-only", "predict", "non-contiguous read-only images and read-only params",
         None, None, strided_predict),
    # ---- train_forward / train_backward
    Case("train_forward-noise-count", "train_forward", "2 noise arrays for 3 stages", V,
         r"noise must be a list of 3 arrays of shape \(3, 16, 2\)", lambda c: train_forward_of(c, noise=c.noise[:2])),
    Case("train_forward-noise-shape", "train_forward", "noise (3, 16, 3)", V,
         r"noise\[0\] must be float64 of shape \(3, 16, 2\), got float64 \(3, 16, 3\)",
         lambda c: train_forward_of(c, noise=[np.zeros((3, 16, 3))] * 3)),
    Case("train_forward-noise-not-array", "train_forward", "noise as nested lists", T_,
         r"noise\[0\] must be an array of shape \(3, 16, 2\), got list",
         lambda c: train_forward_of(c, noise=[n.tolist() for n in c.noise])),
    Case("train_forward-noise-nan", "train_forward", "NaN in the Gumbel noise", V, r"noise\[1\] contains NaN",
         lambda c: train_forward_of(c, noise=[c.noise[0], c.noise[1] * np.nan, c.noise[2]])),
    Case("train_forward-label-out-of-range", "train_forward", "label 4 with 4 classes", V,
         r"labels must lie in \[0, 4\), got range \[0, 4\]", lambda c: train_forward_of(c, y=np.array([0, 1, 4]))),
    Case("train_forward-float-labels", "train_forward", "float labels", V,
         r"labels must be ints of shape \(3,\), got float64",
         lambda c: train_forward_of(c, y=c.y * 1.0)),
    Case("train_forward-no-teacher", "train_forward", "teacher=None with alpha > 0", V, r"need the dense teacher",
         lambda c: train_forward_of(c, teacher=None)),
    Case("train_forward-teacher-other-batch", "train_forward", "teacher outputs of a batch of 2", V,
         r"teacher\['logits'\] must have shape \(3, 4\), got \(2, 4\)",
         lambda c: train_forward_of(c, teacher=teacher_of(c, c.x[:2]))),
    Case("train_forward-teacher-not-dict", "train_forward", "teacher = the teacher's logits array", T_,
         r"teacher must be the dict teacher_forward returns",
         lambda c: train_forward_of(c, teacher=c.teacher["logits"])),
    Case("train_forward-training-free-method", "train_forward", "a model whose method is 'idle'", V,
         r"method 'idle' has no learned selector",
         lambda c: train_forward_of(c, model=minitofe.Model(c.m.params, CFG, TCFG.replace(method="idle")))),
    Case("train_forward-tau-zero", "train_forward", "tau=0", V, r"tau must be a finite number > 0, got 0",
         lambda c: train_forward_of(c, tau=0.0)),
    Case("train_forward-batch-of-one", "train_forward", "a batch of one image", None, None, batch_of_one_train),
    Case("train_forward-strided-read-only", "train_forward", "non-contiguous read-only images, noise and params",
         None, None, strided_train),
    Case("train_backward-not-a-cache", "train_backward", "None instead of the cache", T_,
         r"cache must be the cache tofe_train_forward returned", lambda c: minitofe.train_backward(None)),
    Case("train_backward-vit-cache", "train_backward", "vit_forward's cache", T_,
         r"\(a TrainCache\), got a tuple of 4",
         lambda c: minitofe.train_backward(minitofe.vit_forward(c.m.backbone_params(), c.x, CFG)[1])),
    # ---- tofe_inference / vit_forward / vit_backward
    Case("tofe_inference-tcfg-dict", "tofe_inference", "tcfg as a dict", T_,
         r"tcfg must be a minitofe.ToFeConfig, got dict",
         lambda c: tofe_inference(c.m.params, c.x, CFG, TCFG.to_dict())),
    Case("tofe_inference-missing-key", "tofe_inference", "params without tofe.selector.0.fc1.weight", V,
         r"missing keys \['tofe.selector.0.fc1.weight'\]",
         lambda c: tofe_inference(with_model(c, **{"tofe.selector.0.fc1.weight": None}).params, c.x, CFG, TCFG)),
    Case("tofe_inference-clip-block", "tofe_inference", "a backbone with LayerNorm eps 1e-5 (CLIP)", V,
         r"ToFe implements timm's default block only .*norm_eps=1e-05",
         lambda c: tofe_inference(c.m.params, c.x, CFG.replace(norm_eps=1e-5), TCFG)),
    Case("vit_forward-cfg-dict", "vit_forward", "cfg as a dict", T_,
         r"cfg must be a minitofe.config.ViTConfig, got dict",
         lambda c: minitofe.vit_forward(c.m.backbone_params(), c.x, CFG.to_dict())),
    Case("vit_forward-other-model-params", "vit_forward", "params of another (RGB, 3-head) model", V,
         r"parameters do not match the config.*mis-shaped keys \[cls_token: expected \(1, 1, 8\), got \(1, 1, 12\)",
         lambda c: minitofe.vit_forward(c.other, c.x, CFG)),
    Case("vit_forward-params-not-dict", "vit_forward", "params as a list", T_,
         r"params must be a dict of arrays, got list",
         lambda c: minitofe.vit_forward(list(c.m.params.values()), c.x, CFG)),
    Case("vit_forward-strided-read-only", "vit_forward", "non-contiguous read-only images and params (fast too)",
         None, None, strided_vit),
    Case("vit_backward-dlogits-shape", "vit_backward", "dlogits (3, 5) for 4 classes", V,
         r"dlogits must have the logits' shape \(3, 4\), got \(3, 5\)",
         lambda c: vit_backward_of(c, np.ones((3, 5)))),
    Case("vit_backward-dlogits-dtype", "vit_backward", "float32 dlogits after a float64 forward", T_,
         r"dlogits have dtype float32 but the forward ran in float64",
         lambda c: vit_backward_of(c, np.ones((3, 4), np.float32))),
    Case("vit_backward-not-a-cache", "vit_backward", "None instead of the cache", T_,
         r"cache must be the cache vit_forward returned", lambda c: minitofe.vit_backward(np.ones((3, 4)), None)),
    Case("vit_features_backward-vit-cache", "vit_features_backward", "vit_forward's cache", T_,
         r"this cache is from vit_forward: pass it to vit_backward",
         lambda c: vit_features_backward(np.ones((3, 17, 8)), minitofe.vit_forward(c.dense.params, c.x, CFG)[1])),
    # ---- load_model and the weight loaders
    Case("load_model-missing-file", "load_model", "a path that does not exist", V, r"nope.npz: no such file",
         lambda c: minitofe.load_model(c.d / "nope.npz")),
    Case("load_model-directory", "load_model", "a directory", V, r"data: is a directory, not a weight file",
         lambda c: minitofe.load_model(c.d / "data")),
    Case("load_model-txt", "load_model", "a .txt file", V, r"a.txt: unknown weight file extension '.txt'",
         lambda c: minitofe.load_model(c.d / "a.txt")),
    Case("load_model-garbage-npz", "load_model", "a .npz that is not a zip", V,
         r"garbage.npz: not a readable .npz file",
         lambda c: minitofe.load_model(c.d / "garbage.npz")),
    Case("load_model-wrong-heads", "load_model", "num_heads=4 for a 2-head .npz", V,
         r"w.npz: the file's config has num_heads=2, asked for 4",
         lambda c: minitofe.load_model(c.d / "w.npz", num_heads=4)),
    Case("load_model-path-none", "load_model", "path=None", T_,
         r"weight file path must be a str or os.PathLike, got NoneType",
         lambda c: minitofe.load_model(None)),
    Case("load_model-int-dtype", "load_model", "dtype='int32'", V, r"dtype must be float32 or float64, got int32",
         lambda c: minitofe.load_model(c.d / "w.npz", dtype="int32")),
    Case("load_weights-other-model", "io.weights.load_weights",
         "a DeiT-tiny-like file where vit_fmnist_patch2_28 is expected", V,
         r"other.safetensors: the weights do not match preset 'vit_fmnist_patch2_28': img_size: preset 28, "
         r"weights 16",
         lambda c: W.load_weights(c.d / "other.safetensors", model="vit_fmnist_patch2_28")),
    Case("load_safetensors-heads-do-not-divide", "io.weights.load_safetensors", "num_heads=5 for embed_dim 12", V,
         r"timm.safetensors: ViTConfig: embed_dim 12 is not divisible by num_heads 5",
         lambda c: W.load_safetensors(c.d / "timm.safetensors", num_heads=5, img_size=16, global_pool="token")),
    Case("load_safetensors-no-img-size", "io.weights.load_safetensors", "a timm file, no image size given", V,
         r"timm.safetensors: the img_size is not stored in a timm file \(17 positions in pos_embed\).*--img-size",
         lambda c: W.load_safetensors(c.d / "timm.safetensors", num_heads=3, global_pool="token")),
    Case("load_safetensors-no-global-pool", "io.weights.load_safetensors", "a timm file, no pooling given", V,
         r"the global_pool is not stored in a timm file.*--global-pool",
         lambda c: W.load_safetensors(c.d / "timm.safetensors", num_heads=3, img_size=16)),
    Case("load_safetensors-other-img-size", "io.weights.load_safetensors", "img_size 8x16 for a 4x4-patch file", V,
         r"pos_embed has 17 positions, but img_size \(8, 16\) with patch size 4 has 8 patches",
         lambda c: W.load_safetensors(c.d / "timm.safetensors", num_heads=3, img_size=(8, 16), global_pool="token")),
    Case("load_safetensors-qk-norm", "io.weights.load_safetensors", "a timm file with qk-norm keys", V,
         r"the weights have 'blocks.0.attn.q_norm.weight': qk_norm=True",
         lambda c: W.load_safetensors(c.d / "qknorm.safetensors", num_heads=3, img_size=16, global_pool="token")),
    Case("load_safetensors-no-heads", "io.weights.load_safetensors", "a timm file, no head count given", V,
         r"number of attention heads is not stored.*--heads N",
         lambda c: W.load_safetensors(c.d / "timm.safetensors")),
    Case("load_npz-on-safetensors", "io.weights.load_npz", "a safetensors file", V, r"not a readable .npz file",
         lambda c: W.load_npz(c.d / "other.safetensors")),
    Case("load_safetensors-on-npz", "io.weights.load_safetensors", "an .npz file", V,
         r"w.npz: not a readable safetensors file",
         lambda c: W.load_safetensors(c.d / "w.npz", num_heads=2)),
    Case("save_npz-missing-folder", "save_model (io.weights.save_npz)", "a destination in a missing folder", V,
         r"folder .*nofolder does not exist", lambda c: minitofe.save_model(c.d / "nofolder" / "m.npz", c.m)),
    Case("convert-onto-itself", "io.weights.convert", "dst == src", V, r"refusing to write over the source file",
         lambda c: W.convert(c.d / "w.npz", c.d / "w.npz", overwrite=True)),
    # ---- data loaders
    Case("load_fashion_mnist-unknown-split", "data.load_fashion_mnist", "split='validation'", V,
         r"split must be one of \('train', 'val', 'train\+val', 'test'\), got 'validation'",
         lambda c: D.load_fashion_mnist("validation", c.d / "fm")),
    Case("load_fashion_mnist-missing-root", "data.load_fashion_mnist", "a root folder that does not exist", V,
         r"train-images-idx3-ubyte\[.gz\] not found in .*nofm",
         lambda c: D.load_fashion_mnist("train", c.d / "nofm")),
    Case("load_image_folder-missing", "data.load_image_folder", "a root that does not exist", V,
         r"nodata: not a folder",
         lambda c: D.load_image_folder(c.d / "nodata", 8, 0.5, 0.5)),
    Case("load_image_folder-is-a-file", "data.load_image_folder", "a file as root", V, r"a.txt: not a folder",
         lambda c: D.load_image_folder(c.d / "a.txt", 8, 0.5, 0.5)),
    Case("load_image_folder-img-size-zero", "data.load_image_folder", "img_size=0", V,
         r"positive int img_size.*got 0",
         lambda c: D.load_image_folder(c.d / "data", 0, 0.5, 0.5)),
    Case("load_images-empty-list", "data.load_images", "no paths", V, r"no image files given",
         lambda c: D.load_images([], 8, 0.5, 0.5)),
    Case("load_images-missing-file", "data.load_images", "a path that does not exist", V, r"nope.png: no such file",
         lambda c: D.load_images([c.d / "nope.png"], 8, 0.5, 0.5)),
    Case("load_images-directory", "data.load_images", "a directory", V, r"data: is a folder, not an image file",
         lambda c: D.load_images([c.d / "data"], 8, 0.5, 0.5)),
    Case("load_images-txt", "data.load_images", "a .txt file", V, r"a.txt: unreadable image",
         lambda c: D.load_images([c.d / "a.txt"], 8, 0.5, 0.5)),
    Case("load_images-single-string", "data.load_images", "one path string instead of a list", T_,
         r"paths must be a list of image files, got one str",
         lambda c: D.load_images(str(c.d / "grey.png"), 8, 0.5, 0.5)),
    Case("load_images-std-zero", "data.load_images", "std=0", V, r"mean and std need 1 or 3 values \(std > 0\)",
         lambda c: D.load_images([c.d / "grey.png"], 8, 0.5, 0.0)),
    Case("load_images-mean-count", "data.load_images", "2 mean values for RGB", V,
         r"mean and std need 1 or 3 values .*got \[0.5, 0.5\]",
         lambda c: D.load_images([c.d / "grey.png"], 8, (0.5, 0.5), 0.5)),
    Case("load_images-img-size-zero", "data.load_images", "img_size=0", V, r"positive int img_size.*got 0",
         lambda c: D.load_images([c.d / "grey.png"], 0, 0.5, 0.5)),
    Case("load_images-grey-for-rgb", "data.load_images", "a grey-scale PNG for an RGB model",
         None, None, grey_as_rgb),
    Case("load_images-rgba", "data.load_images", "an RGBA PNG", None, None, rgba_drops_alpha),
    Case("load_images-16-bit", "data.load_images", "a 16-bit grey PNG (mode I;16)", None, None, sixteen_bit_scaled),
    Case("load_images-1x1", "data.load_images", "a 1x1-pixel image", None, None, one_pixel_upscaled),
    # ---- the command line (exit code, message on stderr)
    Case("cli-predict-txt-image", "minitofe predict", "a .txt file as the image", 2, r"a.txt: unreadable image",
         cli("predict", "{d}/a.txt", *PRED)),
    Case("cli-predict-headless", "minitofe predict", "--weights a backbone without classifier (num_classes=0)", 2,
         r"headless.npz: a backbone without classifier head \(num_classes=0\)",
         cli("predict", "{d}/grey.png", "--weights", "{d}/headless.npz")),
    Case("cli-predict-weights-directory", "minitofe predict", "--weights DIR", 2, r"data: is a directory",
         cli("predict", "{d}/grey.png", "--weights", "{d}/data")),
    Case("cli-predict-budget-zero", "minitofe predict", "--budget 0", 2, r"budget must be a fraction .* got 0.0",
         cli("predict", "{d}/grey.png", *PRED, "--budget", "0")),
    Case("cli-predict-budget-above-1", "minitofe predict", "--budget 1.5", 2,
         r"--budget 1.5: the budget must be a fraction of the dense MACs in \(0, 1\]",
         cli("predict", "{d}/grey.png", *PRED, "--budget", "1.5")),
    Case("cli-predict-unknown-method", "minitofe predict", "--method tome", 2, r"invalid choice: 'tome'",
         cli("predict", "{d}/grey.png", *PRED, "--method", "tome")),
    Case("cli-viz-out-missing-folder", "minitofe viz", "--out in a folder that does not exist", 2,
         r"nodir/v.png: cannot write the picture there \(folder .* does not exist\)",
         cli("viz", "{d}/grey.png", *PRED, "--out", "{d}/nodir/v.png")),
    Case("cli-viz-weights-txt", "minitofe viz", "--weights a.txt", 2, r"unknown weight file extension '.txt'",
         cli("viz", "{d}/grey.png", "--weights", "{d}/a.txt")),
    Case("cli-demo-weights-missing", "minitofe demo", "--weights that does not exist", 2, r"nope.npz: no such file",
         cli("demo", "--weights", "{d}/nope.npz", "--out", "{d}/demo.png")),
    Case("cli-demo-out-directory", "minitofe demo", "--out DIR", 2,
         r"cannot write the picture there \(is a directory\)",
         cli("demo", *PRED, "--out", "{d}/data")),
    Case("cli-eval-data-is-file", "minitofe eval", "--data a.txt", 2, r"a.txt: not a folder",
         cli("eval", *PRED, "--data", "{d}/a.txt")),
    Case("cli-eval-data-root-missing", "minitofe eval", "--data-root that does not exist", 2, r"not found in .*nofm",
         cli("eval", *PRED, "--data-root", "{d}/nofm")),
    Case("cli-eval-other-image-size", "minitofe eval", "8x8 weights on 28x28 Fashion-MNIST", 2,
         r"images must have shape \(B, 1, 8, 8\) \(NCHW\), got \(4, 1, 28, 28\)",
         cli("eval", *PRED, "--data-root", "{d}/fm", "--json")),
    Case("cli-eval-limit-zero", "minitofe eval", "--limit 0", 2, r"--limit must be a positive number of images, got 0",
         cli("eval", *PRED, "--data-root", "{d}/fm", "--limit", "0")),
    Case("cli-eval-batch-zero", "minitofe eval", "--batch 0", 2, r"batch_size must be a positive int, got 0",
         cli("eval", *PRED, "--data-root", "{d}/fm", "--batch", "0")),
    Case("cli-train-limit-negative", "minitofe train", "--limit -1", 2,
         r"--limit must be a positive number of images, got -1", cli(*TRAIN, "--data-root", "{d}/fm", "--limit", "-1",
                                                                     "--out", "{d}/run-limit")),
    Case("cli-train-steps-zero", "minitofe train", "--steps 0", 2, r"steps must be a positive int, got 0",
         cli(*TRAIN, *ON_FOLDER, "--steps", "0", "--out", "{d}/r1")),
    Case("cli-train-budget-above-1", "minitofe train", "--budget 1.5", 2,
         r"target_ratio must lie in \(0, 1\], got 1.5",
         cli(*TRAIN, *ON_FOLDER, "--budget", "1.5", "--out", "{d}/r2")),
    Case("cli-train-init-modules-of-another-method", "minitofe train",
         "--init a ToFe model's file, --method dynamicvit", 2, r"trained for method 'tofe', not 'dynamicvit'",
         cli(*TRAIN, *ON_FOLDER, "--method", "dynamicvit", "--out", "{d}/r8")),
    Case("cli-train-init-txt", "minitofe train", "--init a.txt", 2, r"a.txt: unknown weight file extension",
         cli("train", "--init", "{d}/a.txt", "--out", "{d}/r3")),
    Case("cli-train-config-unknown-key", "minitofe train", "--config with an unknown key", 2,
         r"unknown option\(s\) \['stepz'\]",
         cli(*TRAIN, "--config", "{d}/bad.json", "--out", "{d}/r4")),
    Case("cli-train-training-free-method", "minitofe train", "--method evit-drop", 2,
         r"method 'evit-drop' has no learned selector",
         cli(*TRAIN, *ON_FOLDER, "--method", "evit-drop", "--out", "{d}/r5")),
    Case("cli-train-data-other-size", "minitofe train", "8x8 weights, 28x28 Fashion-MNIST", 2,
         r"images must have shape \(B, 1, 8, 8\) \(NCHW\), got \(2, 1, 28, 28\)",
         cli(*TRAIN, "--data-root", "{d}/fm", "--out", "{d}/r6")),
    Case("cli-train-init-other-model", "minitofe train",
         "--init a DeiT-tiny-like file, --model vit_fmnist_patch4_28", 2,
         r"do not match preset 'vit_fmnist_patch4_28'",
         cli("train", "--init", "{d}/other.safetensors", "--model", "vit_fmnist_patch4_28", "--out", "{d}/r7")),
    Case("cli-train-out-under-a-file", "minitofe train", "--out inside a regular file", 1,
         r"Not a directory: .*a.txt",
         cli(*TRAIN, *ON_FOLDER, "--out", "{d}/a.txt/run")),
    Case("cli-convert-src-txt", "minitofe convert", "SRC a.txt", 2, r"a.txt: unknown weight file extension",
         cli("convert", "{d}/a.txt", "{d}/c.npz")),
    Case("cli-convert-other-model", "minitofe convert", "--model deit_tiny_patch16_224 for another model", 2,
         r"do not match preset 'deit_tiny_patch16_224': img_size: preset 224, weights 16",
         cli("convert", "{d}/other.safetensors", "{d}/c.npz", "--model", "deit_tiny_patch16_224")),
    Case("cli-convert-bad-dtype", "minitofe convert", "--dtype int8", 2, r"argument --dtype: invalid choice: 'int8'",
         cli("convert", "{d}/w.npz", "{d}/c.npz", "--dtype", "int8")),
    Case("cli-convert-no-img-size", "minitofe convert", "a timm file with --heads only", 2,
         r"the img_size is not stored in a timm file.*--img-size",
         cli("convert", "{d}/timm.safetensors", "{d}/c.npz", "--heads", "3")),
    Case("cli-convert-unknown-model", "minitofe convert", "--model nope", 2,
         r"unknown model 'nope'.*vit_fmnist_patch2_28",
         cli("convert", "{d}/timm.safetensors", "{d}/c.npz", "--model", "nope")),
    Case("cli-bench-unknown-flag", "minitofe bench", "--nope", 2, r"unrecognized arguments: --nope",
         cli("bench", "--nope")),
    # ---- the validator's kit: golden bundles and compare
    Case("golden-training-free-method", "validate.make_golden", "mode 'train' for method idle", V,
         r"method 'idle' is training-free, so no training bundle",
         lambda c: golden_of(c, "i.safetensors", model=minitofe.Model(c.m.params, CFG, TCFG.replace(method="idle")))),
    Case("golden-out-not-safetensors", "validate.make_golden", "OUT g.npz", V,
         r"g.npz: a golden bundle is a .safetensors file", lambda c: golden_of(c, "g.npz")),
    Case("golden-fmnist-index-out-of-range", "validate.golden_images", "fmnist=[7] of a 4-image test set", V,
         r"Fashion-MNIST test indices must lie in \[0, 4\), got \[7\]",
         lambda c: VAL.golden_images(c.m, fmnist=[7], fmnist_root=c.d / "fm")),
    Case("golden-labels-wrong-count", "validate.golden_images", "2 labels for 3 images", V,
         r"labels must be 3 integers in \[0, 4\) \(one per image\), got \[1, 2\]",
         lambda c: VAL.golden_images(c.m, random=3, labels=[1, 2])),
    Case("compare-bundle-missing-tensor", "validate.compare", "a bundle lacking a tensor its index lists", V,
         r"bundle lacks 1 tensor\(s\) its index lists: \['blocks.1.out'\]",
         lambda c: VAL.compare(bundles(c).d / "g-missing.safetensors", theirs(c))),
    Case("compare-bundle-wrong-shape", "validate.compare", "a bundle tensor of another shape than its index says",
         V, r"tensor 'logits' is float64 \(4, 3\), its index says float64 \(3, 4\)",
         lambda c: VAL.compare(bundles(c).d / "g-shape.safetensors", theirs(c))),
    Case("compare-bundle-nan", "validate.compare", "NaN inside the bundle", V,
         r"tensor 'stage.0.out' holds NaN or inf \(first at index \[0, 0, 0\]\)",
         lambda c: VAL.compare(bundles(c).d / "g-nan.safetensors", theirs(c))),
    Case("compare-bundle-other-version", "validate.compare", "a bundle made by minitofe 0.0.1", V,
         r"made by minitofe 0.0.1, this is minitofe .* or pass --any-version",
         lambda c: VAL.compare(bundles(c).d / "g-version.safetensors", theirs(c))),
    Case("compare-bundle-other-version-allowed", "validate.compare", "the same with any_version=True", None, None,
         compare_any_version),
    Case("compare-bundle-not-golden", "validate.compare", "a timm weight file as the bundle", V,
         r"not a minitofe golden bundle \(metadata format 'pt'",
         lambda c: VAL.compare(c.d / "timm.safetensors", theirs(c))),
    Case("compare-theirs-no-known-name", "validate.compare", "outputs whose names are all unknown", V,
         r"none of its 1 names is in the bundle \(e.g. \['logitz'\]\)",
         lambda c: VAL.compare(bundles(c).d / "golden.safetensors",
                                                                    {"logitz": np.zeros((3, 4))})),
    Case("compare-theirs-nan", "validate.compare", "NaN in their outputs", None, None,
         lambda c: compare_reports(c, "blocks.0.attn", r"1 NaN/inf value\(s\)",
                                   **{"blocks.0.attn": with_nan(theirs(c)["blocks.0.attn"])})),
    Case("compare-theirs-other-configuration", "validate.compare", "their logits transposed", V,
         r"made with another configuration than the bundle .* logits is \(4, 3\), the bundle's \(3, 4\)",
         lambda c: VAL.compare(bundles(c).d / "golden.safetensors", dict(theirs(c), logits=theirs(c)["logits"].T))),
    Case("compare-theirs-wrong-shape", "validate.compare", "their stage-0 output with 5 tokens", None, None,
         lambda c: compare_reports(c, "stage.0.out", r"shape \(3, 5, 8\) != golden \(3, 17, 8\)",
                                   **{"stage.0.out": theirs(c)["stage.0.out"][:, :5]})),
    Case("compare-theirs-strings", "validate.compare", "their mask as strings", None, None,
         lambda c: compare_reports(c, "stage.0.mask", r"dtype <U1 is not a number type",
                                   **{"stage.0.mask": np.full((3, 17), "1")})),
    Case("cli-compare-theirs-txt", "minitofe compare", "THEIRS a.txt", 2,
         r"a.txt: outputs to compare must be a .safetensors or .npz file, got '.txt'",
         lambda c: cli("compare", "{d}/golden.safetensors", "{d}/a.txt")(bundles(c))),
    Case("cli-compare-bundle-missing", "minitofe compare", "BUNDLE that does not exist", 2,
         r"nope.safetensors: no such file", cli("compare", "{d}/nope.safetensors", "{d}/w.npz")),
    Case("cli-compare-bundle-truncated", "minitofe compare", "BUNDLE cut short", 2,
         r"g-cut.safetensors: not a readable safetensors file",
         lambda c: cli("compare", "{d}/g-cut.safetensors", "{d}/golden.safetensors")(bundles(c))),
    Case("cli-golden-out-exists", "minitofe golden", "OUT that exists", 2,
         r"golden.safetensors: exists already \(pass --force to replace it\)",
         lambda c: cli("golden", "{d}/golden.safetensors", "--preset", "{d}/vit.json")(bundles(c))),
    Case("cli-golden-random-zero", "minitofe golden", "--random 0", 2,
         r"--random must be a batch size in \[1, 64\], got 0",
         lambda c: cli("golden", "{d}/r.safetensors", "--preset", "{d}/vit.json", "--random", "0")(bundles(c))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(ctx, case):
    if case.error is None:                               # must work: the row asserts the result
        case.run(ctx)
    elif isinstance(case.error, int):                    # CLI: exit code and one clean error line
        code, err = case.run(ctx)
        assert code == case.error, err
        assert re.search(r"^minitofe( [a-z]+)?: error: ", err, re.M), err
        assert re.search(case.match, err) and "Traceback" not in err, err
    else:
        with pytest.raises(Exception) as info:
            case.run(ctx)
        assert type(info.value) is case.error, repr(info.value)
        assert re.search(case.match, str(info.value)), str(info.value)


def test_table_is_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    for c in CASES:
        assert re.fullmatch(r"[a-z0-9_.-]+", c.id) and c.entry and c.wrong
        assert (c.error is None) == (c.match is None)


DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


def test_doc_lists_exactly_the_cases():
    """Every row of the doc's tables starts with `id`; the ids must be exactly those of CASES."""
    documented = re.findall(r"^\|\s*`([a-z0-9_.-]+)`\s*\|", DOC.read_text(), re.M)
    assert len(documented) == len(set(documented)), "an id is listed twice in docs/bad-input.md"
    ids = {c.id for c in CASES}
    assert not ids - set(documented), f"missing from docs/bad-input.md: {sorted(ids - set(documented))}"
    assert not set(documented) - ids, f"in docs/bad-input.md but not in CASES: {sorted(set(documented) - ids)}"
