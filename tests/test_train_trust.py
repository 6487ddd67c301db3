"""Training you can trust: the teacher never moves, frozen parameters cannot be written, and a run killed
at a random point and resumed ends bit-identical to an uninterrupted one (CLI, both data paths, the
float32 fast path and the float64 reference)."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import minitofe
import minitofe.train.loop as train_mod
from minitofe.backend import frozen_copy, read_only
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.train import TrainConfig, train

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)


def _model(method="tofe", dtype=np.float64):
    tcfg = minitofe.ToFeConfig(method=method, stages=(1, 2), keep_ratios=(0.5, 0.5), target_ratio=0.6)
    return minitofe.new_model(CFG, tcfg, np.random.default_rng(0), dtype)


def _data(n=24):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 3, n)


def _capture_teachers(monkeypatch):
    """Record the teacher every training step receives."""
    seen, real = [], train_mod.train_step

    def spy(model, teacher_params, *args, **kw):
        seen.append(teacher_params)
        return real(model, teacher_params, *args, **kw)
    monkeypatch.setattr(train_mod, "train_step", spy)
    return seen


def test_read_only_and_frozen_copy_own_their_arrays():
    a = np.arange(4.0)
    view = read_only(a)
    with pytest.raises(ValueError, match="read-only"):
        view += 1
    a += 1                                                  # the owner may still write its own array
    assert np.array_equal(view, a)
    copy = frozen_copy({"w": a})["w"]
    a += 1
    assert not np.shares_memory(copy, a) and np.array_equal(copy, a - 1)
    with pytest.raises(ValueError, match="read-only"):
        copy[0] = 7.0


def test_the_teacher_stays_the_init_even_when_the_caller_passes_the_students_arrays(tmp_path, monkeypatch):
    model = _model()
    before = {k: v.copy() for k, v in model.backbone_params().items()}
    seen = _capture_teachers(monkeypatch)
    cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, backbone_lr_scale=1.0, out_dir=str(tmp_path))
    train(model, model.backbone_params(), _data(), None, cfg, progress=False)  # student's own arrays
    assert len(seen) == 4
    for teacher in seen:
        assert all(not teacher[k].flags.writeable for k in teacher)
        assert all(np.array_equal(teacher[k], before[k]) for k in before)    # bit for bit
        assert not any(np.shares_memory(teacher[k], model.params[k]) for k in before)
    moved = [k for k in before if not np.array_equal(model.params[k], before[k])]
    assert len(moved) > len(before) // 2                     # the student did train


def test_frozen_parameters_are_read_only_while_training_and_given_back_unchanged(tmp_path, monkeypatch):
    model = _model()
    before = {k: v.copy() for k, v in model.params.items()}
    owned = {k: model.params[k] for k in model.backbone_params()}
    flags = []
    real = train_mod.train_step

    def spy(m, *args, **kw):
        flags.append({k: m.params[k].flags.writeable for k in m.params})
        return real(m, *args, **kw)
    monkeypatch.setattr(train_mod, "train_step", spy)
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=1, backbone_lr_scale=0.0, out_dir=str(tmp_path))
    train(model, model.backbone_params(), _data(), None, cfg, progress=False)
    for f in flags:
        assert all(f[k] is (k.startswith("tofe.")) for k in f)
    for k in owned:                                          # the caller's own, writable arrays, unchanged
        assert model.params[k] is owned[k] and owned[k].flags.writeable
        assert np.array_equal(owned[k], before[k])
    assert any(not np.array_equal(model.params[k], before[k]) for k in model.params if k.startswith("tofe."))


def test_cli_teacher_is_byte_identical_to_the_init_file(tmp_path, monkeypatch):
    init = tmp_path / "init.npz"
    minitofe.save_model(init, _model("dense", np.float32))
    folder = _image_folder(tmp_path / "data")
    seen = _capture_teachers(monkeypatch)
    code = main(["train", "--init", str(init), "--data", str(folder), "--steps", "3", "--batch", "4",
                 "--warmup-steps", "1", "--out", str(tmp_path / "run"), "--no-progress", "--no-fast",
                 "--backbone-lr-scale", "1.0"])
    assert code == 0 and len(seen) == 3
    want = minitofe.load_model(init).params
    for teacher in seen:
        assert set(teacher) == set(want)
        assert all(teacher[k].tobytes() == want[k].tobytes() for k in want)
    final = minitofe.load_model(tmp_path / "run" / "final.npz").params
    assert any(final[k].tobytes() != want[k].tobytes() for k in want)      # while the student moved


def test_resume_refuses_an_init_file_that_changed(tmp_path, capsys):
    init = tmp_path / "init.npz"
    minitofe.save_model(init, _model("dense", np.float32))
    folder, out = _image_folder(tmp_path / "data"), tmp_path / "run"
    args = ["train", "--init", str(init), "--data", str(folder), "--steps", "3", "--batch", "4", "--out", str(out),
            "--no-progress", "--no-fast"]
    assert main(args + ["--stop-at", "1"]) == 0
    assert "resume with" in capsys.readouterr().out.replace("continue with", "resume with")
    minitofe.save_model(init, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(9), np.float32))
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "not the one the run" in capsys.readouterr().err


# ---- kill -9 at a random point, then --resume: bit-identical to an uninterrupted run ----

def _image_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _fashion_mnist(root, n=48):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for split, count in (("train", n), ("t10k", 12)):
        for kind, arr, magic in (("images-idx3", rng.integers(0, 256, (count, 28, 28)).astype(np.uint8), 0x803),
                                 ("labels-idx1", rng.integers(0, 10, count).astype(np.uint8), 0x801)):
            with gzip.open(root / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
                        + arr.tobytes())
    return root


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return [sys.executable, "-m", "minitofe", "train", *map(str, args)], env


def _steps_logged(out):
    path = out / "log.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and '"eval"' not in line)


def _stopping_before_checkpoint(cmd, step):
    """``cmd`` (a ``_cli`` train command) run so that the process stops itself (SIGSTOP) just before it
    writes the checkpoint of ``step``: a poller starved by a busy machine then finds it stopped instead of
    finished, and the kill still lands before the run's end. Nothing of ``minitofe`` is changed."""
    code = ("import os, signal, sys; import minitofe.train.loop as L; from minitofe.cli import main\n"
            "save = L.save_checkpoint\n"
            "def gated(path, params, opt, meta):\n"
            f"    if meta['step'] == {step}: os.kill(os.getpid(), signal.SIGSTOP)\n"
            "    save(path, params, opt, meta)\n"
            "L.save_checkpoint = gated\n"
            "sys.exit(main(sys.argv[1:]))")
    return [cmd[0], "-c", code, *cmd[3:]]                    # cmd = [python, -m, minitofe, train, ...]


