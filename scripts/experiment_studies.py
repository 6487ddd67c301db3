"""The studies of the experiment's ``study`` phase (``fmnist_experiment.py run --phase study``): tofe
changed in one thing at a time, trained as tofe's final runs are (its chosen recipe, ``FINAL_EPOCHS``,
seeds ``SEEDS``), each compared with a control that is already there, tofe's own final runs.

    selector (2.1)  the token selector kind: ``linear``, ``attention`` against tofe's ``mlp``, 50 and 35 %
    skip (2.2)      how many consecutive blocks frozen tokens skip before they are scored again: stage
                    layouts with k = 2, 4, 6 (first stage at block 3 in all, so the dense floor is equal)
                    against the default 3 6 9 (k = 3), each with the ``mlp`` and the ``deep`` approximator,
                    and the default layout with ``deep``; 50 %
    evit-diff (2.5) EViT's differences from tofe, one at a time, 35 %: the budget placed as EViT's fixed
                    keep rate places it (``geo``: fixed ratios rho, rho^2, rho^3), no approximator at the
                    last stage (``lastdrop``), the frozen tokens fused into one (``fused``,
                    ``--fuse-frozen``; left out, with a note, by a checkout whose ``minitofe train`` lacks
                    the flag: ``fuse_frozen_available``)

A job is ``study/tofe-<variant>_<pct>_s<seed>``; seed 0 of every variant comes first, so that a partial
run has one complete row per variant. ``--only`` takes a study's name or a variant's (``--only selector``,
``--only skip4-deep``). Its record says the study, the variant and the control it is compared with.
"""
import functools
import subprocess
import sys
from dataclasses import dataclass

import fmnist_experiment as X

SKIP_LAYOUTS = {2: (3, 5, 7, 9, 11), 3: (3, 6, 9), 4: (3, 7, 11), 6: (3, 9)}    # k -> stage starts
DEFAULT_SKIP = 3                                                                   # tofe's own layout


@dataclass(frozen=True)
class Variant:
    name: str            # the job's stem is tofe-<name>
    what: str            # the change, in words
    method: str = "tofe"
    extra: tuple = ()    # train flags on top of tofe's (keep ratios come from ``flags``)
    stages: tuple = None
    approximator: str = "mlp"
    geometric: bool = False
    needs_flag: str = None   # a train flag this variant needs; left out while ``minitofe train`` lacks it


@dataclass(frozen=True)
class Study:
    name: str
    section: str
    title: str
    budgets: tuple
    variants: tuple


def _skip(k, approximator):
    suffix = "-deep" if approximator == "deep" else ""
    extra = ("--approximator", "deep") if approximator == "deep" else ()
    stages = SKIP_LAYOUTS[k] if k != DEFAULT_SKIP else None
    return Variant(f"skip{k}{suffix}", f"stages {' '.join(map(str, SKIP_LAYOUTS[k]))} (k = {k}), "
                                       f"{approximator} approximator", extra=extra, stages=stages,
                   approximator=approximator)


STUDIES = {s.name: s for s in (
    Study("selector", "2.1", "Selector kinds", (0.5, 0.35), (
        Variant("sel-linear", "linear selector", extra=("--selector", "linear")),
        Variant("sel-attention", "attention selector", extra=("--selector", "attention")))),
    Study("skip", "2.2", "Skip length", (0.5,), tuple(
        _skip(k, a) for k in (2, 4, 6) for a in ("mlp", "deep")) + (_skip(DEFAULT_SKIP, "deep"),)),
    Study("evit-diff", "2.5", "EViT's differences, one at a time", (0.35,), (
        Variant("geo", "fixed keep ratios rho, rho^2, rho^3 (EViT's placement of the budget)",
                method="tofe-uniform", geometric=True),
        Variant("lastdrop", "no approximator at the last stage", extra=("--last-stage", "drop")),
        Variant("fused", "frozen tokens fused into one", extra=("--fuse-frozen",),
                needs_flag="--fuse-frozen"))),
)}


def variant_names():
    return [v.name for s in STUDIES.values() for v in s.variants]


def select(only):
    """The (study, variant) pairs ``only`` names (study or variant names; None or none of them: every
    study when ``only`` is None, else none)."""
    pairs = [(s, v) for s in STUDIES.values() for v in s.variants]
    if only is None:
        return pairs
    return [(s, v) for s, v in pairs if s.name in only or v.name in only]


