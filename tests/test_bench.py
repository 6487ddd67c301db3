"""``minitofe bench --quick --json`` runs end to end and reports every section (no timing is asserted:
speed is measured by the benchmark itself, not by tests)."""
import json

from minitofe.cli import main


def test_bench_quick_json_reports_every_section(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)            # exactly one JSON object on stdout
    assert set(res) >= {"machine", "dense", "tofe", "tokens", "train", "startup", "bench_seconds"}
    assert res["machine"]["dtype"] == "float32" and res["machine"]["cores"] >= 1
    assert [r["batch"] for r in res["dense"]] == [1, 2]
    assert all(r["reference_img_s"] > 0 and r["fast_img_s"] > 0 for r in res["dense"])
    for r in res["tofe"]:                               # keep ratios chosen to hit 70 / 50 / 35 % MACs
        assert min(abs(r["macs_ratio"] - t) for t in (0.70, 0.50, 0.35)) < 0.02, r
    assert res["tokens"]["gather_reference_vs_copy"] > 0 and res["train"]["reference_s"] > 0
    for mode in ("default", "fast", "no_fast"):
        assert res["startup"][mode]["wall_s"] > 0 and res["startup"][mode]["peak_rss_mib"] > 10


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
