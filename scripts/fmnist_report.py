"""The report of the Fashion-MNIST experiment (``fmnist_experiment.py report``): the only part that touches
the test set.

Writes to ``RUN_DIR/report/``:
- ``evals.json``   every ``minitofe eval --json`` result, keyed by its command (re-running skips them);
- ``table.md``     top-1 at 50 % and 35 % MACs, mean +- sample std over seeds, per method (and the
                   training-free idle and evit-drop on the backbone), and which differences to tofe
                   exceed the seed spread, each named by the claim it tests (approximator against
                   identity, learned against fixed ratios, tofe against each baseline); the dense
                   backbone, and the dense control fine-tuned by the same recipe (what more training
                   alone gives);
- ``curves.png``   top-1 against MACs (budgets 0.3 ... 1.0), one curve per method (seed-0 model trained at
                   50 %), with the training-free baselines and the dense backbone; beside it the same,
                   zoomed on the fine-tuned methods;
- ``keep_ratios.png``  tofe's keep ratio per stage at each budget: as run on the test set (mean, std
                   over seeds) and as learned in training;
- ``table.md`` also: the remedies beside their decision on val, and the compute each phase took;
- ``stage_errors.json`` / ``stage_errors.png``  per-stage approximation error on the test set, and (JSON,
                   ``freeze_paths``) the test top-1 of the seed-0 tofe models with their trained
                   approximator, the identity and an oracle freeze path;
- ``studies.md`` / ``studies.json`` / ``skip.png``  the studies against tofe's final runs
                   (``report_studies.py``).
"""
import json
import math
import statistics

import numpy as np

import fmnist_experiment as X


def _eval(cache, weights, method, budget, split="test"):
    key = f"{weights}|{method}|{budget}|{split}"
    if key not in cache:
        cache[key] = X.eval_json(weights, method, budget, split)
        print(f"eval {key}: top-1 {100 * cache[key]['top1']:.2f} %", flush=True)
    return cache[key]


def final_models(run_dir, methods):
    """{(method, budget): [(seed, path), ...]} of the finished final runs."""
    found = {}
    for phase, name, _ in X.final_jobs(methods, run_dir):
        if X.is_done(run_dir, phase, name):
            method, pct, seed = name.rsplit("_", 2)
            found.setdefault((method, int(pct) / 100), []).append(
                (int(seed[1:]), X.job_dir(run_dir, phase, name) / "final.npz"))
    return found


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _row(lines, rows, method, budget, res):
    m, s = mean_std([100 * r["top1"] for r in res])
    rows[(method, budget)] = (m, s, len(res))
    ratios = np.mean([r["keep_ratios"] for r in res], axis=0)
    spread = f" ± {s:.2f}" if len(res) > 1 else ""                    # one seed: no spread to give
    lines.append(f"| {method} | {100 * budget:.0f} % | {len(res)} | {m:.2f}{spread} | "
                 f"{100 * statistics.mean(r['macs_ratio'] for r in res):.1f} | "
                 f"{' / '.join(f'{v:.2f}' for v in ratios)} |")


def verdict(mt, st, nt, m, s, n, machine=0.0):
    """Is tofe's mean (mt, std st over nt seeds) apart from another's (m, s, n) by more than the seed
    spread std_a + std_b, plus ``machine`` (what a regeneration elsewhere moved a run by:
    ``report_rerun``)? A one-seed row (or a training-free one) borrows tofe's std for itself."""
    if nt < 2:
        return None, "no (tofe has one seed only)"
    spread = st + (st if n < 2 else s) + machine
    note = "" if n > 1 else " (one seed: tofe's std used for it too)"
    return spread, ("yes" if abs(mt - m) > spread else "no") + note


