"""The student handout of ``scripts/make_student_notebooks.py``: no answer leaks into it, it holds what a
student needs, nbgrader accepts the teaching notebooks' metadata, and (``-m slow``) the folder, copied
where no clone is, installs into a fresh venv and runs every notebook with its stubs failing politely.

A leak is a solution's key expression anywhere in a student cell: every value a solution assigns or
returns (of at least ``KEY_SIZE`` sub-expressions) is compared, names anonymised and ``axis=`` read as a
positional argument, with every sub-expression of every code cell of the student notebooks. The old
notebook 01, whose cell after the LayerNorm exercise wrote the whole ``dx`` formula out, fails it.
"""
import ast
import copy
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from minitofe.exercises import EXERCISES

nbformat = pytest.importorskip("nbformat")
ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb"))
_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)
KEY_SIZE = 8
# The numerically safe softmax and its backward, taught in notebook 01 (sections 2 and 3) as the ground
# every later exercise builds on: in a solution they are scaffolding, not its key lines.
TAUGHT = ("np.exp(z - z.max(axis=-1, keepdims=True))", "e / e.sum(axis=-1, keepdims=True)",
          "z - z.max(axis=-1, keepdims=True)", "dA - (A * dA).sum(axis=-1, keepdims=True)",
          "x.mean(axis=-1, keepdims=True)")
