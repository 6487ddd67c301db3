"""``minitofe train --init FILE``: what a run starts from. A ToFe model's trained modules are continued
when they fit (``--fresh-modules``: new ones, as before), modules that do not fit are refused naming the
key or setting, the teacher is said (``--teacher FILE``: another file's backbone), ``--budget`` (old name
``--target``) reaches the config, and ``--resume`` reads old and new ``options.json`` files alike."""
import json
import re

import numpy as np
import pytest
from PIL import Image

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.methods import init_params as init_tofe_params

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
LEARNED = (0.61234567891, 0.33, 0.13)


@pytest.fixture
def files(tmp_path):
    """A 'fine-tuned' ToFe model (modules moved off their init, learned ratios recorded), the dense
    backbone it came from, and a small image folder."""
    rng = np.random.default_rng(0)
    dense = minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"), rng, np.float32)
    minitofe.save_model(tmp_path / "dense.npz", dense)
    tuned = minitofe.new_model(CFG, minitofe.ToFeConfig(method="tofe"), rng, np.float32)
    tuned.params = {k: (v + 0.5 * rng.standard_normal(v.shape)).astype(np.float32)
                    for k, v in tuned.params.items()}                 # backbone and modules both moved
    tuned.learned_keep_ratios = LEARNED
    minitofe.save_model(tmp_path / "tuned.npz", tuned)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    return tmp_path


def args_for(d, *extra, out="run"):
    return ["train", "--init", d / "tuned.npz", "--data", d / "data", "--steps", 2, "--batch", 4,
            "--warmup-steps", 1, "--eval-every", 2, "--eval-images", 4, "--no-progress", "--no-fast",
            "--out", d / out, *extra]


def run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def started(monkeypatch):
    """Record what ``train`` is handed (the student's params and ratios, the teacher) instead of training."""
    seen = {}

    def fake_train(model, teacher, *args, **kw):
        seen.update(params=dict(model.params), ratios=model.learned_keep_ratios, teacher=teacher,
                    tofe=model.tofe)
        return model
    monkeypatch.setattr("minitofe.train.train", fake_train)
    return seen


def same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def tofe_part(params):
    return {k: v for k, v in params.items() if k.startswith("tofe.")}


def test_a_tofe_init_file_is_continued_from_its_trained_modules(files, capsys, started):
    tuned = minitofe.load_model(files / "tuned.npz")
    code, out, err = run(capsys, args_for(files))
    assert code == 0, err
    assert same(tofe_part(started["params"]), tofe_part(tuned.params)) and started["ratios"] == LEARNED
    assert same(started["teacher"], tuned.backbone_params())
    lines = out.splitlines()
    assert any(line.startswith("ToFe modules: continuing from the trained tofe modules of") and
               "(learned keep ratios (0.612, 0.330, 0.130))" in line and "--fresh-modules" in line
               for line in lines), out
    assert any(line.startswith("teacher: the backbone of the --init file") and "--teacher FILE" in line
               for line in lines), out


def test_fresh_modules_start_as_before_and_another_teacher_is_named(files, capsys, started):
    code, out, err = run(capsys, args_for(files, "--fresh-modules", "--teacher", files / "dense.npz"))
    assert code == 0, err
    want = init_tofe_params(CFG, started["tofe"], np.random.default_rng(0), np.float32)    # --seed 0
    assert same(tofe_part(started["params"]), want) and started["ratios"] is None
    assert same(started["teacher"], minitofe.load_model(files / "dense.npz").backbone_params())
    tuned = minitofe.load_model(files / "tuned.npz")
    assert same({k: v for k, v in started["params"].items() if not k.startswith("tofe.")},
                tuned.backbone_params())                           # the student's backbone: the --init file's
    assert "ToFe modules: new tofe modules (--fresh-modules)" in out
    assert f"teacher: the backbone of --teacher {files / 'dense.npz'}" in out
    saved = json.loads((files / "run" / "options.json").read_text())
    assert saved["fresh_modules"] is True and saved["teacher"] == str(files / "dense.npz")
    assert len(saved["teacher_sha256"]) == 64 and "target" not in saved and saved["budget"] == 0.5


