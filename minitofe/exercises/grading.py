"""Grade a class: every student's exercise cells, run in a fresh kernel against the package's checks.

    rows = grade_folder("submissions/", timeout=60)       # {student: {exercise: Verdict}}
    write_csv(rows, "grades.csv")                          # one row per student, one column per exercise

A submission folder holds one subfolder per student with their notebooks (any names, any depth; nbgrader's
``submitted/<student>/<assignment>/`` works as it is), or notebooks directly, one student each (named by
the file). For each exercise of ``EXERCISES`` the grader finds the student's cell: the one whose nbgrader
``grade_id`` is the exercise's name, else the cells that define its functions (so renamed notebooks,
reordered or duplicated cells do not matter). It never runs the student's check cells, which a student
may have edited: in one kernel per student, started in an empty temporary folder (files the code writes
land there and are deleted), it runs ``SETUP``, then for each exercise the student's cell and the
package's check, which prints its verdict behind a random marker. Each cell has ``timeout`` seconds. A
cell that raises, never ends, calls ``sys.exit`` or kills the kernel fails that exercise with what
happened, the kernel is restarted when needed (with the student's earlier cells run again), and grading
goes on. Needs ``nbformat``, ``nbclient`` and ``ipykernel`` (the ``notebooks`` extra).
"""
import ast
import csv
import json
import pathlib
import re
import secrets
import subprocess
import tempfile

from . import EXERCISES, SETUP
from .verdict import Verdict

MESSAGE_LIMIT = 400          # characters of a FAIL message kept in a CSV cell
SETUP_TIMEOUT = 120          # seconds for the imports in a fresh kernel