# the comparisons the issue asks about, by their meaning: (other method, what the difference says)
CLAIMS = {"tofe-identity": "the MLP approximator against the identity",
          "tofe-uniform": "learned keep ratios against fixed equal ones",
          "dynamicvit": "against DynamicViT (fine-tuned, its own predictor and ratio loss)",
          "evit": "against EViT (fine-tuned, inattentive tokens fused)",
          "evit-drop (training-free)": "against EViT's selection without training (tokens dropped)",
          "idle (training-free)": "against idle tokens without training (frozen tokens carried unchanged)"}


def table(cache, models, dense, machine=0.0):
    lines = [f"Dense backbone: {100 * dense['top1']:.2f} % top-1 (n = {dense['n']}).", "",
             "| method | MACs target | seeds | top-1 (%) mean ± std | realised MACs (%) "
             "| keep ratios per stage |",
             "|---|---|---|---|---|---|"]
    rows = {}
    for (method, budget), runs in sorted(models.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        res = [_eval(cache, path, method, None if method == "dense" else budget) for _, path in sorted(runs)]
        _row(lines, rows, method, budget, res)
    for budget in X.BUDGETS:                           # the training-free baselines on the backbone itself
        for method in X.TRAINING_FREE:
            _row(lines, rows, f"{method} (training-free)", budget,
                 [_eval(cache, X.BACKBONE_NPZ, method, budget)])
    lines += ["", "tofe against each other method at the same MACs; 'apart' when |mean difference| > "
                  "std_tofe + std_other (the seed spread)" + (f" + {machine:.2f} (the machine spread: "
                                                            "rerun.md)" if machine else "") + ":"]
    for (method, budget), (mt, m, spread, say) in claims(rows, machine).items():
        lines.append(f"- {100 * budget:.0f} %, {CLAIMS[method]}: tofe {mt:.2f} vs {method} {m:.2f} "
                     f"(diff {mt - m:+.2f}" + ("" if spread is None else f", spread {spread:.2f}") +
                     f"): apart? {say}")
    return "\n".join(lines) + "\n"


def claims(rows, machine=0.0):
    """{(method, budget): (tofe's mean, the method's mean, spread, verdict)} for every claim of ``CLAIMS``
    that ``rows`` {(method, budget): (mean, std, seeds)} can test against tofe at the same budget
    (``verdict``, ``machine`` added to the spread)."""
    out = {}
    for (method, budget), (m, s, n) in rows.items():
        if method not in CLAIMS or ("tofe", budget) not in rows:
            continue
        mt, st, nt = rows[("tofe", budget)]
        out[(method, budget)] = (mt, m, *verdict(mt, st, nt, m, 0.0 if math.isnan(s) else s, n, machine))
    return out


def training_log(run_dir, phase, name):
    """A job's ``log.jsonl``: its step lines, one per step (a step redone after a resume counts once, at
    its last try), and its validation evaluations in order."""
    path = X.job_dir(run_dir, phase, name) / "log.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r["step"]: r for r in rows if "seconds" in r}, [r["eval"] for r in rows if "eval" in r]


def trained_macs(run_dir, phase, name):
    """The realised MACs ratio of a job's last validation evaluation in training (its ratios as learned,
    before ``--budget`` rescales them), or None."""
    evals = training_log(run_dir, phase, name)[1]
    return evals[-1]["macs_ratio"] if evals else None


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}"


