"""The report beside a regeneration elsewhere (``report --against``): the machine spread, and whether each
verdict survives it. Test-set figures come from a prefilled evaluation cache: no model is run."""
import json
import pathlib

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def modules(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_report
    import report_rerun
    return fmnist_report, report_rerun


def _run_folder(root, figures, grid):
    """A run folder whose final runs ``figures`` {(method, seed): top-1 %} are done, and the evaluation
    cache entries of their test figures at 50 % MACs."""
    (root / "final").mkdir(parents=True)
    (root / "choice.json").write_text(json.dumps({m: {"grid": grid, "flags": []} for m, _ in figures}))
    cache = {}
    for (method, seed), top1 in figures.items():
        path = root / "final" / f"{method}_50_s{seed}" / "final.npz"
        path.parent.mkdir()
        path.write_bytes(b"")
        cache[f"{path}|{method}|0.5|test"] = {"top1": top1 / 100, "macs_ratio": 0.5, "keep_ratios": [0.5]}
    return cache


def test_the_machine_spread_widens_the_verdicts_and_a_verdict_that_flips_is_named(modules, tmp_path):
    R, rerun = modules
    here = {("tofe", 0): 90.0, ("tofe", 1): 90.2, ("tofe", 2): 90.1,
            ("evit", 0): 89.0, ("evit", 1): 89.1, ("evit", 2): 88.9,
            ("dynamicvit", 0): 87.0, ("dynamicvit", 1): 87.2, ("dynamicvit", 2): 87.1}
    there = {("tofe", 0): 89.3, ("evit", 0): 89.6, ("dynamicvit", 0): 87.1}
    cache = {**_run_folder(tmp_path / "a", here, "bb1"), **_run_folder(tmp_path / "b", there, "bb0.1")}
    spread = rerun.rerun_report(cache, tmp_path / "a", tmp_path / "b", ["tofe", "evit", "dynamicvit"])
    assert spread == pytest.approx(0.7)                         # |89.3 - 90.0|, the largest difference
    out = json.loads((tmp_path / "a" / "report" / "rerun.json").read_text())
    by_claim = {v["claim"]: v for v in out["verdicts"]}
    # evit: 1.1 apart with seed spread 0.2; with 0.7 more still apart (1.1 > 0.9); with seed 0 from there
    # (tofe 89.87 +- 0.47, evit 89.2 +- 0.36) not apart: the verdict does not survive
    assert by_claim["evit"]["seed_spread"].startswith("yes")
    assert by_claim["evit"]["with_machine_spread"].startswith("yes")
    assert by_claim["evit"]["seed0_there"].startswith("no") and by_claim["evit"]["survives"] is False
    assert by_claim["dynamicvit"]["survives"] is True                     # 3 points apart either way
    md = (tmp_path / "a" / "report" / "rerun.md").read_text()
    assert "| evit | 50 % | bb1 | bb0.1 | 89.00 | 89.60 | +0.60 |" in md and "**0.70**" in md
    mt, st, m, s = 90.1, 0.1, 89.0, 0.1
    assert R.verdict(mt, st, 3, m, s, 3, machine=0.7) == (pytest.approx(0.9), "yes")
    assert R.verdict(mt, st, 3, m, s, 3, machine=0.95)[1] == "no"


def test_a_missing_regeneration_folder_is_named(modules, tmp_path):
    _, rerun = modules
    with pytest.raises(FileNotFoundError, match="--against .*nowhere: no such run folder"):
        rerun.rerun_report({}, tmp_path, tmp_path / "nowhere", ["tofe"])
