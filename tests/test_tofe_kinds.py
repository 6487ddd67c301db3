"""ToFe's selector and approximator kinds (``tofe/parts.py``): each new kind's backward against central
finite differences in float64 (``minitofe.gradcheck``), its MACs against the matmuls it runs, a whole
training step and ``minitofe train`` with it, and files saved before the kinds existed loading with the
defaults."""
import json

import numpy as np
import pytest

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, numerical_grad, rel_error
from minitofe.nn.params import trunc_normal
from minitofe.tofe.macs import dense_macs, tofe_macs
from minitofe.tofe.parts import APPROXIMATORS, SELECTORS
from test_macs import counted
from test_train_trust import _image_folder

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)
NEW_SELECTORS = ("linear", "attention")


def _params(shapes, rng):
    """Random parameters of every shape (no zero layer: every gradient path is exercised)."""
    return {k: np.ascontiguousarray(trunc_normal(rng, s, 0.5) if len(s) > 1 else rng.standard_normal(s))
            for k, s in shapes.items()}


@pytest.mark.parametrize("kind", NEW_SELECTORS)
@pytest.mark.parametrize("masked", [False, True])
def test_selector_backward_equals_finite_differences(kind, masked):
    part, rng, T, C = SELECTORS[kind], np.random.default_rng(1), 1, 8
    params = _params(part.shapes("tofe.selector.0.", C, 4), rng)
    x = rng.standard_normal((2, 6, C))
    weight = (rng.random((2, 5)) > 0.4).astype(np.float64) if masked else None
    dlogits = rng.standard_normal((2, 6, 2))
    logits, cache = part.forward(x, params, "tofe.selector.0.", T, weight)
    assert logits.shape == (2, 6, 2)
    dx, grads = part.backward(dlogits, cache)
    f = lambda: float((part.forward(x, params, "tofe.selector.0.", T, weight)[0] * dlogits).sum())  # noqa: E731
    assert set(grads) == set(params)
    assert rel_error(numerical_grad(f, x), dx) < 1e-6
    assert max(check_param_grads(f, params, grads).values()) < 1e-6


def test_deep_approximator_backward_equals_finite_differences_and_starts_as_identity():
    part, rng = APPROXIMATORS["deep"], np.random.default_rng(2)
    params = _params(part.shapes("tofe.approx.1.", 8, 4), rng)
    x, dy = rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 8))
    _, cache = part.forward(x, params, "tofe.approx.1.")
    dx, grads = part.backward(dy, cache)
    f = lambda: float((part.forward(x, params, "tofe.approx.1.")[0] * dy).sum())  # noqa: E731
    assert rel_error(numerical_grad(f, x), dx) < 1e-6
    assert max(check_param_grads(f, params, grads).values()) < 1e-6
    fresh = minitofe.new_model(CFG, minitofe.ToFeConfig(approximator="deep", stages=(1, 2),
                                                        keep_ratios=(0.5, 0.5))).params
    assert {k for k in fresh if k.startswith("tofe.approx.0.")} == set(part.shapes("tofe.approx.0.", 8, 4))
    assert np.array_equal(part.forward(x, fresh, "tofe.approx.0.")[0], x)      # fc2 zero: the identity


@pytest.mark.parametrize("kind,table", [("linear", SELECTORS), ("attention", SELECTORS),
                                        ("deep", APPROXIMATORS)])
def test_each_kind_counts_the_matmuls_it_runs(kind, table):
    part, rng, n, C = table[kind], np.random.default_rng(3), 7, 16
    prefix = "tofe.p."
    params = _params(part.shapes(prefix, C, 4), rng)
    x = rng.standard_normal((1, n, C))
    run = ((lambda p, x: part.forward(x, p, prefix, 1)) if table is SELECTORS
           else (lambda p, x: part.forward(x, p, prefix)))
    assert counted(run, params, x) == part.macs(n, C, 4)
    h = 1e-3                                                 # d macs / d n, as the FLOPs loss uses it
    assert abs((part.macs(n + h, C, 4) - part.macs(n - h, C, 4)) / (2 * h) - part.dmacs(n, C, 4)) < 1e-6


