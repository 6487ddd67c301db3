"""The PyTorch side of the kit, live: ``minitofe.validate.torch`` (load with named errors, hooks, record,
gradients), the small PyTorch implementations ``torch_ref`` (tofe; its adapter ``run`` at most 10 lines)
and ``torch_baselines`` (evit, dynamicvit, train and topk) passing in float64 and float32, each seeded bug
localised to the first tensor it touches, and the saved outputs of ``tests/fixtures/validate`` current.
Skipped without torch; tests/test_golden.py checks the saved outputs without it."""
import inspect
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.numpy import load_file  # noqa: E402

from minitofe.validate import compare, golden_images, golden_model, make_golden  # noqa: E402
from minitofe.validate import torch_baselines, torch_ref  # noqa: E402
from minitofe.validate.torch import capture, load  # noqa: E402
from test_golden import CASES  # noqa: E402

pytestmark = pytest.mark.torch
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "validate"
RUN = {"torch": torch_ref.run, "evit": torch_baselines.run, "dynamicvit": torch_baselines.run}


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    from minitofe.validate import example_golden
    d = tmp_path_factory.mktemp("examples")
    pairs = sorted({(m, mode) for m, mode, _ in CASES.values()})
    return {(m, mode): example_golden(d / f"{m}_{mode}.safetensors", m, mode) for m, mode in pairs}


def _case(case):
    method, mode, first = CASES[case]
    family, bug = case.split("_")[0], case.split("_", 2 if case.startswith(("evit", "dynamicvit")) else 1)[-1]
    return method, mode, first, RUN.get(family), None if bug == "ok" else bug


LIVE = [c for c in CASES if not c.startswith("timm")]      # timm's: tests/test_validate_timm.py


@pytest.mark.parametrize("case", [c for c in LIVE if CASES[c][2] is None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_implementation_passes(examples, case, dtype):
    method, mode, _, run, _ = _case(case)
    report = compare(examples[(method, mode)], run(examples[(method, mode)], dtype=dtype))
    assert report["passed"] and report["class"] == str(dtype).split(".")[1], report["first_divergence"]


@pytest.mark.parametrize("case", [c for c in LIVE if CASES[c][2] is not None])
def test_each_seeded_bug_is_localised(examples, case):
    method, mode, first, run, bug = _case(case)
    report = compare(examples[(method, mode)], run(examples[(method, mode)], bug))
    assert not report["passed"] and report["first_divergence"]["name"] == first


@pytest.mark.parametrize("case", LIVE)
def test_saved_outputs_are_current(examples, case):
    method, mode, _, run, bug = _case(case)
    saved = load_file(str(FIXTURES / f"{case}.safetensors"))
    live = run(examples[(method, mode)], bug)
    assert saved.keys() == live.keys()
    stale = [k for k in live if not np.allclose(saved[k], live[k], rtol=1e-12, atol=1e-15)]
    assert not stale, f"run scripts/make_validate_fixtures.py: {stale[:3]}"


def test_bugs_are_the_seeded_ones():
    assert {_case(c)[4] for c in LIVE} - {None} == set(torch_ref.BUGS) | set(torch_baselines.BUGS)


def test_the_torch_ref_adapter_is_at_most_ten_lines():
    assert len(inspect.getsource(torch_ref.run).rstrip().splitlines()) <= 10


@pytest.mark.parametrize("method", ["tofe-identity", "tofe-uniform"])
def test_the_ablations_pass_too(tmp_path, method):
    from minitofe.config import ViTConfig
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
    model, teacher, source = golden_model(preset=cfg, seed=1, method=method)
    images, labels, _ = golden_images(model, random=3, seed=2)
    path = make_golden(tmp_path / "g.safetensors", model, images, labels, teacher=teacher, source=source)
    report = compare(path, torch_ref.run(path))
    assert report["passed"], report["first_divergence"]


def test_load_names_every_key_and_shape_that_does_not_fit(examples):
    bundle = examples[("tofe", "train")]
    model = torch_ref.ToFeViT(*_meta(bundle))
    model.head = torch.nn.Linear(8, 5)                     # another shape
    model.extra = torch.nn.Linear(2, 2)                    # a parameter the bundle lacks
    with pytest.raises(ValueError) as err:
        load(bundle, model)
    text = str(err.value)
    assert "'head.weight' -> 'head.weight': module shape (5, 8), bundle (3, 8)" in text
    assert "'extra.weight': the bundle has no parameter 'param.extra.weight'" in text
    model = torch_ref.ToFeViT(*_meta(bundle))
    with pytest.raises(ValueError, match=r"'param.blocks.0.norm1.weight' \(8,\): no module parameter maps to it"):
        load(bundle, model, keys={"blocks.{i}.norm1.weight": "blocks.{i}.ln.weight"})


def test_keys_and_names_patterns_map_another_layout(examples):
    """A module whose paths are not timm's: parameter keys and hook names mapped by patterns."""
    bundle = examples[("tofe", "train")]
    model = torch_ref.ToFeViT(*_meta(bundle))
    inputs = load(bundle, model)
    assert set(inputs) >= {"images", "labels", "noise", "teacher_tokens", "teacher_logits"}
    assert len(inputs["noise"]) == 3 and inputs["images"].dtype == torch.float64
    with pytest.raises(ValueError, match="no module path of ToFeViT matches 'layers.{i}.ln_1'"):
        capture(bundle, model, lambda x: torch_ref.training_loss(model, **x), {"layers.{i}.ln_1": "blocks.{i}.norm1"})


def test_a_hooked_module_must_return_a_tensor(examples):
    bundle = examples[("tofe", "train")]
    model = torch_ref.ToFeViT(*_meta(bundle))
    model.blocks[0].norm1.register_forward_hook(lambda m, a, out: (out, out))
    with pytest.raises(TypeError, match="module 'blocks.0.norm1' returned tuple"):
        capture(bundle, model, lambda x: torch_ref.training_loss(model, **x))


def _meta(bundle):
    from minitofe.validate import read_bundle
    meta = read_bundle(bundle).meta
    return meta["config"], meta["tofe"]
