"""The validator's kit without torch: golden bundles (train, topk, threshold) compared with themselves,
read with safetensors alone, the saved outputs of the small PyTorch implementation (correct and with
three seeded bugs, ``tests/fixtures/validate``) localised to the first tensor each bug touches, and
the report's details (mask flips, kept indices, NaNs, shapes, subsets, float32, JSON, exit codes)."""
import json
import pathlib

import numpy as np
import pytest
from safetensors import safe_open

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.validate import compare, example_golden, format_report, make_golden
from minitofe.validate.bundle import read_bundle

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "validate"
FIRST_TOUCHED = {"ln_eps": "blocks.0.norm1", "cls_in_context": "stage.0.selector_logits",
                 "qkv_split": "blocks.0.attn"}
CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return example_golden(tmp_path_factory.mktemp("golden") / "golden.safetensors")


@pytest.fixture(scope="module")
def inference_bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("infer")
    model = minitofe.new_model(CFG, minitofe.ToFeConfig(stages=(1, 2, 3), threshold=0.5),
                               np.random.default_rng(0), np.float64)
    rng = np.random.default_rng(3)
    for k in [k for k in model.params if k.startswith("tofe.selector.") and k.endswith("fc3.weight")]:
        model.params[k] = rng.normal(0.0, 20.0, (2, 2))   # spread the scores: a ragged threshold batch
    images = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    labels = np.array([0, 1, 2])
    return {mode: make_golden(d / f"{mode}.safetensors", model, images, labels, mode=mode)
            for mode in ("topk", "threshold")}


def outputs(golden, roles=("forward", "backward")):
    b = read_bundle(golden)
    return {e.name: b.arrays[e.name].copy() for e in b.entries if e.role in roles}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_bundle_compared_with_itself_passes(golden, inference_bundles, capsys):
    for path in [golden, *inference_bundles.values()]:
        code, out, err = cli(capsys, "compare", path, path)
        assert code == 0 and "PASS" in out and not err, out + err


def test_the_bundle_describes_itself_with_safetensors_alone(golden):
    with safe_open(golden, framework="np") as f:
        meta = f.metadata()
        names = set(f.keys())
    index = json.loads(meta["index"])
    assert meta["format"] == "minitofe-golden/1" and meta["minitofe_version"] == minitofe.__version__
    assert [row[0] for row in index if row[0] in names] == [row[0] for row in index] and len(index) == len(names)
    conventions = json.loads(meta["conventions"])
    assert {"noise", "masks", "losses", "macs", "dtype", "teacher"} <= set(conventions)
    params = {row[0][len("param."):] for row in index if row[1] == "param"}
    grads = {row[0][len("grad."):] for row in index if row[1] == "backward"}
    assert grads == params | {"images"}
    forward = [row[0] for row in index if row[1] == "forward"]
    assert forward[:2] == ["embed", "blocks.0.norm1"] and forward[-1] == "loss.total"
    assert forward.index("stage.0.mask") < forward.index("blocks.1.out") < forward.index("stage.0.approx")


def test_inference_bundles_hold_kept_indices_and_macs(inference_bundles):
    topk, thr = (read_bundle(inference_bundles[m]) for m in ("topk", "threshold"))
    assert topk.arrays["stage.0.kept_idx"].shape == (3, round(0.49 * 16))
    counts = thr.arrays["kept_counts"]
    assert len(set(counts[:, 0])) > 1, "the threshold bundle should be ragged"
    idx = thr.arrays["stage.0.kept_idx"]
    assert ((idx >= 0).sum(axis=1) == counts[:, 0]).all()
    assert thr.arrays["macs"].shape == (3,) and (thr.arrays["macs_ratio"] < 1).all()


@pytest.mark.parametrize("variant", ["ok", *FIRST_TOUCHED])
def test_saved_torch_outputs_pass_or_are_localised(golden, variant):
    """The small PyTorch implementation's outputs, saved by scripts/make_validate_fixtures.py."""
    report = compare(golden, FIXTURES / f"torch_{variant}.safetensors")
    text = format_report(report)
    if variant == "ok":
        assert report["passed"] and report["class"] == "float64", (
            text + "\nthe example bundle changed? regenerate: python scripts/make_validate_fixtures.py (torch)")
        assert report["compared"] == len(outputs(golden)), "the torch implementation gives every tensor"
        return
    first = report["first_divergence"]
    assert not report["passed"] and first["name"] == FIRST_TOUCHED[variant], text
    assert f"FIRST DIVERGENCE: {FIRST_TOUCHED[variant]}" in text and "worst element" in text


