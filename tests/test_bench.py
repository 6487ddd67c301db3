"""``minitofe bench --quick --json`` runs end to end and reports every section (no timing is asserted:
speed is measured by the benchmark itself, not by tests)."""
import json

import pytest

from minitofe import kernels
from minitofe.cli import main

# the bench's "fast" contenders are the Numba kernels; without them its token section cannot run
needs_fast = pytest.mark.skipif(not kernels.available(),
                                reason="the bench's fast contenders need Numba (not installed, or MINITOFE_NO_NUMBA)")


@needs_fast
def test_bench_quick_json_reports_every_section(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)            # exactly one JSON object on stdout
    assert set(res) >= {"machine", "dense", "tofe", "tokens", "train", "profile", "startup", "bench_seconds"}
    assert res["machine"]["dtype"] == "float32" and res["machine"]["cores"] >= 1
    rows = res["dense"]["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["reference_img_s"] > 0 and r["fast_img_s"] > 0 for r in rows)
    for r in rows:                                      # ratios: median and spread over the rounds
        ratio = r["fast_vs_reference"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"] and ratio["n"] == 2
    assert set(res["dense"]["threads"]) >= {"reference", "fast"}   # each contender reported its threads
    for r in res["tofe"]["rows"]:                       # keep ratios chosen to hit 70 / 50 / 35 % MACs
        assert min(abs(r["macs_ratio"] - t) for t in (0.70, 0.50, 0.35)) < 0.02, r
    assert res["tokens"]["gather_reference_vs_copy"]["median"] > 0 and res["train"]["reference_s"] > 0
    assert res["tokens"]["scatter_fast_first_vs_copy"]["median"] > 0
    assert res["profile"]["sgemm_gflops"] and all(r["forward_s"] > 0 for r in res["profile"]["ops"])
    for mode in ("default", "fast", "no_fast"):
        assert res["startup"][mode]["wall_s"] > 0 and res["startup"][mode]["peak_rss_mib"] > 10


@needs_fast
def test_contenders_run_in_processes_of_their_own_with_the_threads_asked_for():
    """``--threads N`` reaches every contender's process (BLAS and Numba report N), and each contender
    has a process of its own (distinct pids)."""
    from minitofe.bench.rounds import Worker
    workers = [Worker("tokens", c, quick=True, threads=1) for c in ("copy", "fast")]
    try:
        infos = [w.ready() for w in workers]
        assert infos[0]["pid"] != infos[1]["pid"]
        assert infos[1]["threads"]["blas"] == 1 and infos[1]["threads"].get("numba", 1) == 1
        assert len(workers[0].ask({"run": "gather", "calls": 3})["times"]) == 3
    finally:
        for w in workers:
            w.close()


def test_a_turn_runs_its_warmup_calls_untimed_before_the_timed_ones(monkeypatch):
    """``{"run", "calls", "warmup"}``: the worker makes the warm-up calls first and times only the others
    (the gather / scatter section opens each turn so: its calls are too short to time from cold)."""
    import json

    from minitofe.bench import contenders, worker
    made = []
    monkeypatch.setattr(contenders, "build", lambda *a: {"op": lambda: made.append(1)})
    replies = []
    lines = [json.dumps({"run": "op", "calls": 2, "warmup": 3}), json.dumps({"run": "op", "calls": 4}),
             json.dumps({"quit": True})]
    worker.serve({"section": "tokens", "contender": "copy"}, replies.append, iter(lines))
    assert "ready" in replies[0]
    assert [len(r["times"]) for r in replies[1:]] == [2, 4]
    assert len(made) == 1 + (3 + 2) + 4                              # build's warm-up, then the turns


def test_the_token_section_warms_each_turn_up(monkeypatch):
    from minitofe.bench import sections
    plans = []

    def fake_compare(section, contenders, plan, quick, threads):
        plans.append(plan)
        return {"threads": {}, "seconds": {k: {c: {"median": 1.0} for c in contenders} for k, *_ in plan}}
    monkeypatch.setattr(sections, "compare", fake_compare)
    monkeypatch.setattr(sections, "ratio", lambda *args: {"median": 1.0})
    sections.bench_tokens(quick=False)
    assert [key for key, *_ in plans[0]] == ["gather", "scatter"]
    assert all(len(p) == 4 and p[3] == sections.TOKEN_WARMUP > 0 for p in plans[0])


@needs_fast
def test_the_token_diagnostic_moves_exactly_the_copys_bytes():
    """``fast_first`` (the fast kernels on the rows the plain copy reads) gathers what the copy copies
    and scatters back what was there, so its ratio to the copy is the loop's cost alone."""
    import numpy as np
    from minitofe.bench.contenders import BUILDERS, token_case
    x, idx, _ = token_case(quick=True)
    copy, first, fast = (BUILDERS["tokens"](c, True) for c in ("copy", "fast_first", "fast"))
    np.testing.assert_array_equal(first["gather"](), copy["gather"]())
    np.testing.assert_array_equal(first["scatter"](), x)
    assert not np.array_equal(fast["gather"](), copy["gather"]())     # the timed fast rows are others


def test_bench_rejects_unknown_sections_and_thread_counts():
    import pytest

    from minitofe.bench import main as bench_main, run_bench
    with pytest.raises(ValueError, match="unknown bench section"):
        run_bench(sections=["nope"])
    with pytest.raises(SystemExit):
        bench_main(["--threads", "0"])


def test_fresh_process_peak_memory_is_the_commands_own():
    """A child's ru_maxrss starts from its parent's RSS on Linux; the launcher keeps the benchmark's
    gigabytes out of the start-up figure: a no-op command from a 400 MiB parent reports far less, and a
    command that touches 200 MiB reports at least that."""
    import sys

    import numpy as np

    from minitofe.bench import run_fresh
    ballast = np.ones(400 * 2**20 // 8)                 # 400 MiB resident in this process
    _, idle = run_fresh([sys.executable, "-c", "pass"])
    _, busy = run_fresh([sys.executable, "-c", "import numpy; a = numpy.ones(200 * 2**20 // 8)"])
    assert ballast.sum() > 0
    assert idle < 150, idle
    assert busy >= 200, busy


def test_without_numba_the_token_section_compares_the_reference_with_a_copy(capsys, monkeypatch):
    """The fast gather / scatter are Numba's: without them the section runs without its fast rows (it
    stopped with an AttributeError from the worker)."""
    monkeypatch.setenv("MINITOFE_NO_NUMBA", "1")
    assert main(["bench", "--quick", "--json", "--sections", "tokens"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens["gather_reference_vs_copy"]["median"] > 0 and "gather_fast_ms" not in tokens


@needs_fast
def test_the_macs_section_reports_every_method_and_budget(capsys):
    """``--sections macs --quick --json``: every method at every budget, on both models and batches, with
    its realised MACs within 2 points of the budget, a speed-up over dense and where its time went."""
    from minitofe.bench import macs
    assert main(["bench", "--quick", "--json", "--sections", "macs", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)["macs"]
    rows = [r for r in res["rows"] if r["method"] != "dense"]
    want = {(name, B, m, b) for name in macs.models(True) for B in macs.batches(True)
            for m in macs.METHODS for b in macs.BUDGETS}
    assert {(r["model"], r["batch"], r["method"], r["budget"]) for r in rows} == want
    for r in rows:
        assert abs(r["macs_ratio"] - r["budget"]) <= 0.02, r
        assert r["speedup"]["median"] > 0 and r["speedup"]["min"] > 0 and r["speedup"]["n"] == 2
        assert r["seconds"] > 0 and r["dense_seconds"] > 0 and r["ideal"] == 1 / r["macs_ratio"]
        assert r["breakdown"]["total_s"] > 0 and r["breakdown"]["seconds"]["blocks (fast kernels)"] > 0
    assert all(t == {"blas": 1, "numba": 1} for t in res["threads"].values())     # one process each
    assert {r["weights"] for r in rows if r["model"] != macs.FMNIST} == {"random weights"}


def test_macs_contenders_are_named_for_their_method_and_budget():
    from minitofe.bench import macs
    names = macs.contenders()
    assert names[0] == "dense" and len(names) == 1 + len(macs.METHODS) * len(macs.BUDGETS)
    assert [macs.parse(c) for c in ("dense", "tofe35", "evit50", "dynamicvit70")] == \
        [("dense", 1.0), ("tofe", 0.35), ("evit", 0.5), ("dynamicvit", 0.7)]


def test_the_macs_breakdown_parts_a_calls_time_without_counting_twice():
    """The parts of ``macs.breakdown`` never overlap: their sum is the call's time (under cProfile)."""
    import numpy as np

    from minitofe.bench import macs
    model, _ = macs.weights_of(macs.FMNIST, "tofe")
    x = macs.images(model.cfg, 2)
    ratios = macs.keep_ratios(model, "tofe", 0.5)
    from minitofe import predict
    b = macs.breakdown(lambda: predict(model, x, method="tofe", keep_ratios=ratios), calls=2)
    assert sum(b["seconds"].values()) == pytest.approx(b["total_s"], rel=1e-6)
    assert {"ToFe selector", "ToFe approximator", "gather / scatter"} <= set(b["seconds"])
    assert np.isfinite(b["total_s"])
