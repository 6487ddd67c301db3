"""The dense section's optional runtimes (onnxruntime, torch.compile): left out with a reason when their
packages are missing; the ONNX export's cache (key, atomic write, reuse, a bad file exported again), with
a stand-in exporter so it runs without torch; and, where torch, timm and onnxruntime are installed, a
quick dense run with both whose logits are timm eager's. No timing is asserted."""
import json
import os
import sys

import pytest

from minitofe.bench import onnx_cache, runtimes
from minitofe.bench.tables import format_tables
from minitofe.cli import main

VERSIONS = {"torch": "2.14.1+cu130", "timm": "1.0.31", "onnx": "1.23.2", "onnxscript": "0.7.2"}


def test_without_the_runtimes_the_dense_section_runs_and_says_why_they_are_left_out(capsys, monkeypatch):
    """onnxruntime that does not import and no C++ compiler for inductor: the dense section runs without
    them, its JSON and its table name each one left out and why (without torch: "torch not installed")."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # import onnxruntime fails here
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert main(["bench", "--quick", "--json", "--sections", "dense", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    dense = res["dense"]
    assert set(dense["skipped"]) >= {"onnxruntime", "torch_compile"}
    torch_missing = runtimes._missing("torch", "timm")
    if torch_missing:
        assert dense["skipped"] == {c: torch_missing for c in ("timm", "onnxruntime", "torch_compile")}
    else:
        assert dense["skipped"] == {"onnxruntime": "onnxruntime not installed",
                                    "torch_compile": "no C++ compiler for torch.compile's inductor "
                                                     "(no-such-compiler-here)"}
    assert dense["settings"] == {} and set(dense["threads"]) == {"reference", "fast"} | \
        ({"timm"} if not torch_missing else set())
    for row in dense["rows"]:
        assert row["fast_img_s"] > 0 and row["fast_vs_reference"]["median"] > 0
        assert not any(k.startswith(("onnxruntime", "torch_compile", "fast_vs_onnx", "fast_vs_torch_c"))
                       for k in row)
    assert res["machine"]["onnxruntime"] is None
    table = format_tables(res)
    assert "left out: " in table and f"onnxruntime ({dense['skipped']['onnxruntime']})" in table


def test_the_cache_lives_under_xdg_cache_home_or_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_cache.cache_dir() == str(tmp_path / "xdg" / "minitofe" / "onnx")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unusable in ("", "relative/cache"):                       # unset or relative: ~/.cache
        monkeypatch.setenv("XDG_CACHE_HOME", unusable)
        assert onnx_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "minitofe" / "onnx")


def test_the_cache_key_names_the_model_every_version_and_the_opset():
    key = onnx_cache.cache_key("deit_small_patch16_224", VERSIONS, 20, "dynamic-batch")
    assert key == ("deit_small_patch16_224-onnx1.23.2-onnxscript0.7.2-timm1.0.31-torch2.14.1_cu130-opset20-"
                   "dynamic-batch.onnx")
    keys = {key, onnx_cache.cache_key("deit_tiny_patch16_224", VERSIONS, 20, "dynamic-batch"),
            onnx_cache.cache_key("deit_small_patch16_224", VERSIONS, 18, "dynamic-batch")}
    keys |= {onnx_cache.cache_key("deit_small_patch16_224", dict(VERSIONS, **{lib: "9"}), 20, "dynamic-batch")
             for lib in VERSIONS}
    assert len(keys) == 3 + len(VERSIONS)                         # any change: another file
    assert all(os.sep not in k and "+" not in k for k in keys)


class Exporter:
    """A stand-in for the ONNX export: writes ``payload`` (JSON) to the path it is given, counting calls;
    with ``fail_after`` it writes half of it and then raises, as an export stopped halfway."""

    def __init__(self, final, payload=None, fail_after=False):
        self.final, self.payload, self.fail_after, self.calls = final, payload or {"weights": [1, 2, 3]}, \
            fail_after, 0

    def __call__(self, dest):
        self.calls += 1
        assert os.path.dirname(dest) == os.path.dirname(self.final) and dest != self.final
        text = json.dumps(self.payload)
        with open(dest, "w") as f:
            f.write(text[:len(text) // 2])
            f.flush()
            if os.path.exists(self.final):                       # the final name never holds a partial export
                with open(self.final, "rb") as old:
                    assert old.read() != text[:len(text) // 2].encode()
            if self.fail_after:
                raise KeyboardInterrupt("stopped mid-export")
            f.write(text[len(text) // 2:])


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_an_export_is_written_once_then_reused(tmp_path):
    path = str(tmp_path / "onnx" / "m.onnx")
    export = Exporter(path)
    assert onnx_cache.cached_export(path, export, load_json) == (export.payload, True)
    assert onnx_cache.cached_export(path, export, load_json) == (export.payload, False)
    assert export.calls == 1 and os.listdir(tmp_path / "onnx") == ["m.onnx"]    # no temporary file left


def test_an_export_stopped_halfway_leaves_nothing_under_the_final_name(tmp_path):
    path = str(tmp_path / "m.onnx")
    with pytest.raises(KeyboardInterrupt):
        onnx_cache.cached_export(path, Exporter(path, fail_after=True), load_json)
    assert os.listdir(tmp_path) == []
    export = Exporter(path)                                       # the next run exports afresh
    assert onnx_cache.cached_export(path, export, load_json) == (export.payload, True)


@pytest.mark.parametrize("bad", [b"", b'{"weights": [1, 2', b"\x00\xff garbage"])
def test_a_corrupt_or_partial_cached_file_is_exported_again(tmp_path, bad, capsys):
    path = str(tmp_path / "m.onnx")
    with open(path, "wb") as f:
        f.write(bad)
    export = Exporter(path)
    assert onnx_cache.cached_export(path, export, load_json) == (export.payload, True)
    assert export.calls == 1 and load_json(path) == export.payload
    assert "is unusable" in capsys.readouterr().err
    assert onnx_cache.cached_export(path, export, load_json) == (export.payload, False)


def test_a_fresh_export_that_does_not_load_raises(tmp_path):
    path = str(tmp_path / "m.onnx")

    def export(dest):
        with open(dest, "w") as f:
            f.write("not json")
    with pytest.raises(ValueError):
        onnx_cache.cached_export(path, export, load_json)


def test_logits_of_another_computation_are_refused():
    import numpy as np
    want = np.linspace(-3, 3, 20).reshape(2, 10)
    assert runtimes.check_logits(want + 1e-5, want, "x") == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="computes something else"):
        runtimes.check_logits(want + 1e-3, want, "x")


# --- with the runtimes installed ---------------------------------------------------------------------------

needs_runtimes = pytest.mark.skipif(
    bool(set(runtimes.skipped()) & {"timm", "onnxruntime", "torch_compile"}),
    reason=f"needs torch, timm, onnx, onnxscript, onnxruntime and a C++ compiler: {runtimes.skipped()}")


@pytest.mark.torch
@needs_runtimes
def test_a_quick_dense_run_times_both_runtimes_on_timm_s_logits(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["bench", "--quick", "--json", "--sections", "dense", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    dense = res["dense"]
    assert dense["skipped"] == {} and res["machine"]["onnxruntime"] and res["machine"]["onnx"]
    for row in dense["rows"]:
        for c in ("timm", "onnxruntime", "torch_compile"):
            assert row[f"{c}_img_s"] > 0 and row[f"fast_vs_{c}"]["n"] == 2
    ort = dense["settings"]["onnxruntime"]
    assert {k: ort[k] for k in ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads",
                                "execution_mode", "providers", "opset")} == \
        {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 1, "inter_op_num_threads": 1,
         "execution_mode": "ORT_SEQUENTIAL", "providers": ["CPUExecutionProvider"], "opset": runtimes.OPSET}
    assert ort["file"].startswith(str(tmp_path)) and os.path.getsize(ort["file"]) == ort["file_bytes"] > 0
    assert ort["exported_this_run"]
    for c in ("onnxruntime", "torch_compile"):
        diffs = dense["settings"][c]["max_abs_diff_vs_eager"]
        assert set(diffs) == {"batch1", "batch2"} and max(diffs.values()) < 1e-4
    assert dense["threads"]["onnxruntime"]["torch"] == 1 and dense["threads"]["torch_compile"]["torch"] == 1
    assert "onnxruntime" in format_tables(res)


@pytest.mark.torch
@needs_runtimes
def test_the_onnxruntime_contender_computes_timm_s_logits_and_reuses_its_export(monkeypatch, tmp_path):
    """Its outputs are the timm contender's model's on the same inputs (to 1e-4); a second build reads
    the cached file; an export of another model is refused before it is timed."""
    import numpy as np
    import torch

    from minitofe.bench.contenders import batches, build, dense_model, images, timm_model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = build("dense", "onnxruntime", True, threads=1)
    assert calls.info["exported_this_run"] and set(calls) == {f"batch{B}" for B in batches("dense", True)}
    model = timm_model(dense_model(True))
    for B in batches("dense", True):
        with torch.inference_mode():
            want = model(torch.from_numpy(images(B))).numpy()
        np.testing.assert_allclose(calls[f"batch{B}"]()[0], want, atol=1e-4, rtol=0)
    assert not build("dense", "onnxruntime", True, threads=1).info["exported_this_run"]

    real_export = runtimes.export_onnx

    def export_another(model, dest):                  # a planted bug: the head's bias moved
        with torch.no_grad():
            model.head.bias += 0.01
        real_export(model, dest)
    monkeypatch.setattr(runtimes, "export_onnx", export_another)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    with pytest.raises(ValueError, match="computes something else"):
        build("dense", "onnxruntime", True)


@pytest.mark.torch
@needs_runtimes
def test_a_compiled_model_that_computes_something_else_is_refused(monkeypatch):
    import torch
    monkeypatch.setattr(torch, "compile", lambda model, **kw: (lambda x: model(x) * 1.01))
    with pytest.raises(ValueError, match="torch.compile: logits differ"):
        runtimes.build_torch_compile(True)