def test_a_flipped_token_is_named_by_image_stage_and_patch(golden):
    theirs = outputs(golden)
    theirs["stage.1.mask"][1, 5] = 1 - theirs["stage.1.mask"][1, 5]
    report = compare(golden, theirs)
    first = report["first_divergence"]
    assert first["name"] == "stage.1.mask" and len(first["flips"]) == 1
    flip = first["flips"][0]
    assert (flip["stage"], flip["image"], flip["token"], flip["patch"]) == (1, 1, 5, 4)
    assert "stage 1, image 1: patch 4 (token 5)" in format_report(report)


def test_other_kept_patches_are_named(inference_bundles):
    theirs = outputs(inference_bundles["topk"])
    theirs["stage.2.kept_idx"][0, 0] = 15 if theirs["stage.2.kept_idx"][0, 0] != 15 else 14
    report = compare(inference_bundles["topk"], theirs)
    assert report["first_divergence"]["name"] == "stage.2.kept_idx"
    assert "image 0: only golden keeps patches" in format_report(report)


def test_any_subset_in_any_order_from_npz(golden, tmp_path):
    theirs = outputs(golden)
    keep = ["loss.total", "grad.head.weight", "blocks.2.attn", "stage.0.mask"]     # not in bundle order
    np.savez(tmp_path / "theirs.npz", **{k: theirs[k] for k in keep})
    report = compare(golden, tmp_path / "theirs.npz")
    assert report["passed"] and report["compared"] == 4
    assert [r["name"] for r in report["tensors"]] == ["stage.0.mask", "blocks.2.attn", "loss.total",
                                                      "grad.head.weight"]


def test_nan_wrong_shape_and_unknown_names_are_reported(golden):
    theirs = outputs(golden)
    theirs["blocks.3.mlp"][0, 0, 0] = np.nan
    theirs["logits"] = theirs["logits"].T
    theirs["logit"] = theirs["logits"]
    report = compare(golden, theirs)
    text = format_report(report)
    assert report["first_divergence"]["name"] == "blocks.3.mlp" and "1 NaN/inf value(s)" in text
    row = [r for r in report["tensors"] if r["name"] == "logits"][0]
    assert "shape (3, 2) != golden (2, 3)" in row["error"]
    assert "logit (did you mean logits?)" in text


def test_float32_outputs_are_judged_in_the_float32_class(golden):
    theirs = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in outputs(golden).items()}
    report = compare(golden, theirs)
    assert report["class"] == "float32" and report["passed"]
    assert not compare(golden, theirs, tol="float64")["passed"]


def test_json_and_exit_codes(golden, capsys):
    code, out, _ = cli(capsys, "compare", golden, FIXTURES / "torch_qkv_split.safetensors", "--json")
    report = json.loads(out)
    assert code == 1 and report["first_divergence"]["name"] == "blocks.0.attn"
    code, out, _ = cli(capsys, "compare", golden, FIXTURES / "torch_ln_eps.safetensors", "--brief")
    assert code == 1 and "more:" in out and "blocks.0.norm1" in out


def test_golden_command_from_a_preset_json_and_image_files(tmp_path, capsys):
    (tmp_path / "vit.json").write_text(json.dumps(CFG.to_dict()))
    png = sorted((pathlib.Path(minitofe.__file__).parent / "samples").glob("*.png"))[:2]
    out = tmp_path / "g.safetensors"
    code, text, err = cli(capsys, "golden", out, "--preset", tmp_path / "vit.json", "--images", *png,
                          "--labels", "1", "2")
    assert code == 0 and "wrote" in text and not err, err
    b = read_bundle(out)
    assert b.arrays["input.images"].shape == (2, 1, 8, 8) and b.arrays["input.labels"].tolist() == [1, 2]
    assert "files" in b.meta["source"]["images"] and b.meta["source"]["command"].startswith("minitofe golden")
    code, _, err = cli(capsys, "golden", out, "--preset", tmp_path / "vit.json")
    assert code == 2 and "exists already" in err
    assert compare(out, outputs(out))["passed"]