def _stopped(proc):
    """True once ``proc`` has stopped itself (see ``_stopping_before_checkpoint``); False while it runs.
    A run that ended is reported as stopped too, so that the poller gives up on it."""
    pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
    if pid == 0:
        return False
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)         # reaped here: Popen.wait must not wait again
    return True


@pytest.mark.parametrize("data", ["folder", "fashion-mnist"])
@pytest.mark.parametrize("dtype, fast", [("float32", "--fast"), ("float64", "--no-fast")])
def test_kill_9_at_a_random_point_then_resume_is_bit_identical(tmp_path, data, dtype, fast):
    """An uninterrupted run and a killed-then-resumed one, three processes on this machine: bit for bit,
    because they share the NumPy, BLAS kernel and Numba, and the thread counts are pinned to one
    (``_cli``) so that no reduction is split differently. A claim for one machine: another CPU's kernels
    round differently (``minitofe.testing.provenance``), so the bits are never compared across machines."""
    if data == "folder":
        init, source = tmp_path / "init.npz", ["--data", _image_folder(tmp_path / "data")]
        minitofe.save_model(init, _model("dense", np.float32))
    else:                           # a 28x28 model on fake Fashion-MNIST files in the official format
        cfg = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=8, depth=4, num_heads=2)
        init, source = tmp_path / "init.npz", ["--data-root", _fashion_mnist(tmp_path / "fm")]
        minitofe.save_model(init, minitofe.new_model(cfg, minitofe.ToFeConfig(method="dense"),
                                                     np.random.default_rng(2), np.float32))
    steps = 12
    common = ["--init", init, *source, "--steps", steps, "--batch", 4, "--warmup-steps", 2, "--dtype", dtype,
              fast, "--checkpoint-every", 1, "--eval-every", 5, "--eval-images", 8, "--no-progress",
              "--target", 0.6]
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(_cli(*common, "--out", full)[0], env=_cli()[1], check=True, timeout=300)
    kill_after = int(np.random.default_rng(zlib.crc32(f"{data} {dtype}".encode())).integers(2, steps - 1))
    cmd, env = _cli(*common, "--out", part)
    proc = subprocess.Popen(_stopping_before_checkpoint(cmd, steps - 1), env=env)
    deadline = time.time() + 300
    while _steps_logged(part) < kill_after and not _stopped(proc) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)                          # no handler runs: a crash, not a Ctrl-C
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(_cli("--out", part, "--resume")[0], env=env, check=True, timeout=300)
    a = minitofe.load_model(full / "final.npz")
    b = minitofe.load_model(part / "final.npz")
    assert set(a.params) == set(b.params)
    assert all(a.params[k].tobytes() == b.params[k].tobytes() for k in a.params)
    assert a.learned_keep_ratios == b.learned_keep_ratios
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (full, part)]
    assert [r["step"] for r in logs[0] if "eval" not in r] == [r["step"] for r in logs[1] if "eval" not in r]


