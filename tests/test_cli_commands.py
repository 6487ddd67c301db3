"""The model-using CLI subcommands end to end: demo, predict, viz, eval, train (small weights, real
image files through Pillow, tiny IDX data sets); exit codes and messages on bad input."""
import gzip
import json
import re
import struct

import numpy as np
import pytest
from PIL import Image

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig

CFG = ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def weights(tmp_path):
    tcfg = minitofe.ToFeConfig(method="tofe", keep_ratios=(0.5, 0.3, 0.2))
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(0), np.float32)
    path = tmp_path / "tofe.npz"
    minitofe.save_model(str(path), model)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (mode, size) in enumerate([("L", (28, 28)), ("RGB", (40, 30)), ("RGBA", (28, 28)), ("I;16", (5, 5))]):
        arr = rng.integers(0, 255, size[::-1] + ((3,) if mode == "RGB" else (4,) if mode == "RGBA" else ()))
        img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8), mode=mode if mode != "I;16" else None)
        p = tmp_path / f"img{i}.png"
        img.save(p)
        paths.append(p)
    return paths


def test_demo_writes_a_picture(tmp_path, capsys, weights):
    code, out, _ = run(capsys, "demo", "--weights", weights, "--out", tmp_path / "d.png")
    assert code == 0 and "tofe" in out and (tmp_path / "d.png").is_file()
    with Image.open(tmp_path / "d.png") as im:
        assert im.size[0] > 100


def test_predict_table_and_json(capsys, weights, images):
    code, out, _ = run(capsys, "predict", *images, "--weights", weights)
    assert code == 0 and out.count("MACs") == len(images)
    code, out, _ = run(capsys, "predict", images[0], "--weights", weights, "--json", "--method", "idle",
                       "--budget", "0.5")
    res = json.loads(out)
    assert res["method"] == "idle" and res["predictions"][0]["macs_ratio"] <= 0.5


def test_predict_picks_the_kernels_by_the_number_of_images(capsys, weights, images, monkeypatch):
    """No flag: the NumPy reference below AUTO_FAST_MIN_IMAGES images (Numba's start-up would cost more
    than it saves), the kernels from there on; --fast / --no-fast always win. Same answers either way."""
    from minitofe import kernels
    from minitofe.cli import common as cli_common
    outs = {}
    for flags in ([], ["--fast"], ["--no-fast"]):
        code, out, _ = run(capsys, "predict", images[0], "--weights", weights, "--json", *flags)
        res = json.loads(out)
        outs[tuple(flags)] = res["predictions"][0]["index"]
        fast = flags == ["--fast"] and kernels.available()
        assert code == 0 and res["kernels"] == ("fast" if fast else "reference")
    assert len(set(outs.values())) == 1
    monkeypatch.setattr(cli_common, "AUTO_FAST_MIN_IMAGES", 1)
    code, out, _ = run(capsys, "predict", images[0], "--weights", weights, "--json")
    assert json.loads(out)["kernels"] == ("fast" if kernels.available() else "reference")


def test_timm_weights_need_and_take_a_preset_or_head_count(tmp_path, capsys, images):
    """A timm .safetensors file carries no head count, image size or pooling: predict says which flags to
    pass; a file minitofe wrote (or converted with those flags) states its config and needs none."""
    stnp = pytest.importorskip("safetensors.numpy")
    from minitofe.io.timm import to_timm_state_dict
    cfg = minitofe.get_config("vit_fmnist_patch2_28").replace(depth=4)
    model = minitofe.new_model(cfg, minitofe.ToFeConfig(method="dense"), np.random.default_rng(0), np.float32)
    path = tmp_path / "timm.safetensors"
    stnp.save_file(to_timm_state_dict(model.params, cfg), str(path), metadata={"format": "pt"})   # as timm does
    code, _, err = run(capsys, "predict", images[0], "--weights", path)
    assert code != 0 and "--model NAME" in err and "--heads N" in err
    code, _, err = run(capsys, "predict", images[0], "--weights", path, "--heads", "3")
    assert code != 0 and "--img-size" in err
    code, _, _ = run(capsys, "convert", path, tmp_path / "m.npz", "--heads", "3", "--img-size", "28",
                     "--global-pool", "token")
    code, out, _ = run(capsys, "predict", images[0], "--weights", tmp_path / "m.npz", "--json")
    assert code == 0 and json.loads(out)["method"] == "dense"


def test_viz(tmp_path, capsys, weights, images):
    code, out, _ = run(capsys, "viz", *images[:2], "--weights", weights, "--out", tmp_path / "v.png")
    assert code == 0 and (tmp_path / "v.png").is_file()