def compute_table(run_dir, phases=("search", "final", "remedy")):
    """Per phase, over its finished jobs: the minutes of training steps per job (median) and their sum as
    run, from each job's ``log.jsonl``; the wall minutes per job (median) from ``times.json``, start to
    exit with the teacher cache and the evaluations (a job stopped and resumed has only its last part
    there, hence the median); and that median for every job, two at a time on 2 cores."""
    times_path = run_dir / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    lines = ["", "Compute (one thread per job, two jobs at a time on 2 cores):", "",
             "| phase | jobs | training steps: minutes per job (median) | steps: hours as run (sum) "
             "| wall minutes per job (median) | hours on 2 cores at that median |",
             "|---|---|---|---|---|---|"]
    for phase in phases:
        done = [d.name for d in sorted((run_dir / phase).glob("*")) if X.is_done(run_dir, phase, d.name)]
        if not done:
            continue
        steps = [sum(r["seconds"] for r in training_log(run_dir, phase, n)[0].values()) / 60 for n in done]
        walls = [times[f"{phase}/{n}"] / 60 for n in done if f"{phase}/{n}" in times]
        wall = statistics.median(walls) if walls else None
        lines.append(f"| {phase} | {len(done)} | {statistics.median(steps):.1f} | {sum(steps) / 60:.2f} | "
                     + ("– | – |" if wall is None else f"{wall:.1f} | {wall * len(done) / 120:.2f} |"))
    return "\n".join(lines) + "\n" if len(lines) > 5 else ""


def remedy_table(cache, run_dir):
    """The remedies (tofe variants, seed 0) on the test set, each beside the decision made on the
    validation split before (``remedy.json``: kept where it beat tofe's own seed-0 run there); a kept
    remedy whose seeds 1 and 2 are done, over its seeds against tofe's at the same budget."""
    scores = X.load_remedy_scores(run_dir)
    lines = ["", "Remedies (seed 0), decided on the validation split against tofe's seed-0 run, then "
                 "evaluated on the test set:", "",
             "| remedy | MACs target | val top-1: remedy / tofe (%) | kept on val? | test top-1 (%) "
             "| realised MACs (%) | MACs in training: remedy / tofe (%) |", "|---|---|---|---|---|---|---|"]
    over_seeds = []
    for phase, name, _ in X.remedy_jobs(run_dir):
        label, pct, _ = name.rsplit("_", 2)
        mine, base = scores.get(name), scores.get(f"tofe_{pct}_s0")
        if mine is None or base is None or not X.is_done(run_dir, phase, name):
            continue
        res = _eval(cache, X.job_dir(run_dir, phase, name) / "final.npz", "tofe", int(pct) / 100)
        kept = X.remedy_kept(scores, name)
        lines.append(f"| {label} | {pct} % | {100 * mine['val_top1']:.2f} / {100 * base['val_top1']:.2f} | "
                     f"{'yes' if kept else 'no'} | {100 * res['top1']:.2f} | "
                     f"{100 * res['macs_ratio']:.1f} | {_pct(trained_macs(run_dir, phase, name))} / "
                     f"{_pct(trained_macs(run_dir, 'final', f'tofe_{pct}_s0'))} |")
        if kept:
            over_seeds.append(_seeds_line(cache, run_dir, label, int(pct)))
    over_seeds = [line for line in over_seeds if line]
    if over_seeds:
        lines += ["", "Kept remedies over seeds (test set), against tofe at the same MACs:", *over_seeds]
    return "\n".join(lines) + "\n" if len(lines) > 5 else ""


def _seeds_line(cache, run_dir, label, pct):
    """'label at pct %: mean ± std over seeds vs tofe's ... apart?' once every seed of the remedy and of
    tofe's final runs at that budget is done, else None."""
    def top1(phase, stem):
        names = [f"{stem}_{pct}_s{seed}" for seed in X.SEEDS]
        if not all(X.is_done(run_dir, phase, n) for n in names):
            return None
        return [100 * _eval(cache, X.job_dir(run_dir, phase, n) / "final.npz", "tofe", pct / 100)["top1"]
                for n in names]
    mine, tofe = top1("remedy", label), top1("final", "tofe")
    if mine is None or tofe is None:
        return None
    (m, s), (mt, st) = mean_std(mine), mean_std(tofe)
    spread, say = verdict(m, s, len(mine), mt, st, len(tofe))
    return (f"- {pct} %, {label}: {m:.2f} ± {s:.2f} vs tofe {mt:.2f} ± {st:.2f} ({len(mine)} seeds each; "
            f"diff {m - mt:+.2f}, spread {spread:.2f}): apart? {say}")


