"""The experiment driver end to end on a tiny model and tiny Fashion-MNIST-format files: search on val,
the choice, the seeded final runs, and the report (table, curves, keep ratios, stage errors). Slow: ~40
``minitofe train`` / ``eval`` processes."""
import json
import pathlib

import pytest

import minitofe
from experiment_helpers import fashion_mnist, tiny_backbone

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.slow
def test_search_final_and_report_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    import fmnist_report as R
    monkeypatch.setenv("MINITOFE_FASHION_MNIST", str(fashion_mnist(tmp_path / "fm")))
    backbone = tiny_backbone(tmp_path / "backbone.npz")
    monkeypatch.setattr(X, "RECORDS", tmp_path / "records")
    for name, value in (("BACKBONE", backbone), ("BACKBONE_NPZ", backbone), ("TRAIN_IMAGES", 121), ("BATCH", 16),
                        ("SEEDS", (0, 1)), ("BUDGETS", (0.6, 0.5)),
                        ("CURVE_BUDGETS", (0.5, 1.0)),
                        ("METHODS", {"tofe": (0, 1), "tofe-identity": (0,), "dynamicvit": (0,),
                                     "tofe-uniform": (0,), "evit": (0,), "dense": (0,)}),
                        ("REMEDIES", {"stages123": ["--stages", "1", "2", "3"]})):
        monkeypatch.setattr(X, name, value)
    run_dir = tmp_path / "exp"
    assert X.main(["run", "--phase", "search", "--run-dir", str(run_dir)]) == 0
    choice = json.loads((run_dir / "choice.json").read_text())
    assert set(choice) == set(X.METHODS) and all(c["grid"] in X.GRID for c in choice.values())
    assert X.main(["run", "--phase", "final", "--run-dir", str(run_dir)]) == 0
    finals = R.final_models(run_dir, list(X.METHODS))
    assert sorted(len(v) for v in finals.values()) == [1] * 9 + [2] * 2      # tofe has two seeds
    assert ("dense", 1.0) in finals                                          # the fine-tuned dense control
    # a final run that is already done is not run again
    assert X.main(["run", "--phase", "final", "--run-dir", str(run_dir)]) == 0
    assert X.main(["run", "--phase", "remedy", "--run-dir", str(run_dir)]) == 0
    remedy = json.loads((run_dir / "remedy.json").read_text())        # scored on val, beside tofe's seed 0
    assert set(remedy) == {"tofe-stages123_60_s0", "tofe-stages123_50_s0", "tofe_60_s0", "tofe_50_s0"}
    remedy_model = minitofe.load_model(run_dir / "remedy" / "tofe-stages123_50_s0" / "final.npz")
    assert remedy_model.tofe.stages == (1, 2, 3)              # given, not the default (None)
    R.report(run_dir, list(X.METHODS))
    out = run_dir / "report"
    table = (out / "table.md").read_text()
    assert "| tofe | 50 % | 2 |" in table and "| dynamicvit | 60 % | 1 |" in table
    assert "| dense | 100 % | 1 |" in table
    assert "| tofe-stages123 | 50 % |" in table and "| tofe-stages123 | 60 % |" in table     # the remedies
    for png in ("curves.png", "keep_ratios.png", "stage_errors.png"):
        assert (out / png).stat().st_size > 1000
    errors = json.loads((out / "stage_errors.json").read_text())
    assert set(errors) == {"tofe", "tofe-identity", "idle (training-free)", "freeze_paths"}
    assert len(errors["tofe"]) == 3 and set(errors["freeze_paths"]) == {"tofe 60 %", "tofe 50 %"}
    assert all(set(v) == {"approximator", "identity", "oracle"} for v in errors["freeze_paths"].values())
    evals = json.loads((out / "evals.json").read_text())
    assert all(r["split"] == "test" for r in evals.values())


