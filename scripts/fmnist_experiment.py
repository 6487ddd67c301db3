"""The Fashion-MNIST experiment, from the backbone to the table and the curves, in one resumable command.

    python scripts/fmnist_experiment.py status              # what is done, what runs, what is left
    python scripts/fmnist_experiment.py run [--jobs 2] [--phase search|final|remedy|study|all] [--only M ...]
                                            [--seeds 0 ...] [--engine dask --scheduler tcp://HOST:8786]
    python scripts/fmnist_experiment.py budget [--phase P] [--only M ...] [--jobs N]   # what is left, in hours
    python scripts/fmnist_experiment.py report [--against RUN_DIR]    # the test set: tables, pictures
    python scripts/fmnist_experiment.py records [--against RUN_DIR]   # every run's record (results/fmnist/)

Phases, each resumable (run it again after a stop: finished jobs are skipped, unfinished ones resume from
their last checkpoint):

1. ``backbone`` — ``scripts/train_backbone_timm.py`` (needs torch + timm: ``--torch-python``), then the
   ``.npz`` twin of the backbone (``minitofe convert``).
2. ``search`` — for every learned method, the same small grid (``GRID``) at the 50 % MACs target, seeds
   ``SEARCH_SEEDS``, ``SEARCH_EPOCHS`` epochs of the 55 000-image training split; each candidate is scored
   on the 5 000-image validation split at exactly 50 % MACs (``minitofe eval --split val --budget 0.5``,
   ``RUN_DIR/search.json``). The rule, fixed before any run and the same for every method
   (``pick_recipe``): the default recipe ``DEFAULT_GRID`` stands unless another candidate's mean val
   top-1 beats it by more than the two candidates' seed spreads added (sample std over the search seeds),
   the test the table's verdicts use. One seed cannot tell a 0.4-point difference from its own noise: a
   rerun on another machine chose the other recipe and moved EViT by 0.7 points (``RUN_DIR/choice.json``).
3. ``final`` — every method at 50 % and 35 % MACs with its chosen recipe (and ``dense``, the backbone
   fine-tuned by the same recipe: the control for what more training alone gives), ``FINAL_EPOCHS``
   epochs, seeds
   ``SEEDS`` for the three-seed methods and seed 0 for the rest; seed 0 of every method first, so that a
   partial experiment already has one complete row per method.
4. ``remedy`` — tofe with each of ``REMEDIES`` (a change aimed at where ToFe falls short), seed 0, at 50 %
   and 35 % MACs with tofe's recipe, scored on the validation split against tofe's seed-0 final runs
   (``RUN_DIR/remedy.json``); a remedy kept there (above tofe) then gets seeds 1 and 2 at that budget.
5. ``study`` — the studies of ``experiment_studies.py`` (tofe changed in one thing at a time: the selector
   kind, how many blocks frozen tokens skip, EViT's differences), trained as the final runs are, each
   against tofe's own final runs; ``--only`` takes a study's or a variant's name (``--only selector``).
6. ``report`` — only now the test set: every final model at its budget, the seed-0 models and the
   training-free baselines at budgets 0.3 ... 1.0 (the curves), the learned keep ratios per stage, the
   per-stage approximation error; writes ``RUN_DIR/report/`` (JSON, markdown table, PNGs), and the studies'
   tables and figure (``report_studies.py``: ``studies.md``, ``studies.json``, ``skip.png``).
   ``publish_report.py RUN_DIR`` then copies that report, whole, into docs/fmnist-results.md.

``budget`` prints, per phase and study, the runs left and their estimated core-hours and wall hours at
``--jobs N`` (``experiment_budget.py``: the median wall time of finished runs of the same kind in
``RUN_DIR/times.json``, else stated defaults).

Every training job is one ``minitofe train`` process with one BLAS/Numba thread, ``--jobs`` at a time on
this machine, or one task each on the workers of a Dask cluster (``--engine dask``: docs/cluster.md;
``experiment_runners.py``); its wall time goes to ``RUN_DIR/times.json`` and its log to
``RUN_DIR/<phase>/<name>/``; the job's process and its driver hold ``job.lock`` there, so a second
driver on the same run folder (the command started twice, or on two phases at once) skips the jobs the
first one runs instead of writing their folders too. The dense teacher's outputs are computed by the first
job of a teacher and stage layout and kept in ``RUN_DIR/teacher-cache/`` (~4 GB each) for the others,
which map them read-only (``MINITOFE_TEACHER_CACHE_DIR``; minitofe.train.teacher_cache). Each run's
record (method, budget, seed, flags, the recipe and the val scores that chose it, commit, NumPy / Numba
versions, the BLAS library with its core type, wall minutes, val and test top-1) goes to
``results/fmnist/<RUN_DIR name>/<phase>/<name>.json``, which is kept in the repository: a regeneration on
another machine is compared with it run by run (``records`` prints them side by side; ``report
--against`` compares their test figures and widens the verdicts by what they moved).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import experiment_runners as runners
import experiment_studies as studies

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "vit_fmnist_patch4_28"
BACKBONE = REPO / "weights" / f"{MODEL}.safetensors"
BACKBONE_NPZ = REPO / "weights" / f"{MODEL}.npz"
TRAIN_IMAGES = 55_000
BATCH = 64
SEARCH_EPOCHS = 1
SEARCH_SEEDS = (0, 1)
FINAL_EPOCHS = 3
SEEDS = (0, 1, 2)
BUDGETS = (0.5, 0.35)
CURVE_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# learned methods -> the seeds of their final runs. "dense" is the control: the backbone fine-tuned with the
# same recipe and number of steps (cross-entropy only), no reduction, so that a gain from more training of
# the backbone is not read as a gain of the method.
METHODS = {"tofe": SEEDS, "tofe-identity": SEEDS, "dynamicvit": SEEDS, "evit": SEEDS, "tofe-uniform": SEEDS,
           "dense": (0,)}


def budgets_of(method):
    """The MACs targets a method's final runs are trained at (the dense control: none, 1.0)."""
    return (1.0,) if method == "dense" else BUDGETS