def _curve_points(cache, models):
    """{label: [(MACs %, top-1 %), ...]} over ``X.CURVE_BUDGETS``: each learned method's seed-0 model
    trained at 50 %, and the training-free baselines on the backbone (budgets a method cannot reach are
    skipped and said)."""
    series = {}
    for (method, budget), runs in models.items():
        if budget == 0.5 and method != "dense" and 0 in dict(runs):
            series[method] = (dict(runs)[0], method)
    for method in X.TRAINING_FREE:
        series[f"{method} (training-free)"] = (X.BACKBONE_NPZ, method)
    points = {}
    for label, (path, method) in sorted(series.items()):
        pts = []
        for b in X.CURVE_BUDGETS:
            try:
                r = _eval(cache, path, method, b)
            except RuntimeError as e:                 # a budget below what the method can reach
                print(f"skip {label} at {b}: {str(e).splitlines()[-1]}")
                continue
            pts.append((100 * r["macs_ratio"], 100 * r["top1"]))
        points[label] = pts
    return points


def curves(cache, models, out_png):
    """Top-1 against MACs: every curve on the left; on the right the same, zoomed on the fine-tuned
    methods (from 40 % MACs on), where their differences are (a few tenths of a point)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = _curve_points(cache, models)
    refs = [(100 * _eval(cache, X.BACKBONE_NPZ, "dense", None)["top1"], "k", "--", "dense backbone")]
    for _, path in models.get(("dense", 1.0), []):
        refs.append((100 * _eval(cache, path, "dense", None)["top1"], "grey", ":",
                     "dense, fine-tuned like the rest"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = dict(zip(points, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    for ax in axes:
        for label, pts in points.items():
            free = "training-free" in label
            ax.plot(*zip(*pts), marker="s" if free else "o", ls="--" if free else "-", color=colors[label],
                    label=label)
        for y, color, ls, label in refs:
            ax.axhline(y, color=color, ls=ls, lw=1, label=label)
        ax.set_xlabel("MACs (% of dense)")
        ax.grid(alpha=0.3)
    shown = [y for label, pts in points.items() if "training-free" not in label for x, y in pts if x >= 38]
    shown += [y for y, *_ in refs]
    axes[1].set_xlim(37, 103)
    axes[1].set_ylim(math.floor(min(shown) - 0.5), math.ceil(max(shown) + 0.5))
    axes[0].set_ylabel("top-1 on the test set (%)")
    axes[0].set_title("every method")
    axes[1].set_title("zoomed: the fine-tuned methods from 40 % MACs")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Fashion-MNIST, ViT patch 4 (50 tokens): accuracy against MACs "
                 "(seed-0 models trained at 50 %)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def keep_ratio_plot(cache, models, out_png):
    """tofe's keep ratio per stage at each budget: bars, as run on the test set (the learned ratios scaled
    to the budget), mean and std over seeds; crosses, the running means the selector learned in training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import minitofe
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / max(1, len(X.BUDGETS))
    for i, budget in enumerate(X.BUDGETS):
        runs = sorted(models.get(("tofe", budget), []))
        if not runs:
            continue
        run = np.array([_eval(cache, p, "tofe", budget)["keep_ratios"] for _, p in runs])
        learned = np.array([minitofe.load_model(p).learned_keep_ratios for _, p in runs])
        stages = np.arange(run.shape[1]) + i * width
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        ax.bar(stages, run.mean(0), width, yerr=run.std(0, ddof=1) if len(runs) > 1 else None,
               label=f"{100 * budget:.0f} % MACs, as run ({seeds})")
        ax.plot(stages, learned.mean(0), "kx", label="learned in training" if i == 0 else None)
    ax.set_xticks(np.arange(3) + width * (len(X.BUDGETS) - 1) / 2, [f"stage {s + 1}" for s in range(3)])
    ax.set_ylabel("keep ratio")
    ax.set_title("tofe: fraction of patches each stage keeps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def approximation_errors(models, out_json, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import minitofe
    from minitofe.cli.common import budget_ratios
    from minitofe.data import load_fashion_mnist
    from minitofe.train.diagnostics import stage_errors
    images, labels = load_fashion_mnist("test")
    teacher = minitofe.load_model(X.BACKBONE_NPZ)
    result = {}
    for method in ("tofe", "tofe-identity"):
        runs = models.get((method, 0.5), [])
        if runs:
            model = minitofe.load_model(dict(runs).get(0, runs[0][1]))
            ratios = budget_ratios(model, method, 0.5)
            result[method] = stage_errors(model, images, teacher.params, keep_ratios=ratios, fast=True)
    idle = minitofe.add_tofe(minitofe.load_model(X.BACKBONE_NPZ), minitofe.ToFeConfig(method="idle"))
    result["idle (training-free)"] = stage_errors(idle, images, teacher.params,
                                                  keep_ratios=budget_ratios(idle, "idle", 0.5), fast=True)
    paths = freeze_paths(models, images, labels)
    out_json.write_text(json.dumps({**result, "freeze_paths": paths}, indent=1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, rows in result.items():
        ax.plot([r["stage"] + 1 for r in rows], [r["frozen"] for r in rows], marker="o",
                label=f"{label}: frozen tokens")
        if label == "tofe":
            ax.plot([r["stage"] + 1 for r in rows], [r["identity"] for r in rows], marker="x", ls=":",
                    label="tofe: same tokens carried unchanged")
    ax.set_xlabel("stage")
    ax.set_xticks([1, 2, 3])
    ax.set_ylabel("relative squared error to the teacher")
    ax.set_title("Frozen tokens at 50 % MACs (test set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def freeze_paths(models, images, labels):
    """Test top-1 of the seed-0 tofe models under the three freeze paths (trained approximator, identity,
    oracle: ``minitofe.train.diagnostics.freeze_path_accuracy``), per budget, on the test ``images``."""
    import minitofe
    from minitofe import kernels
    from minitofe.cli.common import budget_ratios
    from minitofe.train.diagnostics import freeze_path_accuracy
    result = {}
    for budget in X.BUDGETS:
        runs = dict(models.get(("tofe", budget), []))
        if 0 in runs:
            model = minitofe.load_model(runs[0], dtype=np.float32)
            result[f"tofe {100 * budget:.0f} %"] = freeze_path_accuracy(
                model, images.astype(np.float32), labels, budget_ratios(model, "tofe", budget),
                ops=kernels.ops(True, like=images))
    return result


def report(run_dir, methods, against=None):
    """The report (module docstring); with ``against`` (another run folder of the experiment) also
    ``rerun.md``, and the table's verdicts with the machine spread it measures (``report_rerun``)."""
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    cache_path = out / "evals.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    models = final_models(run_dir, methods)
    try:
        machine = 0.0
        if against is not None:
            from report_rerun import rerun_report
            machine = rerun_report(cache, run_dir, against, methods)
        dense = _eval(cache, X.BACKBONE_NPZ, "dense", None)
        (out / "table.md").write_text(table(cache, models, dense, machine) + remedy_table(cache, run_dir)
                                         + compute_table(run_dir))
        for (method, budget), runs in models.items():        # each final run's record gets its test figure
            for _, path in runs:
                res = _eval(cache, path, method, None if method == "dense" else budget)
                X.write_record(run_dir, "final", path.parent.name, test_top1=res["top1"],
                               test_macs_ratio=res["macs_ratio"])
        curves(cache, models, out / "curves.png")
        keep_ratio_plot(cache, models, out / "keep_ratios.png")
        from report_studies import study_report
        study_report(cache, run_dir, out)
    finally:
        cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    approximation_errors(models, out / "stage_errors.json", out / "stage_errors.png")
    print((out / "table.md").read_text())
