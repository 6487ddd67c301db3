"""The notebooks' self-checking exercises: for each of them, the check cell FAILS on the student's stub,
PASSES on the written-out solution of the teaching notebook, FAILS with "write it yourself" on an answer
that calls the package function it replaces, and FAILS with a message naming the cause on typical wrong
answers (``exercise_answers.py``), so a check that cannot fail, or that blames the wrong cause, is caught.

The cells are executed directly, as the notebook would (its import cell, the exercise cell, the check
cell of the student version), not whole notebooks: that keeps this file to seconds. The student cells
are made by the same ``scripts/make_student_notebooks.py`` that educators run; ``test_handout.py``
builds and installs the whole handout, ``test_grading.py`` grades a class.
"""
import ast
import importlib.util
import pathlib

import numpy as np
import pytest

from exercise_answers import CALLS_PACKAGE, WRONG
from minitofe.exercises import EXERCISES
from minitofe.exercises.calls import call, exercise
from minitofe.exercises.verdict import Wrong, named_mistake

nbformat = pytest.importorskip("nbformat")
ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)
NAMES = [e.name for e in EXERCISES]
BY_NAME = {e.name: e for e in EXERCISES}


def exercise_cells():
    """{exercise: (notebook, its import cell, the solution cell, the check cell)} in notebook order, found
    by the cells' nbgrader metadata."""
    found = {}
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        for i, cell in enumerate(code):
            grader = cell.metadata.get("nbgrader", {})
            if grader.get("solution"):
                found[grader["grade_id"]] = (path.stem, code[0].source, cell.source, code[i + 1])
    return found


CELLS = exercise_cells()


def run_check(name, exercise_source):
    """Execute the notebook's import cell, an exercise cell, then the student version of the check cell
    -> the Verdict it shows."""
    notebook, imports, _, check = CELLS[name]
    namespace = {}
    exec(compile(imports, f"<{notebook} import cell>", "exec"), namespace)
    exec(compile(exercise_source, "<exercise cell>", "exec"), namespace)
    exec(compile(make_student.strip_hidden_tests(check.source), "<check cell>", "exec"), namespace)
    return namespace["verdict"]


def test_sixteen_exercises_each_in_the_registry_once_with_its_metadata():
    assert len(CELLS) >= 16
    assert list(CELLS) == NAMES, "EXERCISES must list the notebooks' exercises, in notebook order"
    assert [CELLS[name][0] for name in NAMES] == [e.notebook for e in EXERCISES]
    assert set(WRONG) == set(CALLS_PACKAGE) == set(NAMES)
    for name in NAMES:
        check = CELLS[name][3]
        grader = check.metadata["nbgrader"]
        assert grader == {"grade": True, "grade_id": f"check_{name}", "locked": True,
                          "points": BY_NAME[name].points, "schema_version": 3, "solution": False,
                          "task": False}, name
        assert check.source.startswith(f"verdict = exercises.check_{name}(")
        assert make_student.BEGIN_HIDDEN in check.source and "assert verdict.passed" in check.source


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_the_stub(name):
    student_cell, count = make_student.stub_solutions(CELLS[name][2])
    assert count >= 1 and "raise NotImplementedError(" in student_cell and "Hint: " in student_cell
    verdict = run_check(name, student_cell)
    assert not verdict.passed and verdict.message.startswith("not written yet. Hint: "), verdict


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_on_the_written_out_solution(name):
    verdict = run_check(name, CELLS[name][2])
    assert verdict.passed, verdict
    assert str(verdict).startswith("PASS ")


@pytest.mark.parametrize("name", NAMES)
def test_solution_is_numpy_written_out_not_a_call_of_what_it_replaces(name):
    """The solution's body is 3-25 lines and calls none of the package functions the check forbids."""
    body = CELLS[name][2].split(make_student.BEGIN)[1:]
    lines = [line for part in body for line in part.split(make_student.END)[0].splitlines() if line.strip()]
    assert 3 <= len(lines) <= 25 * len(body), (name, len(lines))
    replaced = {r.rsplit(".", 1)[1] for r in BY_NAME[name].check.replaces}
    called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
              for n in ast.walk(ast.parse(CELLS[name][2])) if isinstance(n, ast.Call)}
    assert not replaced & called, (name, replaced & called)


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_when_the_answer_calls_the_package(name):
    verdict = run_check(name, CALLS_PACKAGE[name])
    assert not verdict.passed, verdict
    assert verdict.message.startswith("write it yourself: ") and "minitofe." in verdict.message, verdict