def search_budget(method):
    """The MACs target of a method's search runs (the dense control: none, 1.0)."""
    return 1.0 if method == "dense" else 0.5


TRAINING_FREE = ("evit-drop", "idle")
# flags every training job shares; lam 20: with the default 2 the realised MACs settled ~0.2 above the
# target on the earlier backbone, and eval rescales to the exact budget anyway; --teacher-cache: the
# teacher once per run (~4 GB per run, steps ~20 % faster, bit-identical results on this backbone)
COMMON = ["--lr", "1e-3", "--lam", "20", "--teacher-cache", "--eval-every", "400",
          "--eval-images", "5000", "--checkpoint-every", "50", "--no-progress"]
# the hyper-parameter grid every learned method gets (name -> extra flags)
GRID = {"bb0.1": ["--backbone-lr-scale", "0.1"], "bb1": ["--backbone-lr-scale", "1.0"]}
# the recipe that stands unless another beats it beyond the search's own seed spread (``pick_recipe``):
# the backbone fine-tuned at the full learning rate, as the new modules are
DEFAULT_GRID = "bb1"
RECORDS = REPO / "results" / "fmnist"
# the teacher's outputs, computed by the first run of a teacher, data and code and mapped by the others
# (minitofe.train.teacher_cache; ~4 GB a stage layout), unless MINITOFE_TEACHER_CACHE_DIR says elsewhere
TEACHER_CACHE = "teacher-cache"
# remedies tried for tofe on val (name -> extra flags), each against tofe's seed-0 final run at the same
# budget. With the stages at blocks 3, 6, 9 of 12, the three dense blocks and the ToFe modules cost 29 %
# of the dense MACs before a single patch is kept, so 35 % leaves a keep ratio of ~0.09 per stage; a
# first stage at block 2 halves that floor (21 %) and doubles the keep ratio (~0.19). lam80: with lam 20 the
# quadratic budget loss settles where its pull balances the task's, ~6 points over a 35 % target (its ratios
# are then scaled down at test time to half of what the model was trained with); the overshoot goes as
# 1 / lam, so lam 80 should bring it to ~1.5 points (it brought it to 2.6, and was not kept on val at
# either budget). The remedy's flags come after COMMON's and win.
REMEDIES = {"stages258": ["--stages", "2", "5", "8"], "lam80": ["--lam", "80"]}