def test_the_table_says_which_differences_exceed_the_seed_spread(monkeypatch):
    """The report's table from known evaluations (no training): mean ± std per row, the training-free
    baselines, and the verdicts of the comparisons (spread = std_tofe + std_other; a one-seed row
    borrows tofe's std)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    import fmnist_report as R
    ev = lambda top1: {"top1": top1, "n": 100, "macs_ratio": 0.5, "keep_ratios": [0.4, 0.3, 0.2]}
    models = {("tofe", 0.5): [(0, "t0"), (1, "t1"), (2, "t2")],
              ("tofe-identity", 0.5): [(0, "i0"), (1, "i1"), (2, "i2")],
              ("tofe-uniform", 0.5): [(0, "u0")]}
    top1 = {"t0": 0.90, "t1": 0.91, "t2": 0.92, "i0": 0.895, "i1": 0.905, "i2": 0.915, "u0": 0.80}
    cache = {f"{path}|{m}|0.5|test": ev(top1[path]) for (m, _), runs in models.items() for _, path in runs}
    for b in X.BUDGETS:
        cache.update({f"{X.BACKBONE_NPZ}|{m}|{b}|test": ev(0.5) for m in X.TRAINING_FREE})
    table = R.table(cache, models, ev(0.92))
    assert "| tofe | 50 % | 3 | 91.00 ± 1.00 |" in table
    assert "| tofe-uniform | 50 % | 1 | 80.00 |" in table
    assert "| idle (training-free) | 35 % | 1 | 50.00 |" in table
    lines = {line.split(":")[0]: line for line in table.splitlines() if line.startswith("- ")}
    assert lines["- 50 %, the MLP approximator against the identity"].endswith("apart? no")   # 0.5 < 2.0
    assert "apart? yes (one seed" in lines["- 50 %, learned keep ratios against fixed equal ones"]
    assert "apart? yes (one seed" in lines["- 50 %, against idle tokens without training (frozen tokens "
                                           "carried unchanged)"]
    assert not [k for k in lines if k.startswith("- 35 %")]          # no tofe row at 35 %: no comparison


def test_the_remedies_are_reported_beside_their_decision_on_val(tmp_path, monkeypatch):
    """Each finished remedy: its val top-1 and tofe's seed-0 one (remedy.json), kept where higher, and
    its test top-1; a remedy not yet scored on val is left out."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    import fmnist_report as R
    jobs = [("remedy", "tofe-early_50_s0", []), ("remedy", "tofe-early_35_s0", []),
            ("remedy", "tofe-late_50_s0", [])]
    monkeypatch.setattr(X, "remedy_jobs", lambda run_dir: jobs)
    seeded = []                                      # the jobs past seed 0 that are done (added below)
    monkeypatch.setattr(X, "is_done", lambda run_dir, phase, name: name.endswith("_s0") or name in seeded)
    (tmp_path / "remedy.json").write_text(json.dumps({
        "tofe-early_50_s0": {"val_top1": 0.8974}, "tofe_50_s0": {"val_top1": 0.9026},
        "tofe-early_35_s0": {"val_top1": 0.8934}, "tofe_35_s0": {"val_top1": 0.882}}))
    ev = lambda top1, macs: {"top1": top1, "n": 100, "macs_ratio": macs, "keep_ratios": [0.4, 0.3, 0.2]}
    cache = {f"{tmp_path / 'remedy' / n / 'final.npz'}|tofe|{b}|test": ev(t, b)
             for n, b, t in (("tofe-early_50_s0", 0.5, 0.89), ("tofe-early_35_s0", 0.35, 0.885))}
    for job, macs in (("remedy/tofe-early_35_s0", (0.5, 0.372)), ("final/tofe_35_s0", (0.6, 0.409))):
        (tmp_path / job).mkdir(parents=True)            # the last val evaluation in training counts
        evals = [{"step": 9, "eval": {"macs_ratio": m}} for m in macs]
        (tmp_path / job / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    text = R.remedy_table(cache, tmp_path)
    assert "over seeds" not in text                           # the kept remedy's seeds 1, 2 not done yet
    runs = (("remedy", "tofe-early", (0.885, 0.89, 0.895)), ("final", "tofe", (0.88, 0.88, 0.88)))
    for phase, stem, tops in runs:
        for seed, t in enumerate(tops):
            seeded.append(f"{stem}_35_s{seed}")
            cache[f"{tmp_path / phase / f'{stem}_35_s{seed}' / 'final.npz'}|tofe|0.35|test"] = ev(t, 0.35)
    text = R.remedy_table(cache, tmp_path)
    assert "- 35 %, tofe-early: 89.00 ± 0.50 vs tofe 88.00 ± 0.00 (3 seeds each; diff +1.00, spread " \
           "0.50): apart? yes" in text
    assert "50 %, tofe-early:" not in text                    # not kept on val: seed 0 only
    assert "| tofe-early | 50 % | 89.74 / 90.26 | no | 89.00 | 50.0 | – / – |" in text
    assert "| tofe-early | 35 % | 89.34 / 88.20 | yes | 88.50 | 35.0 | 37.2 / 40.9 |" in text
    assert "tofe-late" not in text
    assert R.remedy_table(cache, tmp_path / "nowhere") == ""


def test_every_remedys_flags_reach_the_trainer_over_the_shared_ones(tmp_path, monkeypatch):
    """A remedy's flags come after ``COMMON`` in the train command, so a shared flag it repeats (``--lam``)
    takes the remedy's value; every remedy parses as ``minitofe train`` arguments."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    from minitofe.cli import build_parser
    monkeypatch.setattr(X, "load_choice", lambda run_dir: {"tofe": {"grid": "bb1"}})
    jobs = X.remedy_jobs(tmp_path)
    assert {name for _, name, _ in jobs} == {f"tofe-{r}_{round(100 * b)}_s0" for r in X.REMEDIES
                                             for b in X.BUDGETS}
    for phase, name, flags in jobs:
        args = build_parser().parse_args(X.train_cmd(tmp_path, phase, name, flags)[3:])
        remedy = X.REMEDIES[name.split("_")[0].removeprefix("tofe-")]
        if "--lam" in remedy:
            shared = float(X.COMMON[X.COMMON.index("--lam") + 1])
            assert args.lam == float(remedy[remedy.index("--lam") + 1]) != shared
        if "--stages" in remedy:
            assert list(args.stages) == [int(s) for s in remedy[remedy.index("--stages") + 1:]]
        assert args.budget == float(name.split("_")[1]) / 100


def test_the_compute_table_sums_each_phases_steps_once(tmp_path, monkeypatch):
    """Minutes of training steps per finished job from its ``log.jsonl`` (a step redone after a resume
    counts once, at its last try; evaluation lines are no steps) and the median wall time from
    ``times.json``; an unfinished job is left out."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_report as R
    logs = {"final/a_50_s0": [(0, 60.0), (1, 60.0), (1, 90.0), (2, 30.0)],      # resumed at step 1
            "final/b_50_s0": [(0, 120.0), (1, 120.0)], "final/c_50_s0": [(0, 600.0)],
            "final/d_35_s0": [(0, 600.0)], "search/a_50_bb1": [(0, 30.0)]}
    for job, steps in logs.items():
        (tmp_path / job).mkdir(parents=True)
        lines = [{"step": k, "seconds": sec, "cls": 1.0} for k, sec in steps] + [{"step": 2, "eval": {}}]
        (tmp_path / job / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if job != "final/c_50_s0":
            (tmp_path / job / "final.npz").write_bytes(b"")
    (tmp_path / "times.json").write_text(json.dumps({"final/a_50_s0": 300.0, "final/b_50_s0": 420.0,
                                                     "final/d_35_s0": 900.0, "final/c_50_s0": 60.0}))
    text = R.compute_table(tmp_path)
    assert "| final | 3 | 4.0 | 0.28 | 7.0 | 0.17 |" in text  # steps 3, 4, 10 min; wall 5, 7, 15: 7 x 3 / 2
    assert "| search | 1 | 0.5 | 0.01 | – | – |" in text          # no wall time recorded for it
    assert "remedy" not in text.split("|---|")[-1]
    assert R.compute_table(tmp_path / "nowhere") == ""


def test_a_remedy_kept_on_val_gets_tofes_other_seeds_at_that_budget(tmp_path, monkeypatch):
    """Only a remedy above tofe's seed-0 run on val (a tie is not above) gets seeds 1 and 2, at its own
    budget and with its own flags."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    from minitofe.cli import build_parser
    monkeypatch.setattr(X, "load_choice", lambda run_dir: {"tofe": {"grid": "bb1"}})
    monkeypatch.setattr(X, "REMEDIES", {"early": ["--stages", "1", "2", "3"], "late": ["--lam", "9"]})
    assert X.kept_remedy_seed_jobs(tmp_path) == []                       # nothing scored on val yet
    (tmp_path / "remedy.json").write_text(json.dumps({
        "tofe-early_35_s0": {"val_top1": 0.89}, "tofe_35_s0": {"val_top1": 0.88},      # kept
        "tofe-early_50_s0": {"val_top1": 0.90}, "tofe_50_s0": {"val_top1": 0.90},      # a tie: not kept
        "tofe-late_35_s0": {"val_top1": 0.87}}))
    jobs = X.kept_remedy_seed_jobs(tmp_path)
    assert [name for _, name, _ in jobs] == [f"tofe-early_35_s{seed}" for seed in X.SEEDS if seed]
    for phase, name, flags in jobs:
        args = build_parser().parse_args(X.train_cmd(tmp_path, phase, name, flags)[3:])
        assert (args.seed, args.budget, tuple(args.stages)) == (int(name[-1]), 0.35, (1, 2, 3))


def test_a_run_with_only_one_method_keeps_the_other_methods_recipes(tmp_path, monkeypatch):
    """``choose`` (run by ``run --only M``) writes the choice of every method whose search is scored: the
    other methods' recipes, and with them their final runs and the remedies, stay in ``choice.json``."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    monkeypatch.setattr(X, "RECORDS", tmp_path / "records")       # never into the repository's records

    def val(m, g, seed):          # bb1 ahead for every method but evit, where bb0.1 is (beyond the spread)
        return 0.5 + 0.1 * (g == ("bb0.1" if m == "evit" else "bb1")) + 0.001 * seed
    scores = {X.search_name(m, g, seed): {"val_top1": val(m, g, seed), "macs_ratio": 0.5}
              for m in X.METHODS for g in X.GRID for seed in X.SEARCH_SEEDS}
    (tmp_path / "search.json").write_text(json.dumps(scores))
    chosen = X.choose(tmp_path, ["evit"])
    assert json.loads((tmp_path / "records" / tmp_path.name / "choice.json").read_text()) == chosen
    assert set(chosen) == set(X.METHODS) == set(X.load_choice(tmp_path))
    assert chosen["tofe"]["grid"] == "bb1" and chosen["evit"]["grid"] == "bb0.1"
    assert X.remedy_jobs(tmp_path)
    assert len(X.final_jobs(["tofe"], tmp_path)) == len(X.SEEDS) * len(X.BUDGETS)


def test_the_search_keeps_the_default_recipe_unless_another_wins_beyond_its_spread(monkeypatch):
    """The rule stated before any run: a candidate replaces ``DEFAULT_GRID`` only when its mean val top-1
    exceeds the default's by more than the two seed spreads added; a one-seed lead of 0.44 points inside a
    spread of 0.5 (what chose EViT's recipe differently on another machine) does not."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    assert X.DEFAULT_GRID == "bb1"
    inside = {"bb1": [0.8880, 0.8930], "bb0.1": [0.8924, 0.8950]}       # +0.32 against spreads 0.35 + 0.18
    assert X.pick_recipe(inside)[0] == "bb1" and "kept" in X.pick_recipe(inside)[1]
    beyond = {"bb1": [0.8880, 0.8890], "bb0.1": [0.8930, 0.8940]}       # +0.50 against 0.07 + 0.07
    assert X.pick_recipe(beyond)[0] == "bb0.1"
    assert X.pick_recipe({"bb1": [0.90, 0.90], "bb0.1": [0.85, 0.86]})[0] == "bb1"   # worse: never chosen


def test_every_run_leaves_a_record_that_a_rerun_is_compared_with(tmp_path, monkeypatch, capsys):
    """A job's record starts with what was asked (method, budget, seed, flags, recipe) and the arithmetic
    it ran on (commit, versions, BLAS core type), and later steps add to it without losing fields;
    ``records --against`` prints two experiments' records of the same run side by side."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    monkeypatch.setattr(X, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(X, "load_choice", lambda run_dir: {"tofe": {"grid": "bb1", "why": "kept"}})
    flags = X.final_jobs(["tofe"], tmp_path)[0][2]
    env = dict(X.os.environ, OPENBLAS_CORETYPE="Haswell")
    for run_dir, core in (("native", None), ("haswell", env)):
        X.write_record(tmp_path / run_dir, "final", "tofe_50_s0",
                       **X.job_fields(tmp_path / run_dir, "final", "tofe_50_s0", flags), **X.environment(core))
        X.write_record(tmp_path / run_dir, "final", "tofe_50_s0", test_top1=0.9 if core else 0.91)
    rec = json.loads(X.record_path(tmp_path / "haswell", "final", "tofe_50_s0").read_text())
    assert (rec["method"], rec["budget"], rec["seed"], rec["recipe"]["grid"]) == ("tofe", 0.5, 0, "bb1")
    assert rec["openblas_coretype"] == "Haswell" and rec["test_top1"] == 0.9 and rec["numpy"]
    if rec["blas"] and rec["blas"][0]["internal_api"] == "openblas":
        assert rec["blas"][0]["architecture"] == "Haswell"
    X.records(tmp_path / "native", against=tmp_path / "haswell")
    row = [line for line in capsys.readouterr().out.splitlines() if "final/tofe_50_s0" in line]
    assert len(row) == 1 and "91.00" in row[0] and "90.00" in row[0]


def test_a_jobs_budget_is_read_from_budget_or_its_old_name_target(tmp_path, monkeypatch):
    """Train commands say ``--budget``; flags written before the rename say ``--target``: a job's record
    reads either (the dense control, with neither, is at 1.0)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    assert X.method_flags("tofe", 0.35)[2:4] == ["--budget", "0.35"]
    for flag in ("--budget", "--target"):
        fields = X.job_fields(tmp_path, "search", "tofe_35_s1", ["--method", "tofe", flag, "0.35", "--seed", "1"])
        assert fields["budget"] == 0.35
    assert X.job_fields(tmp_path, "search", "dense_s0", ["--method", "dense", "--seed", "0"])["budget"] == 1.0