@pytest.mark.parametrize("selector,approximator", [("linear", "mlp"), ("attention", "mlp"), ("mlp", "deep")])
def test_tofe_macs_counts_each_kind_and_the_model_uses_it(selector, approximator):
    tcfg = minitofe.ToFeConfig(stages=(1, 2), keep_ratios=(0.5, 0.5), selector=selector,
                               approximator=approximator)
    model = minitofe.new_model(CFG, tcfg)
    images = np.random.default_rng(4).standard_normal((2, 1, 8, 8))
    _, info = minitofe.predict(model, images)
    kept = info["kept_counts"].astype(float) + 1
    base, _ = tofe_macs(CFG, (1, 2), kept, approx_reduction=4)              # ToFe's mlp parts
    sel, app = SELECTORS[selector], APPROXIMATORS[approximator]
    C, N = CFG.embed_dim, CFG.num_tokens
    own = sum(sel.macs(N, C, 4) - SELECTORS["mlp"].macs(N, C, 4)
              + app.macs(N - kept[:, s], C, 4) - APPROXIMATORS["mlp"].macs(N - kept[:, s], C, 4)
              for s in range(2))
    assert np.allclose(info["macs"], base + own) and (selector, approximator) != ("mlp", "mlp")
    assert not np.allclose(info["macs"], base)


@pytest.mark.parametrize("selector,approximator,method", [("linear", "mlp", "tofe"),
                                                          ("attention", "mlp", "tofe-cumulative"),
                                                          ("mlp", "deep", "tofe-uniform")])
def test_a_training_step_with_each_kind_has_the_gradient_of_its_loss(selector, approximator, method):
    """The whole step (soft mask: smooth) against finite differences along the new kind's parameters."""
    tcfg = minitofe.ToFeConfig(method=method, stages=(1, 2), keep_ratios=(0.5, 0.5), selector=selector,
                               approximator=approximator, tau=1.5)
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(5))
    rng = np.random.default_rng(6)
    model.params.update({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()
                         if k.startswith("tofe.")})
    images, labels = rng.standard_normal((2, 1, 8, 8)), np.array([0, 2])
    noise = minitofe.draw_noise(rng, CFG, tcfg, 2, np.float64)
    teacher = minitofe.teacher_forward(model.backbone_params(), images, CFG, (1, 2))
    _, cache = minitofe.train_forward(model, images, labels, noise, teacher, hard=False)
    _, grads = minitofe.train_backward(cache)
    f = lambda: minitofe.train_forward(model, images, labels, noise, teacher, hard=False)[0]["loss"]  # noqa
    part = "selector" if selector != "mlp" else "approx"
    keys = [k for k in model.params if k.startswith(f"tofe.{part}.0.")]
    assert max(check_param_grads(f, model.params, grads, keys).values()) < 1e-5


@pytest.mark.parametrize("flags", [["--selector", "linear"], ["--selector", "attention"],
                                   ["--approximator", "deep"]])
def test_minitofe_train_with_a_kind_runs_end_to_end(tmp_path, flags):
    init = tmp_path / "init.npz"
    minitofe.save_model(init, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(0), np.float32))
    out = tmp_path / "run"
    code = main(["train", "--init", str(init), "--data", str(_image_folder(tmp_path / "data")), "--steps", "2",
                 "--batch", "4", "--warmup-steps", "1", "--stages", "1", "2", "--keep-ratios", "0.5", "0.5",
                 "--budget", "0.8", "--out", str(out), "--no-progress", "--no-fast", *flags])
    assert code == 0
    final = minitofe.load_model(out / "final.npz")
    kind, name = flags[0][2:], flags[1]
    assert getattr(final.tofe, kind) == name
    table, prefix = (SELECTORS, "tofe.selector.0.") if kind == "selector" else (APPROXIMATORS, "tofe.approx.0.")
    assert {k for k in final.params if k.startswith(prefix)} == set(table[name].shapes(prefix, 8, 4))
    logits, info = minitofe.predict(final, np.zeros((1, 1, 8, 8), np.float32))
    assert logits.shape == (1, 3) and 0 < info["macs_ratio"][0] < 1


def test_files_saved_before_the_kinds_load_with_the_defaults(tmp_path):
    model = minitofe.new_model(CFG, minitofe.ToFeConfig(stages=(1, 2), keep_ratios=(0.5, 0.5)))
    old = model.tofe.to_dict()
    del old["selector"], old["approximator"]                 # the metadata of a file from before
    tcfg = minitofe.ToFeConfig.from_dict(json.loads(json.dumps(old)))
    assert (tcfg.selector, tcfg.approximator) == ("mlp", "mlp") and tcfg == model.tofe
    with pytest.raises(ValueError, match="unknown selector 'tome'; choose one of"):
        minitofe.ToFeConfig(selector="tome")
    assert dense_macs(CFG) > 0
