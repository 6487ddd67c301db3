"""The experiment's ``study`` phase without training: its job lists (names, flags, seed 0 first, the
``--only`` / ``--seeds`` filters), the guard of the fused-token variant, ``geometric_ratios``, the
``budget`` command's arithmetic on a made-up ``times.json``, and the studies' report on made-up runs."""
import json
import pathlib

import numpy as np
import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def driver(monkeypatch, tmp_path):
    """(fmnist_experiment, experiment_studies) with the records under ``tmp_path`` and the fused-token
    variant's flag taken as missing (each test may say otherwise)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import experiment_studies as S
    import fmnist_experiment as X
    monkeypatch.setattr(X, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(S, "fuse_frozen_available", lambda: False)
    return X, S


def _parse(X, run_dir, job):
    from minitofe.cli import build_parser
    return build_parser().parse_args(X.train_cmd(run_dir, *job)[3:])


def test_every_study_job_is_named_flagged_and_ordered_seed_zero_first(driver, tmp_path):
    X, S = driver
    jobs = S.study_jobs(tmp_path)
    names = [n for _, n, _ in jobs]
    per_seed = 2 * 2 + 7 + 2                         # selector 2 x 2 budgets, skip 7, evit 2 (fused left out)
    assert len(jobs) == len(set(names)) == per_seed * len(X.SEEDS)
    assert [n.rsplit("_s", 1)[1] for n in names] == [str(s) for s in X.SEEDS for _ in range(per_seed)]
    for want in ("tofe-sel-linear_50_s0", "tofe-sel-attention_35_s2", "tofe-skip4-deep_50_s0", "tofe-skip2_50_s1",
                 "tofe-skip3-deep_50_s0", "tofe-geo_35_s0", "tofe-lastdrop_35_s0"):
        assert want in names
    assert not [n for n in names if "fused" in n or "skip3_" in n]    # k = 3 with mlp: tofe's own final run
    args = {n: _parse(X, tmp_path, job) for job in jobs for n in [job[1]] if n.endswith("_s1")}
    a = args["tofe-sel-attention_35_s1"]
    assert (a.method, a.budget, a.selector, a.seed, a.steps) == ("tofe", 0.35, "attention", 1,
                                                                 X.steps(X.FINAL_EPOCHS))
    for k, stages in S.SKIP_LAYOUTS.items():
        for suffix, kind in (("", "mlp"), ("-deep", "deep")):
            name = f"tofe-skip{k}{suffix}_50_s1"
            if name not in args:
                assert (k, kind) == (3, "mlp")
                continue
            a = args[name]
            assert (a.approximator or "mlp") == kind and tuple(a.stages or (3, 6, 9)) == stages
            assert stages[0] == 3                                  # the same dense floor in every layout
            assert a.keep_ratios is None or len(a.keep_ratios) == len(stages)
    geo, drop = args["tofe-geo_35_s1"], args["tofe-lastdrop_35_s1"]
    assert geo.method == "tofe-uniform" and geo.keep_ratios == pytest.approx(X.geometric_ratios(0.35), abs=1e-6)
    assert (drop.method, drop.last_stage, drop.budget) == ("tofe", "drop", 0.35)
    assert a.backbone_lr_scale == float(X.GRID[X.DEFAULT_GRID][1])          # no choice.json: the default


def test_only_and_seeds_pick_one_study_or_one_variant(driver, tmp_path, monkeypatch):
    X, S = driver
    assert {n.split("_")[0] for _, n, _ in S.study_jobs(tmp_path, ["selector"])} == {"tofe-sel-linear",
                                                                                     "tofe-sel-attention"}
    assert [n for _, n, _ in S.study_jobs(tmp_path, ["skip4-deep"], [0])] == ["tofe-skip4-deep_50_s0"]
    assert S.study_jobs(tmp_path, ["tofe"]) == []          # a method's name names no study
    ran = []
    monkeypatch.setattr(X, "run_jobs", lambda jobs, *a: ran.append([n for _, n, _ in jobs]))
    assert X.main(["run", "--phase", "study", "--only", "evit-diff", "--seeds", "0", "--run-dir",
                   str(tmp_path / "exp")]) == 0
    assert X.main(["run", "--phase", "all", "--only", "lastdrop", "--seeds", "2", "--run-dir",
                   str(tmp_path / "exp")]) == 0
    assert ran[0] == ["tofe-geo_35_s0", "tofe-lastdrop_35_s0"]
    assert ran[-1] == ["tofe-lastdrop_35_s2"] and all(r == [] for r in ran[1:-1])   # no method phase ran


def test_the_fused_variant_waits_for_its_train_flag(driver, tmp_path, monkeypatch, capsys):
    X, S = driver
    from minitofe.cli import build_parser
    monkeypatch.undo()                                       # the real check, on this checkout
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import experiment_studies as real
    real.fuse_frozen_available.cache_clear()
    listed = "--fuse-frozen" in build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert real.fuse_frozen_available() == listed
    monkeypatch.setattr(X, "RECORDS", tmp_path / "records")
    for there in (False, True):
        monkeypatch.setattr(real, "fuse_frozen_available", lambda there=there: there)
        names = [n for _, n, _ in real.study_jobs(tmp_path, ["evit-diff"], [0])]
        assert ("tofe-fused_35_s0" in names) == there
        notes = real.left_out(["evit-diff"])
        assert notes == ([] if there else ["study evit-diff: tofe-fused left out: `minitofe train --help` lists no "
                                           "--fuse-frozen yet"])
        X.main(["status", "--only", "evit-diff", "--run-dir", str(tmp_path / "exp")])
        out = capsys.readouterr().out
        assert ("tofe-fused left out" in out) != there and f"study evit-diff (2.5): 0 of {(2 + there) * 3} done" in out
    fused = [f for _, n, f in real.study_jobs(tmp_path, ["fused"], [1])]
    assert fused and "--fuse-frozen" in fused[0] and fused[0][:2] == ["--method", "tofe"]


def test_a_study_jobs_record_names_its_study_variant_control_and_recipe(driver, tmp_path):
    X, S = driver
    job = [j for j in S.study_jobs(tmp_path, ["geo"]) if j[1].endswith("_s2")][0]
    fields = X.job_fields(tmp_path, *job)
    assert (fields["study"], fields["section"], fields["variant"], fields["control"]) == \
        ("evit-diff", "2.5", "geo", "final/tofe_35_s2")
    assert fields["method"] == "tofe-uniform" and fields["recipe"]["grid"] == X.DEFAULT_GRID
    assert "no tofe entry" in fields["recipe"]["note"]
    (tmp_path / "choice.json").write_text(json.dumps({"tofe": {"grid": "bb0.1", "flags": X.GRID["bb0.1"]}}))
    assert X.job_fields(tmp_path, *job)["recipe"] == {"grid": "bb0.1", "flags": X.GRID["bb0.1"]}
    assert "0.1" in S.study_jobs(tmp_path, ["geo"])[0][2]
    with pytest.raises(ValueError, match="no study variant is called 'skip5'"):
        S.of_job("tofe-skip5_50_s0")


@pytest.mark.parametrize("budget", [0.35, 0.5])
def test_geometric_ratios_meet_the_budget_within_the_rounding_of_kept_counts(driver, budget):
    X, _ = driver
    import minitofe
    from minitofe.tofe.budget import topk_macs
    from minitofe.tofe.macs import block_macs, dense_macs
    cfg, P = X.backbone_cfg(), X.backbone_cfg().num_patches
    ratios, rho = X.geometric_ratios(budget), X.geometric_rho(budget)
    counts = [round(r * P) for r in ratios]
    assert [r * P for r in ratios] == pytest.approx(counts, abs=1e-9)        # whole patches: no rounding edge
    assert counts == [max(round(rho ** (s + 1) * P), 1) for s in range(3)]
    assert counts[0] >= counts[1] >= counts[2] >= 1
    tcfg = minitofe.ToFeConfig(method="tofe-uniform", keep_ratios=ratios)
    realised, dense = topk_macs(cfg, tcfg, ratios), dense_macs(cfg)
    one_more = 12 * (block_macs(cfg.num_tokens, cfg.embed_dim, cfg.mlp_ratio)
                     - block_macs(cfg.num_tokens - 1, cfg.embed_dim, cfg.mlp_ratio))   # a token in every block
    assert budget * dense - one_more <= realised <= budget * dense
    with pytest.raises(ValueError, match="below the cheapest fixed-ratio setting"):
        X.geometric_ratios(0.2)


def test_budget_counts_the_runs_left_at_the_median_of_finished_runs_of_their_kind(driver, tmp_path, capsys):
    X, S = driver
    run_dir = tmp_path / "exp"
    finals = [n for _, n, _ in X.final_jobs(list(X.METHODS), run_dir,
                                            chosen={m: {"grid": "bb1"} for m in X.METHODS})]
    done = {f"final/{finals[0]}": 30.0, f"final/{finals[1]}": 40.0, f"final/{finals[2]}": 80.0,
            "study/tofe-sel-linear_50_s0": 50.0}
    times = {k: 60 * v for k, v in done.items()}
    times["study/tofe-geo_35_s0"] = 60 * 999.0            # started, not finished: not a median's run
    for key in done:
        (run_dir / key).mkdir(parents=True)
        (run_dir / key / "final.npz").write_bytes(b"")
    (run_dir / "times.json").write_text(json.dumps(times))
    assert X.main(["budget", "--jobs", "4", "--run-dir", str(run_dir)]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["search"] == ["24", "24", "18.0 (default)", "7.2", "1.8"]             # 24 x 18 min / 4
    assert rows["final"] == ["28", "31", "40.0 (median of 3 finished)", "18.7", "4.7"]
    assert rows["remedy"] == ["4", "4", "40.0 (median of the final runs)", "2.7", "0.7"]
    assert rows["study selector"] == ["11", "12", "50.0 (median of 1 finished)", "9.2", "2.3"]
    assert rows["study skip"] == ["21", "21", "40.0 (median of the final runs)", "14.0", "3.5"]
    assert rows["study evit-diff"] == ["6", "6", "40.0 (median of the final runs)", "4.0", "1.0"]
    assert X.main(["budget", "--phase", "study", "--only", "geo", "--jobs", "8", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "| study evit-diff | 3 | 3 | 40.0 (median of the final runs) | 2.0 | 0.7 |" in out     # one run: 40 min
    assert "total: 2.0 core-hours, 0.7 wall hours at --jobs 8" in out and "| final |" not in out
    # --seeds, as `run --seeds 0` runs them: the final and study runs of seed 0 only (the remedies are seed 0)
    assert X.main(["budget", "--seeds", "0", "--jobs", "4", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "| final | 8 | 11 | 40.0 (median of 3 finished) | 5.3 | 1.3 |" in out            # 5 x 2 + dense
    assert "| study selector | 3 | 4 |" in out and "not counted" not in out
    # a report needs its run folder; a budget of a run not started yet makes none
    assert X.main(["budget", "--run-dir", str(tmp_path / "new")]) == 0 and not (tmp_path / "new").exists()
    with pytest.raises(SystemExit):
        X.main(["report", "--run-dir", str(tmp_path / "new")])
    assert "no such folder" in capsys.readouterr().err


def _fake_runs(X, S, run_dir, monkeypatch):
    """Finished runs (no files but their logs): tofe's final runs at both budgets (3 seeds), the linear
    selector at 50 % (3 seeds) and 35 % (seed 0), skip4 and skip4-deep (seed 0); the eval cache they need."""
    ev = lambda top1, macs: {"top1": top1, "n": 100, "macs_ratio": macs, "keep_ratios": [0.3, 0.3, 0.3]}
    done, cache = set(), {}
    runs = [("final", f"tofe_{p}_s{s}", "tofe", p, 0.90 + 0.01 * s - (p == 35) * 0.02) for p in (50, 35)
            for s in range(3)]
    runs += [("study", f"tofe-sel-linear_50_s{s}", "tofe", 50, 0.87 + 0.001 * s) for s in range(3)]
    runs += [("study", "tofe-sel-linear_35_s0", "tofe", 35, 0.88),
             ("study", "tofe-skip4_50_s0", "tofe", 50, 0.905), ("study", "tofe-skip4-deep_50_s0", "tofe", 50, 0.91)]
    for phase, name, method, pct, top1 in runs:
        done.add((phase, name))
        out = run_dir / phase / name
        out.mkdir(parents=True)
        (out / "log.jsonl").write_text(json.dumps({"step": 9, "eval": {"top1": top1 + 0.01, "n": 50}}) + "\n")
        cache[f"{out / 'final.npz'}|{method}|{pct / 100}|test"] = ev(top1, pct / 100 + 0.001)
    monkeypatch.setattr(X, "is_done", lambda run_dir, phase, name: (phase, name) in done)
    return cache


def test_the_study_report_tables_compare_with_the_control_and_list_what_has_not_run(driver, tmp_path,
                                                                                      monkeypatch):
    X, S = driver
    import report_studies as RS
    run_dir, out = tmp_path / "exp", tmp_path / "exp" / "report"
    cache = _fake_runs(X, S, run_dir, monkeypatch)
    out.mkdir(parents=True)
    errors = {"k3 mlp": [{"blocks": 3, "frozen_update": 0.4, "identity_update": 1.0}] * 3,
              "k4 deep": [{"blocks": 4, "frozen_update": 0.5, "identity_update": 1.2},
                          {"blocks": 4, "frozen_update": 0.7, "identity_update": 1.4},
                          {"blocks": 1, "frozen_update": 0.1, "identity_update": float("nan")}]}
    text = RS.study_report(cache, run_dir, out, errors=errors)
    assert text == (out / "studies.md").read_text()
    lines = {line.split(" | ")[0] + " | " + line.split(" | ")[2]: line for line in text.splitlines()
             if line.startswith("| tofe") or line.startswith("| control")}
    assert lines["| control: tofe (final runs) | 50 %"].startswith(
        "| control: tofe (final runs) | the control | 50 % | 3 | 92.00 ± 1.00 | 91.00 ± 1.00 | 50.1 ± 0.0 | – | – |")
    assert lines["| tofe-sel-linear | 50 %"].endswith(
        "| 3 | 88.10 ± 0.10 | 87.10 ± 0.10 | 50.1 ± 0.0 | -3.90 (spread 1.10) | yes |")
    assert lines["| tofe-sel-linear | 35 %"].endswith("| 1 | 89.00 | 88.00 | 35.1 | -1.00 (spread 2.00) | "
                                                     "no (one seed: tofe's std used for it too) |")
    assert lines["| tofe-sel-attention | 35 %"].endswith("| 0 | not run yet | – | – | – | – |")
    assert "| 0 | left out: minitofe train has no --fuse-frozen yet |" in lines["| tofe-fused | 35 %"]
    evit = text.split("## 2.5")[1]
    assert evit.splitlines()[2] == "not run yet" and "## 2.1" in text and "not run yet" not in \
        text.split("## 2.1")[1].split("##")[0].splitlines()[2]
    data = json.loads((out / "studies.json").read_text())
    assert set(data) == set(S.STUDIES) and data["skip"]["section"] == "2.2"
    assert RS.accuracy_by_skip(data) == {"mlp": [(3, 91.0, 1.0), (4, 90.5, 0.0)], "deep": [(4, 91.0, 0.0)]}
    by_skip = json.loads((out / "skip_errors.json").read_text())["by_skip"]
    assert by_skip == {"mlp": {"3": pytest.approx(0.4)}, "deep": {"1": 0.1, "4": pytest.approx(0.6)},
                       "identity": {"3": pytest.approx(1.0), "4": pytest.approx(1.3)}}
    assert (out / "skip.png").stat().st_size > 1000
    rec = json.loads(X.record_path(run_dir, "study", "tofe-sel-linear_35_s0").read_text())
    assert rec["test_top1"] == 0.88
    assert not X.record_path(run_dir, "final", "tofe_50_s0").exists()     # the final phase writes its own


def test_a_report_with_no_study_run_lists_every_study_as_not_run_yet(driver, tmp_path):
    X, S = driver
    import report_studies as RS
    out = tmp_path / "report"
    out.mkdir()
    text = RS.study_report({}, tmp_path, out, errors={})
    assert text.count("not run yet") == 3 + sum(len(s.variants) * len(s.budgets) + len(s.budgets)
                                                for s in S.STUDIES.values()) - 1      # fused: "left out"
    assert not (out / "skip.png").exists() and RS.skip_models(tmp_path) == {} and RS.skip_errors(tmp_path) == {}
    assert np.isfinite(len(text))
