"""Crash safety and corrupt files: fuzzed weight files, a process killed while saving, Ctrl-C during
training. Nothing the user wrote is lost; every failure is a documented ValueError/TypeError."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minitofe
from minitofe.train.checkpoint import load_checkpoint
from minitofe.config import ViTConfig
from minitofe.io import weights as W

CFG = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=4, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    model = minitofe.new_model(CFG, minitofe.ToFeConfig(stages=(0,), keep_ratios=(0.5,)),
                               np.random.default_rng(0), np.float32)
    minitofe.save_model(str(d / "m.npz"), model)
    W.save_safetensors(str(d / "m.safetensors"), model.params, CFG)
    return {ext: (d / f"m.{ext}").read_bytes() for ext in ("npz", "safetensors")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ext=st.sampled_from(["npz", "safetensors"]), data=st.data())
def test_fuzzed_weight_files_raise_only_documented_errors(tmp_path, valid_files, ext, data):
    raw = bytearray(valid_files[ext])
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / f"fuzz.{ext}"
    path.write_bytes(bytes(raw))
    try:
        params, cfg, _ = W.load_weights(str(path), num_heads=2 if ext == "safetensors" else None)
    except (ValueError, TypeError) as e:
        assert str(path) in str(e)                   # the message names the file
        return
    W.check_params(params, cfg, extra_ok=("tofe.",))  # if it loads, it is a consistent weight set



def test_an_unknown_zip_version_is_a_corrupt_file_not_a_crash(tmp_path, valid_files):
    """The case the fuzzing above found: one byte of the zip's central directory (the version needed to
    extract) set to a value zipfile does not know; zipfile raises NotImplementedError, minitofe a
    ValueError naming the file, for weights and for the outputs ``minitofe compare`` reads."""
    from minitofe.validate.compare import read_outputs
    raw = bytearray(valid_files["npz"])
    central = raw.index(b"PK\x01\x02")                 # the first central-directory entry
    raw[central + 6] = 64                                # "version needed to extract": 6.4
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(raw))
    for read in (W.load_weights, read_outputs):
        with pytest.raises(ValueError, match="bad.npz: not a readable .npz file"):
            read(str(path))

SAVER = textwrap.dedent("""
    import sys, numpy as np
    from minitofe.train.checkpoint import save_checkpoint
    path = sys.argv[1]
    params = {"w": np.zeros((512, 512), np.float32)}
    opt = {"step": 0, "m": {"w": np.zeros((512, 512), np.float32)}, "v": {"w": np.zeros((512, 512), np.float32)}}
    save_checkpoint(path, params, opt, {"step": 0})
    print("ready", flush=True)                   # a whole checkpoint is there: every kill has one to keep
    i = 0
    while True:
        i += 1
        params["w"][:] = i
        save_checkpoint(path, params, opt, {"step": i})
""")


def test_killed_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    """Killed at three moments after its first checkpoint (the saver says "ready" once one is written, so
    a slow machine cannot be killed before there is a checkpoint to keep)."""
    path = tmp_path / "ckpt.npz"
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()                                   # SIGKILL: no cleanup handlers run
        proc.wait()
        proc.stdout.close()
        params, _, meta = load_checkpoint(str(path))
        assert np.all(params["w"] == meta["step"])     # a whole, consistent checkpoint
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert len(leftovers) <= 3                         # at most the killed writes' temporary files


def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path):
    """Ctrl-C once training has logged a step (its SIGINT handler is in place by then, however long the
    start took on this machine): a checkpoint, exit code 0."""
    model = minitofe.new_model(CFG, minitofe.ToFeConfig(stages=(0,), keep_ratios=(0.5,)),
                               np.random.default_rng(0), np.float32)
    minitofe.save_model(str(tmp_path / "init.npz"), model)
    script = textwrap.dedent(f"""
        import numpy as np, minitofe
        from minitofe.train import TrainConfig, train
        model = minitofe.load_model({str(tmp_path / 'init.npz')!r})
        rng = np.random.default_rng(0)
        data = (rng.standard_normal((64, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 64))
        print("ready", flush=True)
        train(model, model.backbone_params(), data, None,
              TrainConfig(steps=100000, batch_size=4, checkpoint_every=100000, out_dir={str(tmp_path / 'run')!r}),
              resume=True, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    log, deadline = tmp_path / "run" / "log.jsonl", time.monotonic() + 120
    while not (log.exists() and log.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]            # it must still be training
    assert log.exists(), "training logged no step within 120 s"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted: checkpoint" in out
    params, _, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["step"] > 0 and all(np.all(np.isfinite(v)) for v in params.values())