def steps(epochs):
    return round(epochs * TRAIN_IMAGES / BATCH)


def backbone_cfg():
    """The backbone's ViTConfig: from the ``.npz`` when it exists, else the preset ``MODEL``."""
    import minitofe
    from minitofe.config import get_config
    return minitofe.load_model(BACKBONE_NPZ).cfg if BACKBONE_NPZ.is_file() else get_config(MODEL)


def _fixed_ratio_config(**tofe):
    """The backbone's ViTConfig and a ``tofe-uniform`` ToFeConfig with ``tofe``'s fields (``stages``:
    as many starting keep ratios)."""
    from minitofe.tofe.config import ToFeConfig, default_stages
    cfg = backbone_cfg()
    stages = tofe.get("stages") or default_stages(cfg.depth)
    return cfg, ToFeConfig(method="tofe-uniform", keep_ratios=(1.0,) * len(stages), **tofe)


def uniform_ratios(budget, **tofe):
    """Equal keep ratios for every stage that meet ``budget`` (the tofe-uniform ablation); ``tofe``:
    ToFeConfig fields of the model they are for (``stages``, ``approximator``)."""
    from minitofe.tofe.budget import ratios_for_budget
    cfg, tcfg = _fixed_ratio_config(**tofe)
    return ratios_for_budget(cfg, tcfg, budget, tcfg.keep_ratios)


def geometric_rho(budget, iters=60, **tofe):
    """The largest rho whose fixed keep ratios rho, rho^2, rho^3 (one power per stage: the profile EViT's
    fixed keep rate gives cumulatively) keep the ``topk`` MACs within ``budget``: a bisection on
    ``topk_macs`` (each stage keeps at least one patch). ``tofe``: ToFeConfig fields, as ``uniform_ratios``."""
    from minitofe.tofe.budget import topk_macs
    from minitofe.tofe.macs import dense_macs
    cfg, tcfg = _fixed_ratio_config(**tofe)
    target, P = budget * dense_macs(cfg), cfg.num_patches
    if topk_macs(cfg, tcfg, _powers(1.0 / P, tcfg, P)) > target:
        cheapest = topk_macs(cfg, tcfg, _powers(1.0 / P, tcfg, P)) / dense_macs(cfg)
        raise ValueError(f"budget {budget}: below the cheapest fixed-ratio setting ({cheapest:.3f} of dense "
                         f"MACs)")
    lo, hi = 1.0 / P, 1.0                          # the MACs grow with rho
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if topk_macs(cfg, tcfg, _powers(mid, tcfg, P)) <= target else (lo, mid)
    return lo


def _powers(rho, tcfg, P):
    """rho, rho^2, ... as kept patches (``topk``'s rounding, at least one) over P, one per stage."""
    return tuple(max(round(rho ** (s + 1) * P), 1) / P for s in range(len(tcfg.keep_ratios)))


def geometric_ratios(budget, **tofe):
    """EViT's placement of ``budget``: fixed keep ratios rho, rho^2, rho^3 (``geometric_rho``), each the
    whole number of patches it keeps over P, so that no rounding of the printed ratio moves a count."""
    cfg, tcfg = _fixed_ratio_config(**tofe)
    return _powers(geometric_rho(budget, **tofe), tcfg, cfg.num_patches)


def method_flags(method, budget):
    if method == "dense":
        return ["--method", "dense"]
    flags = ["--method", method, "--budget", str(budget)]
    if method == "tofe-uniform":
        flags += ["--keep-ratios", *(f"{r:.6f}" for r in uniform_ratios(budget))]
    return flags


# ---- jobs: (phase, name, flags); a job is done when RUN_DIR/phase/name/final.npz exists ----

