"""The methods are peers behind one protocol and one registry (docs/method.md, "Where each method
lives"): every consumer finds a method through ``minitofe.methods``, ToFe's package imports no baseline,
and a new baseline is one new module and one registry line (``toy_baseline.py``)."""
import ast
import pathlib

import numpy as np
import pytest

import minitofe
from minitofe import methods
from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads
from minitofe.tofe.config import METHODS
from minitofe.train import TrainConfig
from minitofe.train.loop import train_step

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)
PKG = pathlib.Path(minitofe.__file__).parent
BASELINE_MODULES = {p.stem for p in (PKG / "methods").glob("*.py")} - {"__init__", "tofe", "registry",
                                                                       "protocol", "run", "params"}


@pytest.fixture
def toy():
    import toy_baseline
    methods.register(toy_baseline.TOY)                         # the one registry line
    yield toy_baseline
    methods.unregister("toy-norm")


def test_a_new_baseline_is_one_module_and_one_registry_line(toy):
    tcfg = minitofe.ToFeConfig(method="toy-norm", stages=(1, 2), keep_ratios=(0.5, 0.5))
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(0))
    assert set(k for k in model.params if k.startswith("tofe.")) == {"tofe.toy.scale"}
    model.params["tofe.toy.scale"][:] = 0.7
    images, labels = np.random.default_rng(1).standard_normal((4, 1, 8, 8)), np.array([0, 1, 2, 0])
    logits, info = minitofe.predict(model, images)                               # predict
    assert logits.shape == (4, 3) and [k.sum(axis=1).tolist() for k in info["kept"]] == [[8] * 4] * 2
    assert np.allclose(info["macs"], methods.topk_macs(CFG, tcfg, (0.5, 0.5)))    # MACs, scorer counted
    assert info["macs"][0] < minitofe.dense_macs(CFG)
    ratios = methods.ratios_for_budget(CFG, tcfg, 0.8)                          # a budget
    assert abs(methods.topk_macs(CFG, tcfg, ratios) / minitofe.dense_macs(CFG) - 0.8) < 0.05
    before = dict(model.params)
    out, grads = train_step(model, model.backbone_params(), images, labels, 0, TrainConfig(steps=1, fast=False))
    assert np.isfinite(out["loss"]) and set(grads) == set(before)               # a training step
    f = lambda: minitofe.train_forward(model, images, labels, None)[0]["loss"]  # noqa: E731
    _, cache = minitofe.train_forward(model, images, labels, None)
    assert check_param_grads(f, model.params, minitofe.train_backward(cache)[1], ["tofe.toy.scale"])[
        "tofe.toy.scale"] < 1e-6
    assert "toy-norm" in methods.names() and "toy-norm" not in METHODS


def test_the_registry_refuses_a_name_twice_and_unknown_names(toy):
    with pytest.raises(ValueError, match="registered already"):
        methods.register(toy.TOY)
    with pytest.raises(ValueError, match="unknown method 'tome'; choose one of"):
        methods.get("tome")


def test_every_built_in_method_is_registered_in_order():
    assert methods.names() == ("dense", "evit", "evit-drop", "dynamicvit", "tofe-cumulative", "idle", "tofe",
                               "tofe-identity", "tofe-uniform")
    assert all(m.train_forward is None for m in methods.entries() if m.name in ("dense", "idle", "evit-drop"))


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("path", sorted((PKG / "tofe").glob("*.py")), ids=lambda p: p.name)
def test_tofe_imports_no_baseline(path):
    """ToFe's package knows no baseline: none of its files imports a baseline's module, nor anything of
    ``minitofe.methods`` (the layer above); the registry it asks is a table below it."""
    bad = [m for m in _imports(path) if m.split(".")[-1] in BASELINE_MODULES or "methods" in m.split(".")]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted(p for d in ("model.py", "train", "cli", "bench", "validate")
                                        for p in ([PKG / d] if d.endswith(".py") else (PKG / d).glob("*.py"))),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_consumers_ask_the_registry_not_the_method_name(path):
    """No ``method == "evit"``-style switch on a baseline's name where the registry says it."""
    text = path.read_text()
    bad = [b for b in ('method == "evit"', 'method == "dynamicvit"', 'in ("evit"', "FAITHFUL_BASELINES",
                       'method == "idle"', 'method == "evit-drop"') if b in text]
    allowed = path.name in ("conventions.py", "conventions_baselines.py", "torch_baselines.py")
    # the validators' sentences and PyTorch twins describe each authors' method in its own words
    assert allowed or not bad, f"{path.name} switches on {bad}"
