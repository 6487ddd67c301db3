"""onnxruntime's profile read in the kinds of minitofe's own (``bench.runtime_profile``)."""
import json

import pytest

from minitofe.bench.runtime_profile import ATTENTION, LINEAR, read_profile


def _node(op, ts, dur_us, inputs, output):
    return {"cat": "Node", "name": f"/blocks.0/{op}_kernel_time", "ts": ts, "dur": dur_us,
            "args": {"op_name": op, "input_type_shape": [{"float": s} for s in inputs],
                     "output_type_shape": [{"float": output}]}}


def _profile(tmp_path, runs=3):
    """``runs`` model runs 1000 us apart, each: a linear layer (197 x 384 -> 1152, 100 us), a q k^T
    product (6 heads, 20 us), a softmax (5 us) and a transpose (3 us); the first run is slower (warm-up)."""
    events = []
    for r in range(runs):
        t0, slow = 1000 * r, 10 if r == 0 else 1
        events.append({"cat": "Session", "name": "model_run", "ts": t0, "dur": 500})
        events += [_node("MatMul", t0 + 1, 100 * slow, [[1, 197, 384]], [1, 197, 1152]),
                   _node("MatMul", t0 + 2, 20 * slow, [[1, 6, 197, 64], [1, 6, 64, 197]], [1, 6, 197, 197]),
                   _node("Softmax", t0 + 3, 5 * slow, [[1, 6, 197, 197]], [1, 6, 197, 197]),
                   _node("Transpose", t0 + 4, 3 * slow, [[1, 197, 6, 64]], [1, 6, 197, 64])]
    events.append(_node("MatMul", 10 ** 7, 999, [[1, 197, 384]], [1, 197, 1152]))    # outside every run
    path = tmp_path / "ort.json"
    path.write_text(json.dumps(events))
    return path


def test_node_times_are_summed_by_kind_over_the_last_runs(tmp_path):
    seconds, gflops = read_profile(_profile(tmp_path), runs=2)
    assert seconds == pytest.approx({LINEAR: 100e-6, ATTENTION: 20e-6, "softmax": 5e-6,
                                     "layout (transpose, split, reshape)": 3e-6})
    assert gflops[LINEAR] == pytest.approx(2 * 197 * 384 * 1152 / 100e-6 / 1e9)
    assert gflops[ATTENTION] == pytest.approx(2 * 6 * 197 * 64 * 197 / 20e-6 / 1e9)


def test_asking_for_more_runs_than_were_profiled_is_refused(tmp_path):
    with pytest.raises(ValueError, match="2 runs profiled, 3 asked for"):
        read_profile(_profile(tmp_path, runs=2), runs=3)


def test_the_profile_section_breaks_onnxruntime_down_beside_minitofe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))               # the export goes to a fresh cache
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    from minitofe.bench.profile import profile_forward
    from minitofe.bench.runtimes import skipped
    if "onnxruntime" in skipped():
        pytest.skip(skipped()["onnxruntime"])
    p = profile_forward(quick=True, threads=1)
    rows = p["onnxruntime"]["rows"]
    assert [r["batch"] for r in rows] == [r["batch"] for r in p["ops"]]
    for r in rows:
        assert r["seconds"][LINEAR] > 0 and r["seconds"][ATTENTION] > 0 and r["gflops"][LINEAR] > 1
        assert sum(r["seconds"].values()) == pytest.approx(r["forward_s"], rel=0.2)