@functools.lru_cache(maxsize=None)
def fuse_frozen_available():
    """Does ``minitofe train --help`` of this checkout list ``--fuse-frozen``?"""
    out = subprocess.run([sys.executable, "-m", "minitofe", "train", "--help"], cwd=X.REPO,
                         capture_output=True, text=True)
    return "--fuse-frozen" in out.stdout


def available(variant):
    return variant.needs_flag is None or fuse_frozen_available()


def left_out(only=None):
    """One line per selected variant that is left out, saying why."""
    return [f"study {s.name}: tofe-{v.name} left out: `minitofe train --help` lists no {v.needs_flag} yet"
            for s, v in select(only) if not available(v)]


def recipe(run_dir):
    """tofe's recipe from ``choice.json``, or ``DEFAULT_GRID`` with a note when there is none yet."""
    chosen = X.load_choice(run_dir).get("tofe")
    if chosen:
        return chosen
    return {"grid": X.DEFAULT_GRID, "flags": X.GRID[X.DEFAULT_GRID],
            "note": "choice.json has no tofe entry: the default recipe"}


def variant_flags(variant, budget):
    """The variant's ``--method`` ... flags at ``budget`` (before the recipe, the seed and the steps)."""
    flags = ["--method", variant.method, "--budget", str(budget), *variant.extra]
    if variant.geometric:
        flags += ["--keep-ratios", *(f"{r:.6f}" for r in X.geometric_ratios(budget))]
    if variant.stages is not None:
        # tofe learns its ratios; a layout of another stage count needs as many starting ones: equal
        # ratios that meet the budget (they are its profile only until training has recorded its own)
        ratios = X.uniform_ratios(budget, stages=variant.stages, approximator=variant.approximator)
        flags += ["--stages", *map(str, variant.stages), "--keep-ratios", *(f"{r:.6f}" for r in ratios)]
    return flags


def job_name(variant, budget, seed):
    return f"tofe-{variant.name}_{round(100 * budget)}_s{seed}"


def study_jobs(run_dir, only=None, seeds=None):
    """(phase, name, flags) of every selected, available study job; seed 0 of every variant first."""
    grid = X.GRID[recipe(run_dir)["grid"]]
    return [("study", job_name(v, b, seed), [*variant_flags(v, b), *grid, "--seed", str(seed),
                                             "--steps", str(X.steps(X.FINAL_EPOCHS))])
            for seed in (X.SEEDS if seeds is None else seeds)
            for s, v in select(only) if available(v) for b in s.budgets]


def control(budget, seed):
    """(phase, name) of the run a study job of ``budget`` and ``seed`` is compared with."""
    return "final", f"tofe_{round(100 * budget)}_s{seed}"


def of_job(name):
    """(study, variant, budget, seed) of the study job ``name`` (``tofe-<variant>_<pct>_s<seed>``)."""
    stem, pct, seed = name.rsplit("_", 2)
    for s in STUDIES.values():
        for v in s.variants:
            if stem == f"tofe-{v.name}":
                return s, v, int(pct) / 100, int(seed[1:])
    raise ValueError(f"{name}: no study variant is called {stem.removeprefix('tofe-')!r}; "
                     f"known: {variant_names()}")


def record_fields(run_dir, name):
    """What a study job's record says besides the common fields: which study and variant, and the
    control it is compared with."""
    s, v, budget, seed = of_job(name)
    return {"study": s.name, "section": s.section, "variant": v.name, "change": v.what,
            "control": "/".join(control(budget, seed)), "recipe": recipe(run_dir)}


def status_lines(run_dir, only=None):
    jobs = study_jobs(run_dir, only)
    lines = []
    for s in STUDIES.values():
        mine = [n for _, n, _ in jobs if of_job(n)[0] is s]
        if not mine:
            continue
        done = [n for n in mine if X.is_done(run_dir, "study", n)]
        started = [n for n in mine if n not in done and (X.job_dir(run_dir, "study", n) / "checkpoint.npz")
                   .is_file()]
        lines.append(f"study {s.name} ({s.section}): {len(done)} of {len(mine)} done; started: "
                     f"{started or '-'}")
    return lines + left_out(only)