@pytest.mark.parametrize("extra, message", [
    (["--method", "dynamicvit"], r"its ToFe modules were trained for method 'tofe', not 'dynamicvit': pass "
                                 r"--method tofe to continue them, or --fresh-modules"),
    (["--stages", "1", "2", "--keep-ratios", "0.5", "0.3"],
     r"its ToFe modules are for stages starting at blocks \[1, 2, 3\], these options ask for \[1, 2\]: pass "
     r"--stages 1 2 3 to continue them, or --fresh-modules"),
    (["--approx-reduction", "2"], r"ToFe module tofe.approx.0.fc1.bias is \(2,\) in the file, these options "
                                  r"need \(4,\) \(the file's modules were made with --approx-reduction 4, "
                                  r"these options ask for 2\): pass --approx-reduction 4 to continue them, or "
                                  r"--fresh-modules"),
])
def test_modules_that_do_not_fit_are_refused_naming_what_differs(files, capsys, started, extra, message):
    code, _, err = run(capsys, args_for(files, *extra))
    assert code == 2 and err.startswith("minitofe: error: ") and "tuned.npz" in err
    assert re.search(message, err), err
    assert not started                                                       # nothing was trained
    code, _, err = run(capsys, args_for(files, *extra, "--fresh-modules", out="run2"))
    assert code == 0 and started, err                                        # the option the error names


def test_a_teacher_of_another_architecture_is_refused(files, capsys, started):
    other = minitofe.new_model(CFG.replace(num_classes=5), minitofe.ToFeConfig(method="dense"),
                               np.random.default_rng(1), np.float32)
    minitofe.save_model(files / "other.npz", other)
    code, _, err = run(capsys, args_for(files, "--teacher", files / "other.npz"))
    assert code == 2 and "--teacher" in err and "other.npz" in err and "num_classes 5 (--init: 3)" in err
    assert not started


@pytest.mark.parametrize("flags", [["--budget", "0.6"], ["--target", "0.6"], ["--config", "{cfg}"]])
def test_budget_and_its_old_name_target_reach_the_config(files, capsys, started, flags):
    (files / "c.json").write_text(json.dumps({"target": 0.6}))             # a config file of before
    code, _, err = run(capsys, args_for(files, *(f.format(cfg=files / "c.json") for f in flags)))
    assert code == 0, err
    assert started["tofe"].target_ratio == 0.6
    assert json.loads((files / "run" / "options.json").read_text())["budget"] == 0.6


def test_train_help_names_budget_as_the_other_commands_do(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--budget BUDGET" in text and "--target" not in text
    assert "MACs budget as a fraction of dense, e.g. 0.5 as in the README's tables" in " ".join(text.split())
    assert "--teacher TEACHER" in text and "--fresh-modules" in text


def test_a_run_saved_before_the_rename_resumes_with_its_own_values(files, capsys):
    """An options.json with "target" and without fresh_modules / teacher (written before they existed, by
    a run that re-initialised the modules of another method) resumes: the checkpoint's config check
    would name tofe.target_ratio if "target" were dropped."""
    argv = args_for(files, "--method", "dynamicvit", "--budget", "0.6", "--fresh-modules")
    code, _, err = run(capsys, argv + ["--stop-at", "1"])
    assert code == 0, err
    path = files / "run" / "options.json"
    saved = json.loads(path.read_text())
    saved["target"] = saved.pop("budget")
    for key in ("fresh_modules", "teacher", "teacher_sha256"):
        saved.pop(key, None)
    path.write_text(json.dumps(saved))
    code, out, err = run(capsys, ["train", "--out", files / "run", "--resume", "--no-progress"])
    assert code == 0, err
    final = minitofe.load_model(files / "run" / "final.npz")
    assert final.tofe.method == "dynamicvit" and final.tofe.target_ratio == 0.6


def test_a_resumed_run_refuses_a_teacher_file_that_changed(files, capsys):
    code, _, err = run(capsys, args_for(files, "--teacher", files / "dense.npz", "--stop-at", "1"))
    assert code == 0, err
    minitofe.save_model(files / "dense.npz", minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                               np.random.default_rng(7), np.float32))
    code, _, err = run(capsys, ["train", "--out", files / "run", "--resume", "--no-progress"])
    assert code == 2 and "dense.npz: this --teacher file is not the one the run" in err
    assert "the teacher would differ" in err


def test_the_last_line_reads_the_learned_ratios_to_3_decimals(files, capsys):
    code, out, err = run(capsys, args_for(files))
    assert code == 0, err
    last = [line for line in out.splitlines() if line.startswith("trained tofe:")]
    assert len(last) == 1 and re.search(r"learned keep ratios \(\d\.\d{3}, \d\.\d{3}, \d\.\d{3}\);", last[0])
    assert re.search(r"top-1 \d+\.\d\d % on 4 images at", out), out
