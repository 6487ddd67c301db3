"""Fine-tune ToFe and the learned baselines on Fashion-MNIST, then evaluate every row of README's table.

    python scripts/fmnist_runs.py train [--jobs 2] [--steps 300] [--only NAME ...]
    python scripts/fmnist_runs.py table [--only NAME ...]      # minitofe eval --json per row -> markdown

``train`` runs ``minitofe train`` for each run below (``--jobs`` at a time, one BLAS/Numba thread each),
resuming a run whose checkpoint exists, and copies its ``final.npz`` to ``weights/``; wall times go to
``RUN_DIR/times.json``. ``table`` evaluates each row on the full test set, one at a time with the
machine's threads, and prints the markdown table (also written to ``RUN_DIR/table.md``, the raw
results to ``RUN_DIR/table.json``). Every row is one ``minitofe eval`` command on files in ``weights/``.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
BACKBONE = WEIGHTS / "vit_fmnist_patch2_28.safetensors"
BACKBONE_NPZ = WEIGHTS / "vit_fmnist_patch2_28.npz"     # the same weights with the config inside
COMMON = ["--model", "vit_fmnist_patch2_28", "--batch", "32", "--lr", "1e-3", "--backbone-lr-scale", "0.1",
          "--lam", "20", "--seed", "0", "--eval-every", "200", "--eval-images", "1000", "--checkpoint-every", "50",
          "--no-progress"]
# name -> extra train flags; the keep ratios of tofe-uniform give 35 % MACs with the paper's profile.
# The dynamicvit_* files were trained before the authors' DynamicViT existed here: they are tofe-cumulative.
RUNS = {
    "tofe_fmnist_70": ["--method", "tofe", "--target", "0.70"],
    "tofe_fmnist_50": ["--method", "tofe", "--target", "0.50"],
    "tofe_fmnist_35": ["--method", "tofe", "--target", "0.35"],
    "dynamicvit_fmnist_35": ["--method", "tofe-cumulative", "--target", "0.35"],
    "tofe-identity_fmnist_35": ["--method", "tofe-identity", "--target", "0.35"],
    "tofe-uniform_fmnist_35": ["--method", "tofe-uniform", "--target", "0.35", "--keep-ratios", "UNIFORM35"],
    # three times as long (the last --steps wins): does the gap to dense close with training?
    "tofe_fmnist_50_900": ["--method", "tofe", "--target", "0.50", "--steps", "900"],
    "tofe_fmnist_35_900": ["--method", "tofe", "--target", "0.35", "--steps", "900"],
    "dynamicvit_fmnist_35_900": ["--method", "tofe-cumulative", "--target", "0.35", "--steps", "900"],
    "tofe-identity_fmnist_35_900": ["--method", "tofe-identity", "--target", "0.35", "--steps", "900"],
}
# table rows: (label, weights file, method, budget, how it was obtained)
ROWS = [
    ("dense", BACKBONE_NPZ.name, "dense", None, "backbone"),
    ("tofe", "tofe_fmnist_70.npz", "tofe", 0.70, "fine-tuned"),
    ("evit-drop", BACKBONE_NPZ.name, "evit-drop", 0.70, "training-free"),
    ("idle", BACKBONE_NPZ.name, "idle", 0.70, "training-free"),
    ("tofe", "tofe_fmnist_50.npz", "tofe", 0.50, "fine-tuned"),
    ("evit-drop", BACKBONE_NPZ.name, "evit-drop", 0.50, "training-free"),
    ("idle", BACKBONE_NPZ.name, "idle", 0.50, "training-free"),
    ("tofe", "tofe_fmnist_35.npz", "tofe", 0.35, "fine-tuned"),
    ("evit-drop", BACKBONE_NPZ.name, "evit-drop", 0.35, "training-free"),
    ("idle", BACKBONE_NPZ.name, "idle", 0.35, "training-free"),
    ("tofe-cumulative", "dynamicvit_fmnist_35.npz", "tofe-cumulative", 0.35, "fine-tuned"),
    ("tofe-identity", "tofe-identity_fmnist_35.npz", "tofe-identity", 0.35, "fine-tuned (ablation)"),
    ("tofe-uniform", "tofe-uniform_fmnist_35.npz", "tofe-uniform", 0.35, "fine-tuned (ablation)"),
    ("tofe", "tofe_fmnist_50_900.npz", "tofe", 0.50, "fine-tuned 3x longer"),
    ("tofe", "tofe_fmnist_35_900.npz", "tofe", 0.35, "fine-tuned 3x longer"),
    ("tofe-cumulative", "dynamicvit_fmnist_35_900.npz", "tofe-cumulative", 0.35, "fine-tuned 3x longer"),
    ("tofe-identity", "tofe-identity_fmnist_35_900.npz", "tofe-identity", 0.35, "fine-tuned 3x longer (ablation)"),
]


def uniform_ratios(budget):
    """The paper's keep-ratio profile scaled to ``budget`` of dense MACs for tofe-uniform."""
    from minitofe.config import get_config
    from minitofe.tofe.budget import ratios_for_budget
    from minitofe.tofe.config import ToFeConfig
    return ratios_for_budget(get_config("vit_fmnist_patch2_28"), ToFeConfig(method="tofe-uniform"), budget)


