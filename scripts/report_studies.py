"""The studies' part of the report (``fmnist_experiment.py report``; the studies: ``experiment_studies.py``).

Writes to ``RUN_DIR/report/``:
- ``studies.md`` / ``studies.json``  per study, one table: each variant at each MACs target over its
  finished seeds (val top-1: the trainer's last evaluation, on the validation split at the ratios the
  model learned; test top-1 and realised MACs: ``minitofe eval`` on the test set at exactly the target),
  beside its control, tofe's own final runs, with the difference of the test means and whether it
  exceeds the seed spread (``fmnist_report.verdict``, the main table's rule). A variant, or a whole study,
  with no finished run is listed as "not run yet";
- ``skip.png`` / ``skip_errors.json`` (the skip study): the approximator's error against the dense
  teacher as a function of how many blocks the frozen tokens skip (per stage of the seed-0 models,
  relative to the teacher's own update over the stage, ``stage_errors``' ``frozen_update``; the identity's
  beside it), and the test top-1 against the skip k with the mlp and the deep approximator.
"""
import json
import math

import experiment_studies as S
import fmnist_experiment as X
import fmnist_report as R


def _row(cache, run_dir, label, method, budget, jobs):
    """One table row over the finished ``jobs`` [(phase, name), one per seed]: their val and test top-1
    (%) and test MACs (%), and the test figure written into each run's record."""
    row = {"variant": label, "budget": budget, "seeds": [], "val": [], "test": [], "macs": []}
    for phase, name in jobs:
        if not X.is_done(run_dir, phase, name):
            continue
        out = X.job_dir(run_dir, phase, name)
        res = R._eval(cache, out / "final.npz", method, budget)
        row["seeds"].append(int(name.rsplit("_s", 1)[1]))
        row["test"].append(100 * res["top1"])
        row["macs"].append(100 * res["macs_ratio"])
        last = X.last_eval(out)
        if last is not None:
            row["val"].append(100 * last["top1"])
        if phase == "study":
            X.write_record(run_dir, phase, name, test_top1=res["top1"], test_macs_ratio=res["macs_ratio"])
    return row


def _fmt(values, digits=2):
    if not values:
        return "–"
    m, s = R.mean_std(values)
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def _compare(row, ctrl):
    """(the test difference to the control, 'apart?' by the main table's rule), or dashes."""
    if not row["test"] or not ctrl["test"]:
        return "–", "– (control not run yet)" if row["test"] else "–"
    (mc, sc), (mv, sv) = R.mean_std(ctrl["test"]), R.mean_std(row["test"])
    spread, say = R.verdict(mc, sc, len(ctrl["test"]), mv, 0.0 if math.isnan(sv) else sv, len(row["test"]))
    return f"{mv - mc:+.2f}" + ("" if spread is None else f" (spread {spread:.2f})"), say