def search_jobs(methods):
    return [("search", search_name(m, g, seed), [*method_flags(m, search_budget(m)), *GRID[g],
                                                 "--seed", str(seed), "--steps", str(steps(SEARCH_EPOCHS))])
            for seed in SEARCH_SEEDS for m in methods for g in GRID]


def search_name(method, grid, seed):
    return f"{method}_{round(100 * search_budget(method))}_{grid}_s{seed}"


def final_jobs(methods, run_dir, seeds=None, chosen=None):
    """``chosen``: each method's recipe (None: ``choice.json``'s; a method without one has no final runs)."""
    chosen = load_choice(run_dir) if chosen is None else chosen
    jobs = []
    for seed in SEEDS if seeds is None else seeds:      # seed 0 of every method first
        for m in methods:
            if seed not in METHODS[m] or m not in chosen:
                continue
            for b in budgets_of(m):
                jobs.append(("final", f"{m}_{round(100 * b)}_s{seed}",
                             [*method_flags(m, b), *GRID[chosen[m]["grid"]], "--seed", str(seed),
                              "--steps", str(steps(FINAL_EPOCHS))]))
    return jobs


def remedy_jobs(run_dir, chosen=None):
    chosen = (load_choice(run_dir) if chosen is None else chosen).get("tofe")
    return [] if chosen is None else [
        ("remedy", f"tofe-{r}_{round(100 * b)}_s0", [*method_flags("tofe", b), *GRID[chosen["grid"]], *flags,
                                                      "--seed", "0", "--steps", str(steps(FINAL_EPOCHS))])
        for r, flags in REMEDIES.items() for b in BUDGETS]


def score_remedies(run_dir):
    """Each finished remedy and tofe's seed-0 final run at the same budget, on the validation split
    (``remedy.json``): the remedy's decision is made here, before any test-set number is looked at."""
    scores = load_remedy_scores(run_dir)
    for phase, name, _ in remedy_jobs(run_dir):
        pct = name.split("_")[1]
        for ph, job in ((phase, name), ("final", f"tofe_{pct}_s0")):
            if job in scores or not is_done(run_dir, ph, job):
                continue
            res = eval_json(job_dir(run_dir, ph, job) / "final.npz", "tofe", int(pct) / 100, "val")
            scores[job] = {"val_top1": res["top1"], "macs_ratio": res["macs_ratio"]}
            print(f"remedy {job}: val top-1 {100 * res['top1']:.2f} % "
                  f"at {100 * res['macs_ratio']:.1f} % MACs")
    (run_dir / "remedy.json").write_text(json.dumps(scores, indent=1, sort_keys=True))
    return scores


def load_remedy_scores(run_dir):
    """``remedy.json``: job name -> its val top-1 and MACs ratio ({} before any is scored)."""
    path = run_dir / "remedy.json"
    return json.loads(path.read_text()) if path.exists() else {}


def remedy_kept(scores, name):
    """Was remedy job ``name`` (``tofe-R_PCT_s0``) kept on val: above tofe's seed-0 final at that budget?"""
    mine, base = scores.get(name), scores.get(f"tofe_{name.rsplit('_', 2)[1]}_s0")
    return mine is not None and base is not None and mine["val_top1"] > base["val_top1"]


def kept_remedy_seed_jobs(run_dir):
    """A remedy kept on val (``remedy.json``) gets tofe's other seeds at that budget, so that its test
    figure has a seed spread as tofe's has."""
    scores = load_remedy_scores(run_dir)
    jobs = []
    for phase, name, flags in remedy_jobs(run_dir):
        if remedy_kept(scores, name):
            i, stem = flags.index("--seed"), name.rsplit("_", 1)[0]
            jobs += [(phase, f"{stem}_s{seed}", [*flags[:i], "--seed", str(seed), *flags[i + 2:]])
                     for seed in SEEDS if seed != 0]
    return jobs


# ---- per-run records, kept in the repository ----

def record_path(run_dir, phase, name):
    return RECORDS / pathlib.Path(run_dir).name / phase / f"{name}.json"


def starts(run_dir, phase, name):
    """The run's starts so far, as its record lists them (``start_entry``; [] for a new run)."""
    path = record_path(run_dir, phase, name)
    return json.loads(path.read_text()).get("starts", []) if path.is_file() else []


