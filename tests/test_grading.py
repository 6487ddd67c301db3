"""Grading a class with ``minitofe exercises grade``: nine synthetic submissions (all correct, all stubs,
mixed, a syntax error, endless loops, deleted and reordered cells, notebooks renamed and stripped of
nbgrader metadata, code that writes files, calls sys.exit or kills its kernel, an unreadable notebook)
give the expected CSV, cell by cell.

The submissions are made from the teaching notebooks (the written-out solutions) and the student
notebooks of ``scripts/make_student_notebooks.py``, edited cell by cell. One grading run of all of them,
shared by the tests (about a minute on two busy cores: a fresh kernel per student, two endless loops
cut at the timeout).
"""
import copy
import csv
import importlib.util
import pathlib

import pytest

from minitofe.cli import main
from minitofe.exercises import EXERCISES

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)
TIMEOUT = 6          # seconds per cell; each endless loop costs this much
NAMES = [e.name for e in EXERCISES]
TEACHING = {p.stem: nbformat.read(p, as_version=4) for p in sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb"))}


def _student_version():
    return {stem: make_student.student_notebook(nb, stem)[0] for stem, nb in TEACHING.items()}


def _cell(notebooks, name):
    """The solution cell of exercise ``name`` (by its nbgrader grade_id) in a set of notebooks."""
    for nb in notebooks.values():
        for cell in nb.cells:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == name:
                return cell
    raise KeyError(name)


def _with(base, **sources):
    """A copy of ``base`` with exercise cells replaced: name=source (str) or name=None (cell deleted)."""
    notebooks = copy.deepcopy(base)
    for name, source in sources.items():
        cell = _cell(notebooks, name)
        if source is None:
            for nb in notebooks.values():
                nb.cells = [c for c in nb.cells if c is not cell]
        else:
            cell.source = source
    return notebooks


def _solution(name):
    return _cell(TEACHING, name).source


LOOP_IN_FUNCTION = "def straight_through_mask(logits, noise, tau):\n    while True:\n        pass\n"
LOOP_AT_TOP = "import itertools\nfor _ in itertools.count():\n    pass\n"
SYNTAX_ERROR = "def masked_softmax(s, keep)\n    return s\n"
WRITES_FILES = _solution("masked_softmax") + "\nopen('grades.csv', 'w').write('hacked')\nopen('notes.txt', 'w').write('x')\n"
EXIT_AT_TOP = "import sys\nsys.exit(3)\n"
EXIT_IN_FUNCTION = "import sys\n\ndef approx_loss(approx_tokens, teacher_tokens, frozen):\n    sys.exit(0)\n"
KILLS_KERNEL = "import os\nos._exit(1)\n"
CALLS_PACKAGE = ("def layernorm_grad(dy, x, w, eps=LN_EPS):\n"
                 "    _, cache = layernorm_forward(x, w, np.zeros_like(w), eps)\n"
                 "    return layernorm_backward(dy, cache)\n")
FLOORS = _solution("decide_tokens").replace("int(round(ratio * keep_prob.shape[1]))", "int(ratio * keep_prob.shape[1])")


def submissions(folder):
    """Write the nine submissions; return {student: {exercise: "PASS" or a phrase its FAIL must hold}}."""
    stubs, correct = _student_version(), copy.deepcopy(TEACHING)
    cases = {}

    def add(student, notebooks, expected, rename=None):
        (folder / student).mkdir(parents=True)
        for stem, nb in notebooks.items():
            nbformat.write(nb, folder / student / f"{rename or stem}.ipynb")
        cases[student] = expected

    add("all_correct", correct, {n: "PASS" for n in NAMES})
    add("all_stubs", stubs, {n: "not written yet. Hint:" for n in NAMES})
    mixed = _with(stubs, layernorm_grad=CALLS_PACKAGE, masked_softmax=_solution("masked_softmax"),
                  decide_tokens=FLOORS, stage_forward=_solution("stage_forward"))
    add("mixed", mixed, {**{n: "not written yet" for n in NAMES}, "layernorm_grad": "write it yourself",
                         "masked_softmax": "PASS", "decide_tokens": "K = int(ratio * P) floors",
                         "stage_forward": "PASS"})
    add("syntax_error", _with(correct, masked_softmax=SYNTAX_ERROR),
        {**{n: "PASS" for n in NAMES}, "masked_softmax": "your exercise cell raised SyntaxError"})
    add("endless_loops", _with(correct, straight_through_mask=LOOP_IN_FUNCTION, selector_logits=LOOP_AT_TOP),
        {**{n: "PASS" for n in NAMES},
         "straight_through_mask": f"your function ran longer than {TIMEOUT} s when the check called it",
         "selector_logits": f"your exercise cell ran longer than {TIMEOUT} s"})
    reordered = _with(correct, layernorm_grad=None, reused_tokens=None)
    reordered["03_freeze_and_reuse"].cells.reverse()
    add("deleted_and_reordered", reordered, {**{n: "PASS" for n in NAMES},
                                             "layernorm_grad": "no exercise cell found (deleted?)",
                                             "reused_tokens": "no exercise cell found (deleted?)"})
    bare = copy.deepcopy(correct)                   # no nbgrader metadata, one notebook, another name
    merged = bare["01_backprop_by_hand"]
    merged.cells = [c for nb in bare.values() for c in nb.cells]
    for cell in merged.cells:
        cell.metadata.pop("nbgrader", None)
    add("renamed_without_metadata", {"merged": merged}, {n: "PASS" for n in NAMES}, rename="my_homework")
    add("writes_files_and_exits", _with(correct, masked_softmax=WRITES_FILES, layernorm_grad=EXIT_AT_TOP,
                                        approx_loss=EXIT_IN_FUNCTION, distill_loss=KILLS_KERNEL),
        {**{n: "PASS" for n in NAMES}, "layernorm_grad": "your exercise cell raised SystemExit: 3",
         "approx_loss": "approx_loss called sys.exit(0)",
         "distill_loss": "the kernel died running your exercise cell"})
    add("unreadable_notebook", {k: v for k, v in correct.items() if k != "05_visualising_tokens"},
        {**{n: "PASS" for n in NAMES}, "decide_tokens": "broken.ipynb could not be read"})
    (folder / "unreadable_notebook" / "broken.ipynb").write_text("{ this is not json")
    return cases


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    expected = submissions(folder)
    out = folder.parent / "grades.csv"
    assert main(["exercises", "grade", str(folder), "--out", str(out), "--timeout", str(TIMEOUT)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    return folder, expected, rows


def test_grades_csv_is_the_expected_one_cell_by_cell(graded):
    folder, expected, rows = graded
    header, body = rows[0], rows[1:]
    assert header == ["student"] + NAMES + ["points", "max_points"]
    assert [r[0] for r in body] == sorted(expected), "one row per student, in name order"
    points = {e.name: e.points for e in EXERCISES}
    for row in body:
        student, cells = row[0], dict(zip(NAMES, row[1:1 + len(NAMES)]))
        for name in NAMES:
            want, got = expected[student][name], cells[name]
            if want == "PASS":
                assert got == "PASS", f"{student} / {name}: {got}"
            else:
                assert got.startswith("FAIL: ") and want in got and "Traceback" not in got, \
                    f"{student} / {name}: expected a FAIL with {want!r}, got {got!r}"
        assert int(row[-2]) == sum(points[n] for n in NAMES if cells[n] == "PASS")
        assert int(row[-1]) == sum(points.values())


def test_files_the_submissions_write_stay_out_of_the_submissions_and_the_grades(graded):
    folder, _, rows = graded
    assert not list(folder.rglob("notes.txt")) and not (folder / "grades.csv").exists()
    assert all("hacked" not in cell for row in rows for cell in row)


def test_grading_refuses_a_folder_that_is_not_one(tmp_path, capsys):
    assert main(["exercises", "grade", str(tmp_path / "missing"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "not a folder of submissions" in capsys.readouterr().err
    assert main(["exercises", "grade", str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 2


def test_exercises_list_names_every_exercise(capsys):
    assert main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES) and f"{len(NAMES)} exercises" in out
