"""What the experiment has left to run, in core-hours and wall hours (``fmnist_experiment.py budget``).

Per phase (and per study of the ``study`` phase): the training runs not done yet, each estimated at the
median wall minutes of the finished runs of its kind in ``RUN_DIR/times.json`` (a kind: the search, the
final runs, the remedies, one study); a kind with no finished run takes the final runs' median (the
remedies and the studies are final runs changed in one thing, as long), and with none of those either,
the stated defaults ``DEFAULT_MINUTES`` (one run on one core). The wall hours at ``--jobs N`` are the
core-hours shared by N processes, but never less than one run: phases run one after the other, so their
wall hours add up. Runs a phase decides on the way (the seeds 1 and 2 of a remedy kept on val) are said
in a note, not counted.
"""
import json
import math
import statistics

import experiment_studies as studies
import fmnist_experiment as X

# one run on one core, minutes, when no run of its kind has finished
DEFAULT_MINUTES = {"search": 18.0, "final": 32.0}


def kind_of(phase, name):
    """The kind whose finished runs estimate job ``phase/name``: its phase, or for a study job the study."""
    return f"study {studies.of_job(name)[0].name}" if phase == "study" else phase


def finished_minutes(run_dir):
    """{kind: [wall minutes of each finished run]} from ``times.json`` (a run stopped and resumed: the sum
    of its parts, as the driver records it)."""
    path = run_dir / "times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    out = {}
    for key, seconds in times.items():
        phase, name = key.split("/", 1)
        if X.is_done(run_dir, phase, name):
            try:
                out.setdefault(kind_of(phase, name), []).append(seconds / 60)
            except ValueError:                   # a study variant no longer defined
                continue
    return out


def minutes_per_run(kind, finished):
    """(minutes, where the figure comes from) for one run of ``kind``."""
    if finished.get(kind):
        return statistics.median(finished[kind]), f"median of {len(finished[kind])} finished"
    if kind != "search" and finished.get("final"):
        return statistics.median(finished["final"]), "median of the final runs"
    minutes = DEFAULT_MINUTES["search" if kind == "search" else "final"]
    return minutes, "default"


def phase_jobs(run_dir, phase, methods, only, seeds=None):
    """{kind: [(phase, name), ...]} of ``phase``'s jobs (final and study runs: of ``seeds`` only, None: all),
    recipes the search has not chosen yet counted at ``DEFAULT_GRID`` (their number does not depend on
    which)."""
    chosen = {m: {"grid": X.DEFAULT_GRID} for m in X.METHODS}
    chosen.update(X.load_choice(run_dir))
    jobs = {"search": lambda: X.search_jobs(methods),
            "final": lambda: X.final_jobs(methods, run_dir, seeds, chosen=chosen),
            "remedy": lambda: X.remedy_jobs(run_dir, chosen) if "tofe" in methods else [],
            "study": lambda: studies.study_jobs(run_dir, only, seeds)}[phase]()
    kinds = {}
    for ph, name, _ in jobs:
        kinds.setdefault(kind_of(ph, name), []).append((ph, name))
    return kinds


def budget(run_dir, phase, methods, only, n_jobs, seeds=None):
    """The table ``budget`` prints: per phase and kind, runs left, minutes per run (and whence), core-hours,
    wall hours at ``n_jobs`` processes; then the totals. ``seeds``: the final and study runs of these
    seeds only, as ``run --seeds`` runs them."""
    if n_jobs < 1:
        raise ValueError(f"--jobs {n_jobs}: at least one process")
    phases = ("search", "final", "remedy", "study") if phase in ("all", "backbone") else (phase,)
    finished = finished_minutes(run_dir)
    lines = [f"runs left in {run_dir} (wall hours at --jobs {n_jobs}):", "",
             "| phase | runs left | of | minutes per run | core-hours | wall hours |", "|---|---|---|---|---|---|"]
    total_core = total_wall = 0.0
    for ph in phases:
        for kind, jobs in phase_jobs(run_dir, ph, methods, only, seeds).items():
            left = [j for j in jobs if not X.is_done(run_dir, *j)]
            minutes, whence = minutes_per_run(kind, finished)
            core = len(left) * minutes / 60
            wall = max(core / n_jobs, minutes / 60) if left else 0.0
            total_core, total_wall = total_core + core, total_wall + wall
            lines.append(f"| {kind} | {len(left)} | {len(jobs)} | {minutes:.1f} ({whence}) | {core:.1f} | "
                         f"{wall:.1f} |")
    lines += ["", f"total: {total_core:.1f} core-hours, {total_wall:.1f} wall hours at --jobs {n_jobs} "
                  f"(the phases one after the other)"]
    if "remedy" in phases and "tofe" in methods and (seeds is None or set(seeds) - {0}):
        extra = len(X.REMEDIES) * len(X.BUDGETS) * (len(X.SEEDS) - 1)
        lines.append(f"not counted: up to {extra} runs of the remedies kept on val (seeds 1, 2), "
                     f"{math.ceil(extra * minutes_per_run('remedy', finished)[0] / 60)} core-hours at most")
    if "study" in phases:
        lines += studies.left_out(only)
    return "\n".join(lines)
