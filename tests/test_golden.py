"""The validator's kit without torch: golden bundles (tofe train, topk, threshold; evit and dynamicvit
train and topk) compared with themselves, read with safetensors alone, stating every value (no nulls,
timm's shapes, the MACs terms); the saved outputs of the three small PyTorch implementations (minitofe's
``torch_ref``, ``torch_baselines`` and the ToFe on timm's blocks of tests/test_validate_timm.py, correct
and with seeded bugs, all written by ``capture``: ``tests/fixtures/validate``) passing or localised to
the first tensor each bug touches; and the report's details (mask flips, kept indices, NaNs, shapes,
another configuration, subsets, float32, brief, JSON and its schema, exit codes)."""
import json
import pathlib
import re

import numpy as np
import pytest
from safetensors import safe_open

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.io.timm import to_timm_state_dict
from minitofe.tofe.macs import dense_macs
from minitofe.validate import compare, example_golden, format_report, make_golden, record, recording
from minitofe.validate.bundle import read_bundle
from minitofe.validate.compare import REPORT_KEYS, ROW_KEYS, SCHEMA

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "validate"
# saved outputs -> (method, mode, the first tensor the seeded bug touches; None: the correct implementation)
CASES = {"torch_ok": ("tofe", "train", None), "torch_ln_eps": ("tofe", "train", "blocks.0.norm1"),
         "torch_cls_in_context": ("tofe", "train", "stage.0.selector_logits"),
         "torch_qkv_split": ("tofe", "train", "blocks.0.attn"),
         "timm_ok": ("tofe", "train", None), "timm_approx_on_output": ("tofe", "train", "stage.0.approx"),
         "evit_train_ok": ("evit", "train", None), "evit_train_cls_head0": ("evit", "train", "stage.0.cls_attn"),
         "evit_train_fuse_renormalised": ("evit", "train", "stage.0.fused"),
         "evit_topk_ok": ("evit", "topk", None),
         "dynamicvit_train_ok": ("dynamicvit", "train", None),
         "dynamicvit_train_predictor_eps": ("dynamicvit", "train", "stage.0.logp"),
         "dynamicvit_train_global_unweighted": ("dynamicvit", "train", "stage.1.logp"),
         "dynamicvit_topk_ok": ("dynamicvit", "topk", None),
         "dynamicvit_topk_predictor_eps": ("dynamicvit", "topk", "stage.0.scores")}
CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The example bundle of every (method, mode) the saved outputs are of."""
    d = tmp_path_factory.mktemp("examples")
    pairs = sorted({(m, mode) for m, mode, _ in CASES.values()})
    return {(m, mode): example_golden(d / f"{m}_{mode}.safetensors", m, mode) for m, mode in pairs}


@pytest.fixture(scope="module")
def golden(examples):
    return examples[("tofe", "train")]


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
    assert meta["format"] == "minitofe-golden/2" and meta["minitofe_version"] == minitofe.__version__
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


@pytest.mark.parametrize("case", list(CASES))
def test_saved_outputs_pass_or_are_localised(examples, case):
    """Outputs of the three PyTorch implementations, saved by scripts/make_validate_fixtures.py."""
    method, mode, first = CASES[case]
    bundle = examples[(method, mode)]
    report = compare(bundle, FIXTURES / f"{case}.safetensors")
    text = format_report(report)
    if first is None:
        assert report["passed"] and report["class"] == "float64", (
            text + "\nthe example bundle changed? regenerate: python scripts/make_validate_fixtures.py (torch)")
        assert report["compared"] == len(outputs(bundle)) and not report["unknown"], "every tensor, no other"
        return
    assert not report["passed"] and report["first_divergence"]["name"] == first, text
    assert f"FIRST DIVERGENCE: {first}" in text


def _nulls(value, where="metadata"):
    if value is None:
        return [where]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [n for k, v in items for n in _nulls(v, f"{where}[{k!r}]")]


def test_every_bundle_states_every_value_in_timms_shapes(examples, inference_bundles):
    for path in [*examples.values(), *inference_bundles.values()]:
        with safe_open(path, framework="np") as f:
            meta = {k: json.loads(v) if k not in ("format", "minitofe_version") else v
                    for k, v in f.metadata().items()}
        assert not _nulls(meta), (path, _nulls(meta)[:5])
        b = read_bundle(path)
        cfg = ViTConfig.from_dict({**{k: v for k, v in meta["config"].items()
                                      if k not in ("num_prefix_tokens", "num_patches", "num_tokens")},
                                   "init_values": meta["config"]["init_values"] or None})   # 0: no LayerScale
        assert meta["tofe"]["stages"] == [1, 2, 3] and meta["macs"]["dense"] == dense_macs(cfg)
        assert sum(meta["macs"]["dense_terms"].values()) == meta["macs"]["dense"]
        params = {e.name[len("param."):]: b.arrays[e.name] for e in b.of_role("param")}
        minitofe_layout = dict(params, **{"patch_embed.proj.weight": params["patch_embed.proj.weight"].reshape(8, -1)})
        timm = {k: v.shape for k, v in to_timm_state_dict(minitofe_layout, cfg).items()}
        assert {k: v.shape for k, v in params.items() if not k.startswith("tofe.")} == timm
        assert all(b.arrays[f"grad.{k}"].shape == v.shape for k, v in params.items() if f"grad.{k}" in b.arrays)


def test_baseline_bundles_name_their_conventions_against_the_authors_code(examples):
    for method in ("evit", "dynamicvit"):
        for mode in ("train", "topk"):
            conv = read_bundle(examples[(method, mode)]).meta["conventions"]
            assert "authors_code" in conv and "differences from the authors'" in conv["authors_code"]
    evit = read_bundle(examples[("evit", "train")])
    assert "fuse_token=False" in evit.meta["conventions"]["authors_code"]
    assert 0 < evit.meta["tofe"]["evit_keep_rate"] < 1 and evit.arrays["stage.0.fused"].shape == (2, 1, 8)
    dvit = read_bundle(examples[("dynamicvit", "train")])
    assert "eps 1e-05" in dvit.meta["conventions"]["predictor"]
    assert {"loss.ratio", "loss.kl", "loss.token", "input.teacher_features"} <= set(dvit.arrays)


def test_outputs_of_another_configuration_are_bad_input(golden, tmp_path, capsys):
    theirs = outputs(golden)
    theirs["embed"] = np.zeros((2, 50, 8))
    np.savez(tmp_path / "other.npz", **theirs)
    code, _, err = cli(capsys, "compare", golden, tmp_path / "other.npz")
    assert code == 2 and "another configuration" in err and "embed is (2, 50, 8)" in err
    assert "N = 17 tokens" in err


def test_brief_is_a_summary_on_a_pass_and_the_rows_around_a_failure(golden, capsys):
    code, out, _ = cli(capsys, "compare", golden, FIXTURES / "torch_ok.safetensors", "--brief")
    assert code == 0 and "worst rel" in out and "blocks.1.attn" not in out and len(out.splitlines()) < 12
    code, out, _ = cli(capsys, "compare", golden, FIXTURES / "torch_qkv_split.safetensors", "--brief")
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+  ", line)]
    assert code == 1 and "FIRST DIVERGENCE: blocks.0.attn" in out and len(rows) <= 6 and "more:" in out


def test_the_json_report_follows_its_documented_schema(golden, capsys):
    code, out, _ = cli(capsys, "compare", golden, FIXTURES / "torch_ln_eps.safetensors", "--json")
    report = json.loads(out)
    assert code == 1 and report["schema"] == SCHEMA and set(report) == set(REPORT_KEYS)
    assert all(set(row) <= set(ROW_KEYS) for row in report["tensors"])
    doc = (REPO / "docs" / "validate.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    assert SCHEMA in doc and set(REPORT_KEYS) | set(ROW_KEYS) <= documented, sorted(
        (set(REPORT_KEYS) | set(ROW_KEYS)) - documented)


def test_record_is_a_no_op_outside_a_capture_and_names_each_value_once():
    x = np.ones(3)
    assert record("logits", x) is x
    with recording() as rec:
        record("logits", x)
        with pytest.raises(ValueError, match="'logits' recorded twice"):
            record("logits", x)
    assert list(rec) == ["logits"] and rec["logits"] is not x


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
    theirs["stage.2.out"] = theirs["stage.2.out"][:, :5]
    theirs["logit"] = theirs["logits"]
    report = compare(golden, theirs)
    text = format_report(report)
    assert report["first_divergence"]["name"] == "blocks.3.mlp" and "1 NaN/inf value(s)" in text
    row = [r for r in report["tensors"] if r["name"] == "stage.2.out"][0]
    assert "shape (2, 5, 8) != golden (2, 17, 8)" in row["error"]
    assert "logit (did you mean logits?)" in text
    theirs["logits"] = theirs["logits"].T                    # a shape the configuration fixes: bad input
    with pytest.raises(ValueError, match=r"logits is \(3, 2\), the bundle's \(2, 3\) \(B = 2 images, K = 3"):
        compare(golden, theirs)


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