TEACHER_TEXT = ("minitofe's own answer", "BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "For the teacher")


class _Anonymous(ast.NodeTransformer):
    """Every name becomes ``_``; ``f(x, axis=1)`` becomes ``f(x, 1)``."""
    def visit_Name(self, node):
        return ast.copy_location(ast.Name(id="_", ctx=ast.Load()), node)

    def visit_Call(self, node):
        self.generic_visit(node)
        node.args += [k.value for k in node.keywords if k.arg == "axis"]
        node.keywords = [k for k in node.keywords if k.arg != "axis"]
        return node


def _shape(node):
    return ast.dump(_Anonymous().visit(copy.deepcopy(node)), annotate_fields=False)


def _size(node):
    """The number of expressions in ``node`` (names, constants, operations, calls)."""
    return sum(isinstance(n, ast.expr) for n in ast.walk(node))


def solution_keys():
    """{anonymised expression: {(exercise, its text)}} for the values every solution assigns or returns."""
    taught = {_shape(ast.parse(text, mode="eval").body) for text in TAUGHT}
    keys = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            name = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if cell.cell_type != "code" or make_student.BEGIN not in cell.source:
                continue
            for part in cell.source.split(make_student.BEGIN)[1:]:
                body = textwrap.dedent(part.split(make_student.END)[0])
                tree = ast.parse("def solution():\n" + textwrap.indent(body, "    "))
                for node in ast.walk(tree):
                    values = [node.value] if isinstance(node, (ast.Assign, ast.AugAssign, ast.Return)) else []
                    values += values[0].elts if values and isinstance(values[0], ast.Tuple) else []
                    for value in values:
                        if value is not None and _size(value) >= KEY_SIZE and _shape(value) not in taught:
                            keys.setdefault(_shape(value), set()).add((name, ast.unparse(value)))
    return keys


KEYS = solution_keys()


def leaks(source):
    """[(exercise, key expression)] that a cell's source contains."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.expr) and _size(node) >= KEY_SIZE and _shape(node) in KEYS:
            found += sorted(KEYS[_shape(node)])
    return found


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout")
    assert make_student.main(["--out", str(out), "--no-wheel"]) == 0
    return out


def test_every_exercise_has_key_lines_and_the_old_leak_is_caught():
    assert {name for found in KEYS.values() for name, _ in found} == {e.name for e in EXERCISES}
    old_cell = ('dx1_ln = rstd2 * (gg - gg.mean(-1, keepdims=True) - xhat2 * (gg * xhat2).mean(-1, '
                'keepdims=True))')
    assert ("layernorm_grad", "rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, "
                              "keepdims=True))") in leaks(old_cell)
    assert leaks("by_hand = y_soft * (dm - (y_soft * dm).sum(-1, keepdims=True)) / tau")
    assert not leaks("ds = A * (dA - (A * dA).sum(-1, keepdims=True))")      # the plain softmax's: taught
    assert not leaks("e = np.exp(s - s.max(-1, keepdims=True))")


def test_no_student_cell_holds_a_solution_or_teacher_text(handout):
    for path in sorted(handout.glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            assert not any(text in cell.source for text in TEACHER_TEXT), (path.name, index)
            assert make_student.TEACHER_TAG not in cell.get("metadata", {}).get("tags", [])
            if cell.cell_type == "code":
                assert not leaks(cell.source), (path.name, index, leaks(cell.source))


def test_student_notebooks_have_stubs_checks_and_metadata_and_nothing_else_changed(handout):
    written = sorted(p.stem for p in handout.glob("*.ipynb"))
    assert written == sorted({e.notebook for e in EXERCISES})
    for stem in written:
        teaching = [c for c in nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells
                    if not make_student.is_teacher_only(c)]
        student = nbformat.read(handout / f"{stem}.ipynb", as_version=4).cells
        assert len(student) == len(teaching) and make_student.STUDENT_NOTE in student[0].source
        for t, s in zip(teaching[1:], student[1:]):
            assert s.metadata == t.metadata
            if t.cell_type == "code" and make_student.BEGIN in t.source:
                assert "### " not in s.source and "raise NotImplementedError(" in s.source
            elif make_student.BEGIN_HIDDEN in t.source:
                assert s.source == make_student.strip_hidden_tests(t.source) and s.source.endswith("verdict")
            else:
                assert s.source == t.source


def test_handout_has_a_readme_and_requirements_for_students(handout):
    readme = (handout / "README.md").read_text()
    assert "pip install -r requirements.txt" in readme and "jupyter lab" in readme
    assert "PASS" in readme and "FAIL" in readme and "write it yourself" in readme
    assert all(f"`{e.notebook}` | {e.minutes} |" in readme for e in EXERCISES)
    assert (handout / "requirements.txt").read_text().strip() == "minitofe[notebooks]"   # --no-wheel


def test_nbgrader_source_keeps_solutions_and_hidden_tests_but_not_teacher_cells(tmp_path):
    assert make_student.main(["--nbgrader-source", str(tmp_path), str(NOTEBOOKS[0])]) == 0
    cells = nbformat.read(tmp_path / NOTEBOOKS[0].name, as_version=4).cells
    assert not any(make_student.is_teacher_only(c) for c in cells)
    assert sum(make_student.BEGIN in c.source for c in cells) == 3
    assert sum(make_student.BEGIN_HIDDEN in c.source for c in cells) == 3
    assert not (tmp_path / "README.md").exists()


def test_nbgrader_generate_assignment_and_autograde(tmp_path):
    """nbgrader 0.9.x, when installed: release version, autograde of a correct and a stub submission."""
    pytest.importorskip("nbgrader")
    nbgrader = [sys.executable, "-m", "nbgrader"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ["PATH"]]),   # alembic
               MPLBACKEND="Agg", OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    notebook = ROOT / "notebooks" / "05_visualising_tokens.ipynb"
    source = tmp_path / "source" / "ps1"
    assert make_student.main(["--nbgrader-source", str(source), str(notebook)]) == 0
    (tmp_path / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "tofe"\n')
    run = lambda *args: subprocess.run(nbgrader + list(args), cwd=tmp_path, env=env, capture_output=True,
                                       text=True, timeout=600)
    done = run("generate_assignment", "ps1", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    release = tmp_path / "release" / "ps1" / notebook.name
    text = release.read_text()
    assert "HIDDEN TESTS" not in text and "YOUR CODE HERE" in text and "np.put_along_axis(keep" not in text
    for student, version in (("good", source / notebook.name), ("stub", release)):
        (tmp_path / "submitted" / student / "ps1").mkdir(parents=True)
        shutil.copy(version, tmp_path / "submitted" / student / "ps1" / notebook.name)
    done = run("autograde", "ps1", "--create", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert run("export").returncode == 0
    scores = {line.split(",")[3]: line.split(",")[9] for line in
              (tmp_path / "grades.csv").read_text().splitlines()[1:]}
    points = next(e.points for e in EXERCISES if e.notebook == notebook.stem)
    assert scores == {"good": f"{float(points)}", "stub": "0.0"}, scores


@pytest.mark.slow
def test_handout_installs_in_a_fresh_venv_and_every_notebook_runs(tmp_path):
    """As a student: the folder copied where no clone is, a fresh venv, the README's commands (pip gets
    the wheel's dependencies from the package index), every notebook top to bottom."""
    built = tmp_path / "built"
    assert make_student.main(["--out", str(built)]) == 0
    student = tmp_path / "elsewhere" / "handout"
    shutil.copytree(built, student)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    times = {}

    def step(name, *command):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=student, env=env, capture_output=True, text=True, timeout=1800)
        times[name] = time.perf_counter() - start
        assert done.returncode == 0, f"{name}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        return done.stdout
    step("venv", sys.executable, "-m", "venv", ".venv")
    python = str(student / ".venv" / "bin" / "python")
    step("pip install", python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt")
    where = step("import", python, "-c", "import minitofe, pathlib; print(pathlib.Path(minitofe.__file__))")
    assert str(student / ".venv") in where and str(ROOT) not in where
    runner = textwrap.dedent("""
        import json, sys, nbclient, nbformat
        nb = nbformat.read(sys.argv[1], as_version=4)
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600).execute()
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
        checks = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
        shown = [o["data"]["text/plain"] for c in checks for o in c.outputs if o["output_type"] == "execute_result"]
        print(json.dumps({"errors": len(errors), "checks": len(checks), "shown": shown}))
    """)
    for path in sorted(student.glob("0*.ipynb")):
        result = json.loads(step(path.stem, python, "-c", runner, str(path)).splitlines()[-1])
        assert result["errors"] == 0 and len(result["shown"]) == result["checks"] > 0, (path.name, result)
        assert all(s.startswith("FAIL ") and "not written yet. Hint:" in s for s in result["shown"]), result
    print("handout timings (s):", {k: round(v, 1) for k, v in times.items()})
