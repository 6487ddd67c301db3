"""The small PyTorch implementation (``minitofe.validate.torch_ref``) run live against golden bundles:
it passes in float64 and float32, each seeded bug is localised to the first tensor it touches, and the
saved outputs of ``tests/fixtures/validate`` are what it writes today. Skipped without torch."""
import pathlib

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from minitofe.validate import compare, example_golden, golden_images, golden_model, make_golden  # noqa: E402
from minitofe.validate.torch_ref import BUGS, run  # noqa: E402

pytestmark = pytest.mark.torch
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "validate"
FIRST_TOUCHED = {"ln_eps": "blocks.0.norm1", "cls_in_context": "stage.0.selector_logits",
                 "qkv_split": "blocks.0.attn"}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return example_golden(tmp_path_factory.mktemp("golden") / "golden.safetensors")


def numpy(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def test_bugs_are_the_three_seeded_ones():
    assert set(BUGS) == set(FIRST_TOUCHED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_implementation_passes(golden, dtype):
    report = compare(golden, numpy(run(golden, dtype=dtype)))
    assert report["passed"] and report["class"] == str(dtype).split(".")[1], report["first_divergence"]


@pytest.mark.parametrize("bug", list(FIRST_TOUCHED))
def test_each_seeded_bug_is_localised(golden, bug):
    report = compare(golden, numpy(run(golden, bug=bug)))
    assert not report["passed"] and report["first_divergence"]["name"] == FIRST_TOUCHED[bug]


@pytest.mark.parametrize("variant", ["ok", *FIRST_TOUCHED])
def test_saved_outputs_are_current(golden, variant):
    saved = load_file(str(FIXTURES / f"torch_{variant}.safetensors"))
    live = run(golden, bug=None if variant == "ok" else variant)
    assert saved.keys() == live.keys()
    stale = [k for k in live if not torch.allclose(saved[k], live[k], rtol=1e-12, atol=1e-15)]
    assert not stale, f"run scripts/make_validate_fixtures.py: {stale[:3]}"


@pytest.mark.parametrize("method", ["tofe-identity", "tofe-uniform"])
def test_the_ablations_pass_too(tmp_path, method):
    from minitofe.config import ViTConfig
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
    model, teacher, source = golden_model(preset=cfg, seed=1, method=method)
    images, labels, _ = golden_images(model, random=3, seed=2)
    path = make_golden(tmp_path / "g.safetensors", model, images, labels, teacher=teacher, source=source)
    report = compare(path, numpy(run(path)))
    assert report["passed"], report["first_divergence"]