def train_cmd(name, steps, run_dir):
    flags = []
    for f in RUNS[name]:
        flags += [f"{r:.4f}" for r in uniform_ratios(0.35)] if f == "UNIFORM35" else [f]
    out = run_dir / name
    cmd = [sys.executable, "-m", "minitofe", "train", "--init", str(BACKBONE), *COMMON, "--steps", str(steps),
           "--out", str(out), *flags]
    return cmd + (["--resume"] if (out / "checkpoint.npz").exists() else [])


def train_all(names, steps, jobs, run_dir):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    times_path = run_dir / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    queue, running = list(names), {}
    while queue or running:
        while queue and len(running) < jobs:
            name = queue.pop(0)
            cmd = train_cmd(name, steps, run_dir)
            print(" ".join(cmd), flush=True)
            log = open(run_dir / f"{name}.log", "a")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time())
        time.sleep(5)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                print(f"{name}: failed with exit code {proc.returncode}; see {run_dir / name}.log", flush=True)
                continue
            times[name] = times.get(name, 0.0) + time.time() - t0
            times_path.write_text(json.dumps(times, indent=1))
            final = run_dir / name / "final.npz"
            tmp = WEIGHTS / f"{name}.npz.tmp"
            tmp.write_bytes(final.read_bytes())
            os.replace(tmp, WEIGHTS / f"{name}.npz")
            print(f"{name}: done in {times[name] / 60:.1f} min -> weights/{name}.npz", flush=True)


def eval_cmd(weights, method, budget):
    cmd = [sys.executable, "-m", "minitofe", "eval", "--weights", f"weights/{weights}", "--method", method,
           "--json"]
    return cmd + (["--budget", str(budget)] if budget is not None else [])


def table(rows, run_dir):
    """Evaluate ``rows`` (one ``minitofe eval --json`` each) and write the markdown table of every row of
    ``ROWS`` that has a result; results from earlier calls (RUN_DIR/table.json, keyed by the command) are
    kept, so ``--only`` re-runs a few rows."""
    path = run_dir / "table.json"
    done = {r["command"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for label, weights, method, budget, how in rows:
        cmd = eval_cmd(weights, method, budget)
        res = json.loads(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout)
        res.update(label=label, how=how, command=" ".join(["minitofe"] + cmd[3:]))
        done[res["command"]] = res
        print(res["label"], res["weights"], f"{100 * res['top1']:.2f} %", flush=True)
    lines = ["| method | weights | how | MACs (G) | % of dense | keep ratio per stage | top-1 (%) | img/s |",
             "|---|---|---|---|---|---|---|---|"]
    results = []
    for label, weights, method, budget, how in ROWS:
        res = done.get(" ".join(["minitofe"] + eval_cmd(weights, method, budget)[3:]))
        if res is None:
            continue
        results.append(res)
        ratios = " / ".join(f"{r:.2f}" for r in res["keep_ratios"]) or "-"
        lines.append(f"| {label} | `{weights}` | {how} | {res['macs_g']:.3f} | {100 * res['macs_ratio']:.1f} "
                     f"| {ratios} | {100 * res['top1']:.2f} | {res['img_per_s']:.0f} |")
    path.write_text(json.dumps(results, indent=1))
    (run_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["train", "table"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--only", nargs="+", help="run names (train) or weight files (table) to do")
    p.add_argument("--run-dir", default="/work/runs/ft")
    args = p.parse_args(argv)
    run_dir = pathlib.Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.what == "train":
        train_all(args.only or list(RUNS), args.steps, args.jobs, run_dir)
    else:
        table([r for r in ROWS if not args.only or r[1] in args.only], run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