def student_notebooks(folder):
    """{student: [notebook paths]} for a submission folder, sorted by student."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of submissions")
    found = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            paths = sorted(p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            found[entry.name] = paths
        elif entry.suffix == ".ipynb":
            found[entry.stem] = [entry]
    if not found:
        raise ValueError(f"{folder}: no student folders or notebooks in it")
    return found


def _defines(source, name):
    """Does the cell source define a function ``name``? (A cell with a syntax error is read by its text.)"""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", source, re.MULTILINE) is not None
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def exercise_sources(paths):
    """{exercise name: the student's source for it} and a list of notes (unreadable notebooks)."""
    import nbformat
    cells, notes = [], []
    for path in paths:
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception as err:  # not JSON, not a notebook: graded as if the notebook were absent
            notes.append(f"{path.name} could not be read ({type(err).__name__})")
            continue
        cells += [c for c in nb.cells if c.get("cell_type") == "code"]
    sources = {}
    for exercise in EXERCISES:
        tagged = [c.source for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                  == exercise.name]
        if tagged:
            sources[exercise.name] = tagged[-1]
            continue
        chosen = []
        for function in exercise.functions:
            defining = [c.source for c in cells if _defines(c.source, function)]
            if defining and defining[-1] not in chosen:
                chosen.append(defining[-1])
        if chosen:
            sources[exercise.name] = "\n\n".join(chosen)
    return sources, notes


def report(name, namespace, marker):
    """Run exercise ``name``'s check on the functions in ``namespace`` and print the verdict as JSON behind
    ``marker`` (what the grader's check cell calls in the student's kernel)."""
    exercise = next(e for e in EXERCISES if e.name == name)
    missing = [f for f in exercise.functions if not callable(namespace.get(f))]
    if missing:
        verdict = Verdict(name, False, f"your exercise cell does not define {', '.join(missing)}")
    else:
        verdict = exercise.check(*(namespace[f] for f in exercise.functions))
    print(marker + json.dumps({"passed": verdict.passed, "message": verdict.message}))


def _kernel(timeout, workdir):
    import nbclient
    import nbformat
    client = nbclient.NotebookClient(nbformat.v4.new_notebook(), timeout=timeout, kernel_name="python3",
                                     allow_errors=True, shutdown_kernel="immediate",
                                     resources={"metadata": {"path": workdir}})
    return client


def _run(client, source):
    """Execute ``source`` -> (status, outputs): status "ok", "error", "timeout" or "dead"."""
    import nbclient.exceptions as errors
    import nbformat
    cell = nbformat.v4.new_code_cell(source)
    client.nb.cells.append(cell)
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
    except errors.CellTimeoutError:
        return "timeout", cell.outputs
    except errors.DeadKernelError:
        return "dead", cell.outputs
    failed = any(o.get("output_type") == "error" for o in cell.outputs)
    return ("error" if failed else "ok"), cell.outputs


def _error(outputs):
    err = next(o for o in outputs if o.get("output_type") == "error")
    return f"{err.get('ename')}: {err.get('evalue')}"


def _verdict_from(outputs, marker, name):
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    lines = [line[len(marker):] for line in text.splitlines() if line.startswith(marker)]
    if lines:
        found = json.loads(lines[-1])
        return Verdict(name, found["passed"], found["message"])
    if any(o.get("output_type") == "error" for o in outputs):
        return Verdict(name, False, f"the check stopped: {_error(outputs)}")
    return Verdict(name, False, "the check printed no verdict")


FAILURES = {
    ("cell", "timeout"): "your exercise cell ran longer than {t} s (an endless loop?)",
    ("cell", "dead"): "the kernel died running your exercise cell (exit(), os._exit or a crash)",
    ("check", "timeout"): "your function ran longer than {t} s when the check called it (an endless loop?)",
    ("check", "dead"): "the kernel died while the check ran your function (exit(), os._exit or a crash)",
}


def _grade_one(client, exercise, source, marker, timeout):
    """-> (Verdict, the kernel must be restarted, the cell ran cleanly)."""
    if source is None:
        return Verdict(exercise.name, False, f"no exercise cell found (deleted?): expected the cell that "
                                             f"defines {', '.join(exercise.functions)}"), False, False
    status, outputs = _run(client, source)
    if status in ("timeout", "dead"):
        return Verdict(exercise.name, False, FAILURES["cell", status].format(t=f"{timeout:g}")), True, False
    if status == "error":
        return Verdict(exercise.name, False, f"your exercise cell raised {_error(outputs)}"), False, False
    check = f"__import__('minitofe.exercises.grading', fromlist=['report']).report({exercise.name!r}, " \
            f"globals(), {marker!r})"
    status, outputs = _run(client, check)
    if status in ("timeout", "dead"):
        return Verdict(exercise.name, False, FAILURES["check", status].format(t=f"{timeout:g}")), True, True
    verdict = _verdict_from(outputs, marker, exercise.name)
    if not verdict.passed and "NameError" in verdict.message:
        verdict = Verdict(exercise.name, False, verdict.message + " (only the exercise cells are graded: "
                                                                  "define helpers inside them)")
    return verdict, False, True


def grade_student(paths, timeout=60):
    """{exercise name: Verdict} for one student's notebooks."""
    sources, notes = exercise_sources(paths)
    marker = f"@@minitofe-verdict-{secrets.token_hex(8)}@@ "
    results, todo, ran = {}, list(EXERCISES), []
    with tempfile.TemporaryDirectory(prefix="minitofe-grade-") as workdir:
        while todo:
            client = _kernel(timeout, workdir)
            with client.setup_kernel(cwd=workdir, stderr=subprocess.DEVNULL):   # the kernel's own warnings
                client.timeout = max(timeout, SETUP_TIMEOUT)      # a cold start imports NumPy, minitofe
                status, outputs = _run(client, SETUP)
                client.timeout = timeout
                if status != "ok":
                    raise OSError(f"grading setup failed in a fresh kernel (is minitofe importable there?): "
                                       f"{_error(outputs) if status == 'error' else status}")
                for source in ran:                    # after a restart: the student's earlier cells again
                    _run(client, source)
                while todo:
                    exercise = todo.pop(0)
                    source = sources.get(exercise.name)
                    verdict, restart, clean = _grade_one(client, exercise, source, marker, timeout)
                    if notes and source is None:
                        verdict = Verdict(verdict.exercise, False, f"{verdict.message}; {'; '.join(notes)}")
                    results[exercise.name] = verdict
                    if clean:
                        ran.append(source)
                    if restart:
                        break
    return results


def grade_folder(folder, timeout=60, progress=None):
    """{student: {exercise name: Verdict}} for a submission folder; ``progress(student, results)`` is
    called after each student."""
    rows = {}
    for student, paths in student_notebooks(folder).items():
        rows[student] = grade_student(paths, timeout)
        if progress is not None:
            progress(student, rows[student])
    return rows


def cell_text(verdict):
    """What a CSV cell says: PASS, or FAIL and the first message (shortened)."""
    if verdict.passed:
        return "PASS"
    message = " ".join(verdict.message.split())
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT - 3] + "..."
    return f"FAIL: {message}"


def points(results):
    return sum(e.points for e in EXERCISES if results[e.name].passed)


def write_csv(rows, path):
    """One row per student: the student, one column per exercise, the points and the maximum."""
    total = sum(e.points for e in EXERCISES)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student"] + [e.name for e in EXERCISES] + ["points", "max_points"])
        for student, results in rows.items():
            writer.writerow([student] + [cell_text(results[e.name]) for e in EXERCISES]
                            + [points(results), total])
