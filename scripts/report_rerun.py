"""The report beside a regeneration of the experiment elsewhere (``fmnist_experiment.py report --against
RUN_DIR2``): does the table regenerate on another machine, or under another BLAS kernel?

RUN_DIR2 is a run folder of the same experiment run with the same commands somewhere else, e.g. here with
``OPENBLAS_CORETYPE=Haswell`` (its ``search`` and the seed-0 ``final`` runs of every method at least). For
every method and MACs target whose seed-0 final run is done in both, this compares the recipe each search
chose and the two seed-0 test top-1s. From them:

- the *machine spread*: the largest |difference| between the two seed-0 figures. A verdict of the table
  ("apart" when |mean difference| > the seed spread std_a + std_b) is then taken with that spread added
  (``fmnist_report.verdict``'s ``machine``): a difference the other machine's run could undo is not
  reported as one;
- whether every verdict survives: each one again with both methods' seed-0 figures taken from the other
  machine's runs (the means over seeds recomputed), and whether it says the same.
Writes ``RUN_DIR/report/rerun.md`` and ``rerun.json``.
"""
import json
import pathlib

import fmnist_experiment as X
import fmnist_report as R


def test_top1(cache, models, seeds=None):
    """{(method, budget): {seed: test top-1 (%)}} of the final runs ``models`` (``final_models``), of
    ``seeds`` only when given."""
    return {key: {seed: 100 * R._eval(cache, path, key[0], None if key[0] == "dense" else key[1])["top1"]
                  for seed, path in runs if seeds is None or seed in seeds} for key, runs in models.items()}


def seed0(by_seed):
    """{(method, budget): seed 0's figure} of ``test_top1``'s result, where seed 0 ran."""
    return {key: seeds[0] for key, seeds in by_seed.items() if 0 in seeds}


def machine_spread(here, there):
    """(the largest |difference| of the seed-0 figures both runs have, [(key, here, there), ...])."""
    both = [(key, here[key], there[key]) for key in sorted(here) if key in there]
    return max((abs(a - b) for _, a, b in both), default=0.0), both


def verdicts(rows, machine=0.0):
    """``fmnist_report.claims`` of ``rows`` {(method, budget): [test top-1 per seed]}."""
    return R.claims({key: (*R.mean_std(v), len(v)) for key, v in rows.items()}, machine)


def rerun_report(cache, run_dir, against, methods):
    """Write ``rerun.md`` / ``rerun.json``; returns the machine spread (0.0 when nothing compares)."""
    against = pathlib.Path(against)
    if not against.is_dir():
        raise FileNotFoundError(f"--against {against}: no such run folder")
    by_seed = test_top1(cache, R.final_models(run_dir, methods))
    there = seed0(test_top1(cache, R.final_models(against, methods), seeds=(0,)))
    spread, both = machine_spread(seed0(by_seed), there)
    per_seed = {key: [v for _, v in sorted(seeds.items())] for key, seeds in by_seed.items()}
    swapped = {key: [there[key] if seed == 0 and key in there else v for seed, v in sorted(seeds.items())]
               for key, seeds in by_seed.items()}
    mine, theirs = X.load_choice(run_dir), X.load_choice(against)
    lines = [f"# The experiment against {against.name}", "",
             f"Seed-0 final runs here and in `{against.name}` (test top-1, %), with the recipe each search "
             "chose:", "",
             "| method | MACs target | recipe here | recipe there | here | there | difference |",
             "|---|---|---|---|---|---|---|"]
    for (method, budget), a, b in both:
        grids = [c.get(method, {}).get("grid", "–") for c in (mine, theirs)]
        lines.append(f"| {method} | {100 * budget:.0f} % | {grids[0]} | {grids[1]} | {a:.2f} | {b:.2f} | "
                     f"{b - a:+.2f} |")
    lines += ["", f"Machine spread (largest |difference|): **{spread:.2f}** points over {len(both)} runs. "
                  "The table's verdicts with it added to the seed spread, and again with both methods' "
                  f"seed 0 taken from `{against.name}`:", "",
              "| claim | MACs target | verdict (seed spread) | with the machine spread | seed 0 from there | "
              "survives? |", "|---|---|---|---|---|---|"]
    plain, widened, other = verdicts(per_seed), verdicts(per_seed, spread), verdicts(swapped)
    result = {"against": str(against), "machine_spread": spread, "runs": [], "verdicts": []}
    for (method, budget), a, b in both:
        result["runs"].append({"method": method, "budget": budget, "here": a, "there": b})
    for key, (mt, m, s, say) in plain.items():
        same = say.split()[0] == other[key][3].split()[0]
        lines.append(f"| {R.CLAIMS[key[0]]} | {100 * key[1]:.0f} % | {say} | {widened[key][3]} | "
                     f"{other[key][3]} | {'yes' if same else '**no**'} |")
        result["verdicts"].append({"claim": key[0], "budget": key[1], "seed_spread": say,
                                   "with_machine_spread": widened[key][3], "seed0_there": other[key][3],
                                   "survives": same})
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    (out / "rerun.md").write_text("\n".join(lines) + "\n")
    (out / "rerun.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return spread