def test_eval_on_an_image_folder(tmp_path, capsys, weights):
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    code, out, _ = run(capsys, "eval", "--weights", weights, "--data", tmp_path / "data", "--json")
    res = json.loads(out)
    assert code == 0 and res["n"] == 4 and 0 <= res["top1"] <= 1 and len(res["keep_ratios"]) == 3


def _idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def test_train_then_eval_then_resume(tmp_path, capsys, weights):
    rng = np.random.default_rng(2)
    root = tmp_path / "fm"
    root.mkdir()
    for split, n in (("train", 16), ("t10k", 8)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)).astype(np.uint8), 0x803)
        _idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8), 0x801)
    out_dir = tmp_path / "run"
    args = ["train", "--init", weights, "--data-root", root, "--steps", 3, "--batch", 4, "--out", out_dir,
            "--no-progress", "--target", 0.6]
    code, out, err = run(capsys, *args, "--stop-at", 2)
    assert code == 0, err
    code, out, err = run(capsys, *args, "--resume")
    assert code == 0 and "learned keep ratios" in out, err
    code, out, err = run(capsys, *args)                      # refuses to overwrite without --resume
    assert code == 2 and "exists" in err
    code, out, _ = run(capsys, "eval", "--weights", out_dir / "final.npz", "--data-root", root, "--json")
    assert code == 0 and json.loads(out)["n"] == 8


@pytest.mark.parametrize("argv, match", [
    (["predict", "nope.png"], "nope.png: no such file"),
    (["predict", "."], "is a folder"),
    (["train"], "--init"),
    (["eval", "--data", "/nonexistent-folder"], "not a folder"),
])
def test_bad_input_exit_codes(capsys, weights, argv, match):
    extra = ["--weights", str(weights)] if argv[0] in ("predict", "eval") else []
    code, _, err = run(capsys, *argv, *extra)
    assert code == 2 and match in err and "Traceback" not in err


def test_unreadable_image(tmp_path, capsys, weights):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = run(capsys, "predict", bad, "--weights", weights)
    assert code == 2 and "bad.png: unreadable image" in err


@pytest.fixture
def fm_root(tmp_path):
    """Fake Fashion-MNIST IDX files: 8 training and 4 test images."""
    rng = np.random.default_rng(3)
    root = tmp_path / "fm"
    root.mkdir()
    for split, n in (("train", 8), ("t10k", 4)):
        pixels = rng.integers(0, 255, (n, 28, 28)).astype(np.uint8)
        _idx(root / f"{split}-images-idx3-ubyte.gz", pixels, 0x803)
        _idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8), 0x801)
    return root


def budget_argv(command, weights, images, tmp_path, fm_root):
    """The shortest run of each command that takes --budget, on the test's weights."""
    w = ["--weights", weights]
    return {"predict": ["predict", images[0], *w], "viz": ["viz", images[0], *w, "--out", tmp_path / "v.png"],
            "eval": ["eval", *w, "--data-root", fm_root, "--no-progress"],
            "demo": ["demo", *w, "--out", tmp_path / "d.png"]}[command]


@pytest.mark.parametrize("command", ["predict", "viz", "eval", "demo"])
@pytest.mark.parametrize("budget", ["1.5", "-0.2", "0"])
def test_a_budget_outside_0_1_is_refused_naming_the_value_and_the_range(tmp_path, capsys, weights, images,
                                                                       fm_root, command, budget):
    """More than the dense MACs cannot be asked of a reduction (1.5 used to run at 101 %)."""
    argv = budget_argv(command, weights, images, tmp_path, fm_root)
    code, out, err = run(capsys, *argv, "--budget", budget)
    assert code == 2 and not out
    want = f"--budget {float(budget)}: the budget must be a fraction of the dense MACs in (0, 1]"
    assert err.startswith(f"minitofe: error: {want}"), err


def test_a_budget_below_the_floor_is_refused_naming_the_floor(capsys, weights, images):
    """The dense block before the first stage, the selectors and approximators, and one kept token per stage
    cost MACs that no keep ratio takes away."""
    from minitofe.tofe.budget import topk_macs
    from minitofe.tofe.macs import dense_macs
    model = minitofe.load_model(weights)
    floor = topk_macs(CFG, model.tofe, [1 / CFG.num_patches] * 3) / dense_macs(CFG)
    code, _, err = run(capsys, "predict", images[0], "--weights", weights, "--budget", "0.05")
    assert code == 2 and err.startswith("minitofe: error: --budget 0.05: ") and f"{floor:.3f}" in err
    assert "the 1 dense block before the first stage" in err
    code, _, err = run(capsys, "predict", images[0], "--weights", weights, "--budget", f"{floor + 0.01:.3f}")
    assert code == 0, err