def start_entry(where):
    """One start of a run (its first, or a resume after a stop): when, and the checkout and BLAS kernel of
    ``where`` (``environment``). A run resumed at another commit or under another kernel lists both, where
    the record's own fields name the last start only."""
    blas = where.get("blas") or [{}]
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": where.get("commit"),
            "dirty": where.get("dirty"), "openblas_coretype": where.get("openblas_coretype"),
            "blas_architecture": blas[0].get("architecture")}


def write_record(run_dir, phase, name, **fields):
    """Merge ``fields`` into the run's record (``record_path``); the record is plain JSON, one per run."""
    path = record_path(run_dir, phase, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = json.loads(path.read_text()) if path.is_file() else {"phase": phase, "name": name}
    rec.update(fields)
    path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return rec


def environment(env=None):
    """What the run's arithmetic depends on, on this machine and this checkout
    (``experiment_runners.environment``)."""
    return runners.environment(env, REPO)


def job_fields(run_dir, phase, name, flags):
    """A job's record before it runs: what it is and how it was asked for."""
    method = flags[flags.index("--method") + 1]
    flag = next((f for f in ("--budget", "--target") if f in flags), None)     # --target: its old name
    budget = float(flags[flags.index(flag) + 1]) if flag else 1.0
    fields = {"method": method, "budget": budget, "seed": int(flags[flags.index("--seed") + 1]),
              "flags": flags, "common_flags": COMMON, "batch": BATCH}
    if phase == "final":
        chosen = load_choice(run_dir).get(method)
        if chosen:
            fields["recipe"] = chosen
    if phase == "study":
        fields.update(studies.record_fields(run_dir, name))
    return fields


def job_dir(run_dir, phase, name):
    return run_dir / phase / name


def is_done(run_dir, phase, name):
    return (job_dir(run_dir, phase, name) / "final.npz").is_file()


def train_job(run_dir, phase, name, flags):
    """The job's ``Job``: the one place where a job's ``minitofe train`` arguments are made, a new run's
    and its continuation's (which the runner picks as the job starts, ``experiment_runners.command``)."""
    out = job_dir(run_dir, phase, name)
    fresh = ["train", "--init", str(BACKBONE), "--model", MODEL, "--batch", str(BATCH), *COMMON, *flags,
             "--out", str(out)]
    return runners.Job(f"{phase}/{name}", str(out), tuple(fresh),
                       ("train", "--out", str(out), "--resume", "--no-progress"))


def train_cmd(run_dir, phase, name, flags):
    """The command the job would start with now (fresh, or ``--resume`` when its checkpoint exists)."""
    return runners.command(train_job(run_dir, phase, name, flags))


def run_jobs(jobs, run_dir, n_parallel, client=None):
    """Run the unfinished ``jobs``, each with one BLAS/Numba thread: ``n_parallel`` at a time here, or as
    tasks of the Dask cluster of ``client``. Their wall times go to ``times.json``, their records to
    ``results/fmnist/`` as each one starts (the local pool: with this machine's environment) and ends (Dask:
    with the environment of the worker that ran it)."""
    overrides = {"MINITOFE_TEACHER_CACHE_DIR": str(run_dir / TEACHER_CACHE), **runners.driver_overrides()}
    times_path = run_dir / "times.json"
    queue = [j for j in jobs if not is_done(run_dir, j[0], j[1])]
    print(f"{len(jobs) - len(queue)} of {len(jobs)} jobs done; {len(queue)} to run", flush=True)
    fields = {f"{phase}/{name}": (phase, name, flags) for phase, name, flags in queue}

    def started(job):
        phase, name, flags = fields[job.key]
        pathlib.Path(job.out).mkdir(parents=True, exist_ok=True)
        where = {"status": "queued", "engine": "dask"} if client else \
            {**environment(runners.job_env(overrides)), "status": "running"}
        if not client:
            where["starts"] = starts(run_dir, phase, name) + [start_entry(where)]
        write_record(run_dir, phase, name, **job_fields(run_dir, phase, name, flags), **where)

    def finished(job, result):
        times = json.loads(times_path.read_text()) if times_path.exists() else {}
        times[job.key] = times.get(job.key, 0.0) + result.get("seconds", 0.0)
        times_path.write_text(json.dumps(times, indent=1, sort_keys=True))
        code = result.get("returncode")
        if code == 0:           # a clean stop (Ctrl-C) exits 0 too, with its checkpoint and no final.npz
            state = "done" if is_done(run_dir, *job.key.split("/")) else "stopped (resumes on the next run)"
        else:
            state = f"FAILED ({result['error']})" if "error" in result else f"FAILED (exit {code})"
        worker = {"worker": result["host"], **(result.get("environment") or {})} if "host" in result else {}
        write_record(run_dir, *job.key.split("/"), status=state, wall_minutes=round(times[job.key] / 60, 2),
                     last_eval=last_eval(pathlib.Path(job.out)), **worker)
        print(f"[{runners.stamp()}] {state} {job.key} ({times[job.key] / 60:.1f} min in all)", flush=True)

    todo = [train_job(run_dir, *j) for j in queue]
    if client is None:
        skipped = runners.run_local(todo, n_parallel, REPO, overrides, started, finished)
        if skipped:
            print(f"{len(skipped)} job(s) left to the process that holds their lock; run this again when it "
                  f"has ended: {' '.join(j.key for j in skipped)}", flush=True)
    else:
        runners.run_dask(todo, client, REPO, overrides, started, finished)


def last_eval(out):
    """The last validation evaluation in a job's ``log.jsonl`` (the trainer's own, on ``--eval-images``)."""
    path = out / "log.jsonl"
    evals = [json.loads(line)["eval"] for line in path.read_text().splitlines()
             if '"eval"' in line] if path.is_file() else []
    return evals[-1] if evals else None


# ---- the search's choice, made on the validation split ----

def eval_json(weights, method, budget, split, limit=None):
    cmd = [sys.executable, "-m", "minitofe", "eval", "--weights", str(weights), "--method", method, "--split",
           split, "--json", "--fast"]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    if limit:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def choose(run_dir, methods):
    """Score every finished search job of ``methods`` on the validation split at 50 % MACs and pick each
    method's recipe by ``pick_recipe``. The choice (``choice.json``) is written for every method whose
    search is scored, not only ``methods``: a run with ``--only`` must not drop the other methods' recipes."""
    path = run_dir / "search.json"
    scores = json.loads(path.read_text()) if path.exists() else {}
    for phase, name, _ in search_jobs(methods):
        if name in scores or not is_done(run_dir, phase, name):
            continue
        method = name.split("_")[0]
        res = eval_json(job_dir(run_dir, phase, name) / "final.npz", method,
                        None if method == "dense" else search_budget(method), "val")
        scores[name] = {"val_top1": res["top1"], "macs_ratio": res["macs_ratio"]}
        write_record(run_dir, phase, name, val_top1=res["top1"], val_macs_ratio=res["macs_ratio"])
        print(f"search {name}: val top-1 {100 * res['top1']:.2f} % at {100 * res['macs_ratio']:.1f} % MACs")
    path.write_text(json.dumps(scores, indent=1, sort_keys=True))
    chosen = {}
    for m in METHODS:
        cands = {g: [scores.get(search_name(m, g, seed)) for seed in SEARCH_SEEDS] for g in GRID}
        if all(all(runs) for runs in cands.values()):
            val = {g: [r["val_top1"] for r in runs] for g, runs in cands.items()}
            best, why = pick_recipe(val)
            chosen[m] = {"grid": best, "flags": GRID[best], "why": why, "val_top1": val}
    (run_dir / "choice.json").write_text(json.dumps(chosen, indent=1, sort_keys=True))
    kept = RECORDS / pathlib.Path(run_dir).name            # the choice and its scores beside the records
    kept.mkdir(parents=True, exist_ok=True)
    for name, data in (("choice.json", chosen), ("search.json", scores)):
        (kept / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return chosen


def pick_recipe(val):
    """The search's rule, the same for every method and fixed before any run: ``DEFAULT_GRID`` stands
    unless another candidate's mean val top-1 beats it by more than the two candidates' seed spreads
    added (sample std over the search seeds); among those that do, the highest mean wins. ``val`` maps
    each candidate to its val top-1 per search seed. Returns (the candidate, the reason in words)."""
    def mean_std(xs):
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
    m0, s0 = mean_std(val[DEFAULT_GRID])
    beats = {}
    for g, xs in val.items():
        m, s = mean_std(xs)
        if g != DEFAULT_GRID and m - m0 > s + s0:
            beats[g] = m
    if not beats:
        return DEFAULT_GRID, f"default {DEFAULT_GRID} kept: no candidate beats its mean {100 * m0:.2f} " \
                             f"beyond the spread"
    best = max(beats, key=beats.get)
    return best, f"{best} {100 * beats[best]:.2f} beats default {DEFAULT_GRID} {100 * m0:.2f} beyond " \
                 f"the spread"


def load_choice(run_dir):
    path = run_dir / "choice.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ---- the backbone ----

# the shipped backbone's recipe (weights/README.md): 24 epochs, then 6 more from a second cosine (decided
# on val: it ended its 24 epochs below the 90.3 % val set beforehand)
BACKBONE_RECIPE = ["--warmup-epochs", "1", "--cnn-epochs", "8"]
BACKBONE_EXTEND = ["--extend-epochs", "6", "--extend-lr", "2e-4"]


def backbone(torch_python, epochs, run_dir):
    if not BACKBONE.is_file():
        script = REPO / "scripts" / "train_backbone_timm.py"
        start = ["--resume"] if (run_dir / "args.json").is_file() else \
            ["--epochs", str(epochs), *BACKBONE_RECIPE]
        subprocess.run([torch_python, str(script), *start, *BACKBONE_EXTEND, "--verify", "--run-dir",
                        str(run_dir)], cwd=REPO, check=True)
    if not BACKBONE_NPZ.is_file():
        subprocess.run([sys.executable, "-m", "minitofe", "convert", str(BACKBONE), str(BACKBONE_NPZ),
                        "--model", MODEL], cwd=REPO, check=True)


def records(run_dir, against=None):
    """Print every run's record of ``run_dir`` (val and test top-1, recipe, BLAS core type, commit), with a
    second experiment's record of the same run beside it when ``against`` names its run folder."""
    def load(name):
        root = RECORDS / name
        return {str(f.relative_to(root).with_suffix("")): json.loads(f.read_text())
                for f in sorted(root.glob("*/*.json"))}

    def fmt(rec):
        if rec is None:
            return "– | – | – | –"
        top = [("–" if rec.get(k) is None else f"{100 * rec[k]:.2f}") for k in ("val_top1", "test_top1")]
        core = next((b.get("architecture") for b in rec.get("blas", [])), None)
        return f"{top[0]} | {top[1]} | {rec.get('recipe', {}).get('grid', '–')} | {core} {rec.get('commit', '')[:8]}"

    mine, other = load(pathlib.Path(run_dir).name), (load(pathlib.Path(against).name) if against else {})
    head = "| run | val | test | recipe | BLAS core, commit |"
    if against:
        head += " val | test | recipe | BLAS core, commit (" + pathlib.Path(against).name + ") |"
    print(head)
    for run in sorted(set(mine) | set(other)):
        print(f"| {run} | {fmt(mine.get(run))} |" + (f" {fmt(other.get(run))} |" if against else ""))


def status(run_dir, methods, only=None):
    print(f"backbone: {'done' if BACKBONE.is_file() else 'missing'} ({BACKBONE.name})")
    for phase, jobs in (("search", search_jobs(methods)), ("final", final_jobs(methods, run_dir)),
                        ("remedy", remedy_jobs(run_dir) + kept_remedy_seed_jobs(run_dir))):
        done = [n for _, n, _ in jobs if is_done(run_dir, phase, n)]
        started = [n for _, n, _ in jobs if not is_done(run_dir, phase, n)
                   and (job_dir(run_dir, phase, n) / "checkpoint.npz").is_file()]
        print(f"{phase}: {len(done)} of {len(jobs)} done; started: {started or '-'}")
    print("\n".join(studies.status_lines(run_dir, only)))
    print(f"choice: {json.dumps(load_choice(run_dir))}")


def run_phases(args, run_dir, methods, client):
    """``run``: the phases ``args.phase`` asks for, in order; the training jobs on ``client``'s Dask
    cluster, or ``args.jobs`` at a time here (``client`` None)."""
    if args.phase in ("backbone", "all"):
        backbone(args.torch_python, args.backbone_epochs, pathlib.Path(args.backbone_run_dir))
    if args.phase in ("search", "all"):
        run_jobs(search_jobs(methods), run_dir, args.jobs, client)
        choose(run_dir, methods)
    if args.phase in ("final", "all"):
        choose(run_dir, methods)
        run_jobs(final_jobs(methods, run_dir, args.seeds), run_dir, args.jobs, client)
    if args.phase in ("remedy", "all") and "tofe" in methods:
        run_jobs(remedy_jobs(run_dir), run_dir, args.jobs, client)
        score_remedies(run_dir)
        run_jobs(kept_remedy_seed_jobs(run_dir), run_dir, args.jobs, client)
    if args.phase in ("study", "all"):
        for line in studies.left_out(args.only):
            print(line)
        run_jobs(studies.study_jobs(run_dir, args.only, args.seeds), run_dir, args.jobs, client)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["status", "run", "budget", "report", "records"])
    p.add_argument("--phase", choices=["backbone", "search", "final", "remedy", "study", "all"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="training processes at a time (one thread each; "
                                                        "the local engine)")
    p.add_argument("--engine", choices=["local", "dask"], default="local",
                   help="run: where the training jobs run: --jobs at a time on this machine, or as the tasks "
                        "of a Dask cluster (--scheduler; docs/cluster.md)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="the Dask scheduler of --engine dask, e.g. tcp://HOST:8786; its workers must see "
                        "--run-dir and this checkout at the same paths")
    p.add_argument("--only", nargs="+", choices=[*METHODS, *studies.STUDIES, *studies.variant_names()],
                   help="methods, studies or study variants to run (default: all); a phase runs what it "
                        "names of its own kind: --only selector runs the selector study alone")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), choices=SEEDS,
                   help="final and study runs of these seeds only (e.g. 0: one complete row per method "
                        "first)")
    p.add_argument("--run-dir", default=str(REPO / "runs" / "experiment"))
    p.add_argument("--against", help="records: another experiment's run folder, its records beside; "
                                     "report: its seed-0 finals compared, the verdicts' machine spread")
    p.add_argument("--torch-python", default=sys.executable, help="a Python with torch + timm (backbone)")
    p.add_argument("--backbone-epochs", type=float, default=24)
    p.add_argument("--backbone-run-dir", default=str(REPO / "runs" / "backbone"),
                   help="the backbone's checkpoint folder (keep runs outside a work tree that may be "
                        "laid anew)")
    args = p.parse_args(argv)
    if (args.engine == "dask") != bool(args.scheduler):
        p.error("--engine dask needs --scheduler ADDRESS" if args.engine == "dask" else
                "--scheduler is for --engine dask")
    run_dir = pathlib.Path(args.run_dir)
    if args.what == "run":
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir() and args.what == "report":
        p.error(f"--run-dir {run_dir}: no such folder (`run` makes it)")
    methods = list(METHODS) if args.only is None else [m for m in args.only if m in METHODS]
    if args.what == "status":
        status(run_dir, methods, args.only)
        return 0
    if args.what == "budget":
        from experiment_budget import budget
        print(budget(run_dir, args.phase, methods, args.only, args.jobs, args.seeds))
        return 0
    if args.what == "records":
        records(run_dir, args.against)
        return 0
    if args.what == "report":
        from fmnist_report import report
        report(run_dir, methods or list(METHODS), args.against)
        return 0
    client = runners.connect(args.scheduler) if args.engine == "dask" else None    # unreachable: stop now
    try:
        run_phases(args, run_dir, methods, client)
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