@pytest.mark.parametrize("name, index", [(n, i) for n in NAMES for i in range(len(WRONG[n]))])
def test_check_fails_on_a_typical_wrong_answer_and_names_its_cause(name, index):
    assert len(WRONG[name]) >= 2
    source, phrase = WRONG[name][index]
    verdict = run_check(name, source)
    assert not verdict.passed, verdict
    assert phrase in verdict.message and "Traceback" not in verdict.message, verdict.message


def test_floor_versus_round_is_told_apart_where_the_shipped_ratio_puts_it():
    """The issue's case: K = int(ratio * P) passes a check that tries only whole ratio * P."""
    floors = WRONG["decide_tokens"][1][0]
    verdict = run_check("decide_tokens", floors)
    assert "0.607" not in verdict.message and "29.74 gives 29" in verdict.message, verdict


def test_softmax_then_mask_is_not_blamed_on_the_diagonal():
    verdict = run_check("masked_softmax", WRONG["masked_softmax"][0][0])
    assert "without renormalising" in verdict.message and "diagonal" not in verdict.message, verdict


def test_a_cause_is_named_only_when_proven():
    want = np.array([1.0, 2.0, 3.0])
    assert named_mistake(want * 2, want, [("doubled", want * 2)]) == "doubled"
    assert named_mistake(want * 2 + 1e-3, want, [("doubled", want * 2)]) is None      # close is not equal
    assert named_mistake(want, want + 1, [("right anyway", want + 1)]) is None          # not wrong here
    assert named_mistake(want * 2, want, [("breaks", lambda: 1 / 0), ("doubled", want * 2)]) == "doubled"


def test_write_it_yourself_catches_calls_at_any_depth_and_under_any_name():
    from minitofe.tofe.scoring import topk_mask

    @exercise("demo", replaces=(topk_mask, "minitofe.tofe.inference.decide"))
    def check(fn):
        return call(fn, np.ones((1, 3)))

    alias = topk_mask
    assert "write it yourself" in check(lambda p: alias(p, 1)).message
    assert "write it yourself" in check(lambda p: (lambda q: topk_mask(q, 2))(p)).message
    assert check(lambda p: p > 0).passed
    sneaky = lambda p: (__import__("sys").setprofile(None), topk_mask(p, 1))[1]
    assert "switched off the check's watch" in check(sneaky).message
    assert "changed its input" in check(lambda p: p.__isub__(1)).message


def test_sys_exit_inside_the_function_is_a_fail_not_an_exit():
    @exercise("demo")
    def check(fn):
        return call(fn)
    verdict = check(lambda: exit(2))
    assert not verdict.passed and "called sys.exit(2)" in verdict.message
    with pytest.raises(Wrong, match="expected your function"):
        call(None)


def test_readme_and_notebooks_give_each_exercise_its_minutes():
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for e in EXERCISES:
        functions = ", ".join(f"`{f}`" for f in e.functions)
        assert f"| {functions} | `{e.notebook}` | {e.minutes} | {e.points} |" in readme, e.name
        cells = nbformat.read(NOTEBOOK_DIR / f"{e.notebook}.ipynb", as_version=4).cells
        markdown = [c.source for c in cells if c.cell_type == "markdown" and "**Exercise" in c.source
                    and f"`{e.functions[0]}`" in c.source]
        assert markdown and f"(about {e.minutes} min)" in markdown[0], e.name


@pytest.mark.parametrize("source", [
    "def f():\n    ### BEGIN SOLUTION\n    return 1\n",
    "def f():\n    ### HINT: h\n    return 1\n",
    "def f():\n    return 1\n    ### END SOLUTION\n",
    "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n",
])
def test_unbalanced_markers_are_refused(source):
    with pytest.raises(ValueError, match="line|without"):
        make_student.stub_solutions(source)


@pytest.mark.parametrize("source", ["x = 1\n### BEGIN HIDDEN TESTS\nassert x\n",
                                    "x = 1\n### END HIDDEN TESTS\n",
                                    "### BEGIN HIDDEN TESTS\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n"])
def test_unbalanced_hidden_tests_are_refused(source):
    with pytest.raises(ValueError, match="HIDDEN"):
        make_student.strip_hidden_tests(source)