@pytest.mark.parametrize("command", ["predict", "viz", "eval", "demo"])
def test_a_realised_budget_off_the_asked_one_gets_a_note(tmp_path, capsys, weights, images, fm_root,
                                                         command):
    """The dense method keeps every token: asked 50 %, it realises 100 %, and says so; topk at 50 % meets
    the budget (within a point) and says nothing."""
    argv = budget_argv(command, weights, images, tmp_path, fm_root)
    if command == "demo":                          # demo runs the weights' own method: a dense file
        model = minitofe.load_model(weights)
        minitofe.save_model(tmp_path / "dense.npz", minitofe.Model(model.backbone_params(), CFG,
                                                                   minitofe.ToFeConfig(method="dense")))
        argv[argv.index(weights)] = tmp_path / "dense.npz"
    else:
        argv += ["--method", "dense"]
    code, out, err = run(capsys, *argv, "--budget", "0.5")
    note = "note: asked for a budget of 50.0 % of the dense MACs, realised 100.0 % (the dense method"
    assert code == 0 and note in out, err
    if command != "demo":
        code, out, err = run(capsys, *argv[:-2], "--budget", "0.5")
        assert code == 0 and "note: asked for a budget" not in out, err
    if command in ("predict", "eval"):
        code, out, _ = run(capsys, *argv, "--budget", "0.5", "--json")
        assert json.loads(out)["note"].startswith(note)


def test_threshold_inference_says_what_it_realised(capsys):
    """The shipped model's threshold rule keeps a per-image count: at --budget 0.5 this image costs 61 %."""
    from minitofe.data.inputs import sample_images
    image = sample_images()[0]
    code, out, err = run(capsys, "predict", image, "--inference", "threshold", "--budget", "0.5", "--json")
    assert code == 0, err
    res = json.loads(out)
    realised = res["predictions"][0]["macs_ratio"]
    assert abs(realised - 0.5) > 0.01 and res["budget"] == 0.5
    assert f"asked for a budget of 50.0 % of the dense MACs, realised {100 * realised:.1f} %" in res["note"]
    code, out, _ = run(capsys, "predict", image, "--inference", "threshold", "--budget", "0.5")
    assert f"realised {100 * realised:.1f} % (threshold inference keeps a count of tokens per image" in out


def test_a_dense_run_says_which_backbone_it_is(tmp_path, capsys, weights, images, fm_root):
    """A ToFe model's dense run is its own (fine-tuned) backbone with the modules off, not the dense file
    it was fine-tuned from; a dense file is itself."""
    model = minitofe.load_model(weights)
    model.learned_keep_ratios = (0.6, 0.3, 0.1)
    minitofe.save_model(tmp_path / "tuned.npz", model)
    minitofe.save_model(tmp_path / "dense.npz", minitofe.Model(model.backbone_params(), CFG,
                                                               minitofe.ToFeConfig(method="dense")))
    tuned = f"the fine-tuned backbone of {tmp_path / 'tuned.npz'} (its tofe modules off)"
    for name, want in (("tuned.npz", tuned), ("dense.npz", f"{tmp_path / 'dense.npz'} (a dense backbone)")):
        w = ["--weights", tmp_path / name, "--method", "dense"]
        code, out, err = run(capsys, "eval", *w, "--data-root", fm_root, "--json")
        assert code == 0 and json.loads(out)["backbone"] == want, err
        code, out, _ = run(capsys, "eval", *w, "--data-root", fm_root, "--no-progress")
        assert f"dense run: {want}" in out.splitlines()
        code, out, _ = run(capsys, "predict", images[0], *w, "--json")
        assert json.loads(out)["backbone"] == want
        code, out, _ = run(capsys, "predict", images[0], *w)
        assert f"dense run: {want}" in out.splitlines()


def test_counts_of_one_are_singular_and_ratios_have_3_decimals(tmp_path, capsys, weights, images, fm_root):
    code, out, _ = run(capsys, "viz", images[1], "--weights", weights, "--out", tmp_path / "v.png")
    assert code == 0 and "(1 image, method tofe" in out
    code, out, _ = run(capsys, "eval", "--weights", weights, "--data-root", fm_root, "--limit", "1",
                       "--no-progress")
    assert code == 0 and " on 1 image, " in out
    code, out, _ = run(capsys, "predict", images[1], "--weights", weights)
    assert "note: img1.png (40x30 RGB) was resized to 28x28 grey for this 10-class model" in out
    code, out, _ = run(capsys, "predict", *images[:2], "--weights", weights)
    assert "note: 1 of 2 images (img1.png (40x30 RGB)) was resized" in out
    code, out, _ = run(capsys, "predict", images[0])                          # the shipped ToFe model
    weights_line = out.splitlines()[0]
    assert code == 0 and re.search(r"learned keep ratios \((\d\.\d{3}, ){2}\d\.\d{3}\)\)$", weights_line)