def study_tables(cache, run_dir):
    """-> (markdown, {study: its rows}) of every study, run or not."""
    lines, data = ["# Studies", "", "val: the trainer's last evaluation (validation split, the model's learned "
                   "ratios); test and realised MACs: the test set at exactly the MACs target; difference: "
                   "test mean of the variant minus the control's, 'apart' when larger than std + std.", ""], {}
    for study in S.STUDIES.values():
        rows = []
        for budget in study.budgets:
            ctrl = _row(cache, run_dir, "control: tofe (final runs)", "tofe", budget,
                        [S.control(budget, seed) for seed in X.SEEDS])
            rows.append(dict(ctrl, control=None))
            for v in study.variants:
                row = _row(cache, run_dir, f"tofe-{v.name}", v.method, budget,
                           [("study", S.job_name(v, budget, seed)) for seed in X.SEEDS])
                row.update(change=v.what, control="final/tofe", diff=_compare(row, ctrl),
                           note=None if S.available(v) or row["test"] else
                           f"left out: minitofe train has no {v.needs_flag} yet")
                rows.append(row)
        data[study.name] = {"section": study.section, "title": study.title, "rows": rows}
        ran = any(r["test"] for r in rows if r["control"] is not None)
        lines += [f"## {study.section} {study.title} (`--only {study.name}`)", "",
                  *([] if ran else ["not run yet", ""]),
                  "| variant | change | MACs target | seeds | val top-1 (%) | test top-1 (%) | realised MACs (%) "
                  "| test diff to control | apart? |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            head = f"| {r['variant']} | {r.get('change', 'the control')} | {100 * r['budget']:.0f} % |"
            if not r["test"]:
                lines.append(f"{head} 0 | {r.get('note') or 'not run yet'} | – | – | – | – |")
                continue
            diff, say = r.get("diff", ("–", "–"))
            lines.append(f"{head} {len(r['test'])} | {_fmt(r['val'])} | {_fmt(r['test'])} | "
                         f"{_fmt(r['macs'], 1)} | {diff} | {say} |")
        lines.append("")
    return "\n".join(lines), data


def skip_models(run_dir):
    """{(k, approximator): the seed-0 model of the skip study at 50 %} that are done (k = 3, mlp: tofe's
    own final run)."""
    found = {(S.DEFAULT_SKIP, "mlp"): S.control(0.5, 0)}
    for v in S.STUDIES["skip"].variants:
        k = int(v.name.removeprefix("skip").split("-")[0])
        found[(k, v.approximator)] = ("study", S.job_name(v, 0.5, 0))
    return {key: X.job_dir(run_dir, *job) / "final.npz" for key, job in found.items() if X.is_done(run_dir, *job)}


def skip_errors(run_dir):
    """{"k<k> <approximator>": its ``stage_errors`` rows on the test set at 50 %} of ``skip_models``."""
    import minitofe
    from minitofe.cli.common import budget_ratios
    from minitofe.data import load_fashion_mnist
    from minitofe.train.diagnostics import stage_errors
    models = skip_models(run_dir)
    if not models:
        return {}
    images, _ = load_fashion_mnist("test")
    teacher = minitofe.load_model(X.BACKBONE_NPZ)
    out = {}
    for (k, approximator), path in sorted(models.items()):
        model = minitofe.load_model(path)
        out[f"k{k} {approximator}"] = stage_errors(model, images, teacher.params, fast=True,
                                                   keep_ratios=budget_ratios(model, "tofe", 0.5))
    return out


def error_by_skip(errors):
    """{"mlp" | "deep" | "identity": {blocks skipped: mean error}} over every stage of every model in
    ``errors`` (``skip_errors``): the approximator's ``frozen_update`` by its kind, and the identity's
    (the same frozen tokens carried unchanged) over both kinds' models."""
    groups = {}
    for label, rows in errors.items():
        kind = label.split()[1]
        for r in rows:
            for name, value in ((kind, r["frozen_update"]), ("identity", r["identity_update"])):
                if not math.isnan(value):
                    groups.setdefault(name, {}).setdefault(r["blocks"], []).append(value)
    return {name: {b: sum(v) / len(v) for b, v in sorted(by.items())} for name, by in groups.items()}


def accuracy_by_skip(data):
    """{"mlp" | "deep": [(k, test mean, std or 0), ...]} from the skip study's rows (``study_tables``)."""
    points = {}
    for r in data["skip"]["rows"]:
        if not r["test"]:
            continue
        if r["control"] is None:
            k, kind = S.DEFAULT_SKIP, "mlp"
        else:
            name = r["variant"].removeprefix("tofe-skip")
            k, kind = int(name.split("-")[0]), ("deep" if name.endswith("-deep") else "mlp")
        m, s = R.mean_std(r["test"])
        points.setdefault(kind, []).append((k, m, 0.0 if math.isnan(s) else s))
    return {kind: sorted(p) for kind, p in points.items()}


def skip_figure(errors, data, out_png):
    """Left: error against the blocks skipped; right: test top-1 against k (mlp, deep). Nothing to draw:
    no file, and False."""
    by_skip, acc = error_by_skip(errors), accuracy_by_skip(data)
    if not by_skip and not acc:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by in by_skip.items():
        left.plot(list(by), list(by.values()), marker="o", ls=":" if name == "identity" else "-",
                  label=f"{name} approximator" if name != "identity" else "identity (carried unchanged)")
    left.set_xlabel("blocks the frozen tokens skip (the stage's length)")
    left.set_ylabel("error / the teacher's update (squared norms)")
    left.set_title("frozen tokens against the dense teacher (test set)")
    for kind, pts in acc.items():
        k, m, s = zip(*pts)
        right.errorbar(k, m, yerr=s, marker="o", capsize=3, label=f"{kind} approximator")
    right.set_xlabel("skip k (stages every k blocks from block 3)")
    right.set_ylabel("test top-1 (%) at 50 % MACs")
    right.set_title("accuracy at equal MACs")
    from matplotlib.ticker import MaxNLocator
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def study_report(cache, run_dir, out, errors=None):
    """Write ``studies.md`` / ``studies.json`` and, with the skip study's ``errors`` (None: computed,
    ``skip_errors``), ``skip_errors.json`` and ``skip.png``. Returns the markdown."""
    text, data = study_tables(cache, run_dir)
    errors = skip_errors(run_dir) if errors is None else errors
    (out / "skip_errors.json").write_text(json.dumps({"stages": errors, "by_skip": error_by_skip(errors)},
                                                     indent=1))
    if skip_figure(errors, data, out / "skip.png"):
        text += "\n![the skip study: error and accuracy against the skip](skip.png)\n"
    (out / "studies.md").write_text(text)
    (out / "studies.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    return text