# ---- every other place two owners could share an array ----

def test_no_other_owner_shares_the_models_arrays(tmp_path):
    from minitofe.train.checkpoint import load_checkpoint, save_checkpoint
    from minitofe.io.timm import from_timm_state_dict, to_timm_state_dict
    from minitofe.train.optim import adamw_init
    model = _model()
    params = model.params
    # the optimizer's moments are its own
    opt = adamw_init(params)
    assert not any(np.shares_memory(opt[m][k], params[k]) for m in ("m", "v") for k in params)
    # a checkpoint read back holds fresh, writable arrays
    save_checkpoint(str(tmp_path / "c.npz"), params, opt, {"step": 0})
    loaded, opt2, _ = load_checkpoint(str(tmp_path / "c.npz"))
    assert all(v.flags.writeable and not np.shares_memory(v, params[k]) for k, v in loaded.items())
    # converting from a timm state dict copies (a live torch model would otherwise train along)
    state = to_timm_state_dict(params, CFG)
    back = from_timm_state_dict(state, CFG)
    assert not any(np.shares_memory(back[k], state[k]) for k in back)
    # a weight file loaded twice gives two independent models
    minitofe.save_model(tmp_path / "w.npz", model)
    a, b = (minitofe.load_model(tmp_path / "w.npz") for _ in range(2))
    assert not any(np.shares_memory(a.params[k], b.params[k]) for k in a.params)
    # add_tofe keeps the model's own backbone arrays (documented) and gives fresh ToFe modules
    backbone = model.backbone_params()
    old_tofe = {k: v for k, v in model.params.items() if k.startswith("tofe.")}
    minitofe.add_tofe(model, minitofe.ToFeConfig(method="tofe", stages=(1, 2), keep_ratios=(0.5, 0.5)))
    assert all(model.params[k] is backbone[k] for k in backbone)
    assert not any(np.shares_memory(model.params[k], v) for k, v in old_tofe.items())


@pytest.mark.parametrize("method, fast", [("tofe", False), ("tofe", True), ("dynamicvit", False)])
def test_a_cached_teacher_trains_like_the_teacher_computed_per_batch(tmp_path, method, fast):
    from minitofe.train.teacher_cache import TeacherCache
    model, data = _model(method, np.float32), _data(30)
    data = (data[0].astype(np.float32), data[1])
    stages = model.tofe.resolved_stages(CFG.depth)
    cache = TeacherCache(model.backbone_params(), data[0], CFG, stages, chunk=8, fast=fast)
    idx = np.array([29, 3, 3, 17])
    direct = minitofe.teacher_forward(model.backbone_params(), data[0][idx], CFG, stages, fast=fast)
    got = cache.batch(idx)
    assert set(got) == set(direct)
    np.testing.assert_allclose(got["logits"], direct["logits"], rtol=1e-5, atol=1e-6)
    for a, b in zip(got["tokens"], direct["tokens"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    runs = {}
    for cached in (False, True):
        cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, fast=fast, teacher_cache=cached,
                          out_dir=str(tmp_path / str(cached)))
        runs[cached] = train(_model(method, np.float32), model.backbone_params(), data, None, cfg, progress=False)
    for k in runs[False].params:
        np.testing.assert_allclose(runs[True].params[k], runs[False].params[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_resume_with_only_out_works_from_another_folder(tmp_path, monkeypatch, capsys):
    init = tmp_path / "init.npz"
    minitofe.save_model(init, _model("dense", np.float32))
    _image_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)                                   # relative paths at the start
    args = ["train", "--init", "init.npz", "--data", "data", "--steps", "3", "--batch", "4", "--out", "run",
            "--no-progress", "--no-fast"]
    assert main(args + ["--stop-at", "1"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "final.npz").is_file()
