"""Make the student handout from the teaching notebooks: one folder a student can install and run alone.

    python scripts/make_student_notebooks.py                      # -> build/handout/
    python scripts/make_student_notebooks.py --out DIR            # somewhere else
    python scripts/make_student_notebooks.py --no-wheel           # the notebooks and the README only
    python scripts/make_student_notebooks.py notebooks/02_*.ipynb  # only these notebooks
    python scripts/make_student_notebooks.py --nbgrader-source DIR  # nbgrader's source version instead

The handout holds the student notebooks, ``wheels/minitofe-<version>-py3-none-any.whl`` (built from this
checkout with ``pip wheel``; it carries the shipped weights), ``requirements.txt`` (that wheel with the
``notebooks`` extra) and a ``README.md`` for students: one command into a fresh venv, then Jupyter.

The teaching notebooks are the one source. In them an exercise is a function whose body is marked with
nbgrader's solution markers, optionally preceded by hint lines; the check cell after it may hold nbgrader's
hidden tests; and cells meant for the teacher carry the cell tag ``teacher-only``:

        ### HINT: np.argmax returns the first maximum
        ### BEGIN SOLUTION
        ...the lines a student should write...
        ### END SOLUTION

The student version replaces everything from the hint lines to ``### END SOLUTION`` with
``raise NotImplementedError("Hint: ...")`` at the same indentation (one string per hint line), removes
the hidden tests (``### BEGIN HIDDEN TESTS`` .. ``### END HIDDEN TESTS``) and the ``teacher-only`` cells,
adds a line under the title saying what the student version is, and has no outputs. Everything else,
the nbgrader metadata included, is kept as it is. ``--nbgrader-source`` writes the teaching notebooks less
their ``teacher-only`` cells (solutions and hidden tests kept), for ``nbgrader generate_assignment``,
which makes the student version itself. Only notebooks with at least one exercise are written. Needs
``nbformat``; the wheel needs ``pip``.
"""
import argparse
import copy
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
HINT, BEGIN, END = "### HINT:", "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
TEACHER_TAG = "teacher-only"
STUDENT_NOTE = ("*Student version: each exercise below raises `NotImplementedError` until you write it; "
                "the cell after it checks your function and says PASS, or what is wrong.*")
STUDENT_README = """\
# ToFe exercises: the student handout

Notebooks that teach ToFe (token freezing and reusing for vision transformers) on minitofe, a NumPy
implementation, with {count} exercises that check themselves. This folder is all you need: the package
is in `wheels/`, with the trained weights the notebooks load.

## Install (once)

With Python 3.9 or newer, in this folder:

```bash
python -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt
```

(On Windows: `python -m venv .venv`, `.venv\\Scripts\\activate`, `pip install -r requirements.txt`.)
pip installs minitofe from `wheels/` and what it needs (NumPy, JupyterLab, ...) from the package index.

## Work

```bash
jupyter lab
```

Open the notebooks in order, `01_...` first. Each runs top to bottom as it is; an exercise is a function
that raises `NotImplementedError` until you write it, with hints above the stub. Run the cell after it:

- `PASS <exercise>: ...` says what your function was compared with (minitofe's own function, finite
  differences, inputs where the usual mistakes show, random inputs).
- `FAIL <exercise>: ...` names the first thing that is wrong: the error your code raised and its line, a
  wrong shape, the first wrong entry with both values and, when the check can prove it, the mistake
  (`dx misses the residual`, `ties go to freeze`, ...). `not written yet` means the stub is still there.
- `FAIL ...: write it yourself` means your function calls the minitofe function the exercise asks you to
  write. Use only what the exercise allows (NumPy, and the functions it names).

Write each function inside its own cell (helpers too): that cell is what gets graded. Do not change the
check cells. Minutes per exercise, in the order of the notebooks:

| exercise | notebook | minutes | points |
|---|---|---|---|
{table}
"""


def stub_solutions(source, where="cell"):
    """Cell source -> (source with every marked solution replaced by a stub, number of solutions)."""
    out, hints, inside, count = [], [], False, 0
    for number, line in enumerate(source.splitlines(), 1):
        text = line.strip()
        if inside:
            if text.startswith(END):
                inside = False
            elif text.startswith((BEGIN, HINT)):
                raise ValueError(f"{where}, line {number}: {text!r} inside a solution (no {END} before it)")
        elif text.startswith(HINT):
            hints.append(text[len(HINT):].strip())
        elif text.startswith(BEGIN):
            out.extend(_stub(line[:len(line) - len(line.lstrip())], hints))
            hints, inside, count = [], True, count + 1
        elif text.startswith(END) or hints:
            raise ValueError(f"{where}, line {number}: {END if text.startswith(END) else HINT!r} "
                             f"without a {BEGIN} after it")
        else:
            out.append(line)
    if inside or hints:
        raise ValueError(f"{where}: {BEGIN if inside else HINT} without an {END if inside else BEGIN}")
    return "\n".join(out), count


def strip_hidden_tests(source, where="cell"):
    """Cell source without its ``### BEGIN HIDDEN TESTS`` .. ``### END HIDDEN TESTS`` regions."""
    out, inside = [], False
    for number, line in enumerate(source.splitlines(), 1):
        text = line.strip()
        if text.startswith(BEGIN_HIDDEN):
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN_HIDDEN} inside hidden tests")
            inside = True
        elif text.startswith(END_HIDDEN):
            if not inside:
                raise ValueError(f"{where}, line {number}: {END_HIDDEN} without a {BEGIN_HIDDEN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN_HIDDEN} without an {END_HIDDEN}")
    return "\n".join(out)


def _literal(text):
    """A double-quoted Python string literal (JSON's escapes are Python's)."""
    return json.dumps(text, ensure_ascii=False)


def _stub(indent, hints):
    """The stub's lines: the hint lines as one message, a string literal per hint line."""
    if not hints:
        return [f'{indent}raise NotImplementedError("Write this function.")']
    texts = ["Hint: " + hints[0]] + hints[1:]
    parts = [_literal(text + " ") for text in texts[:-1]] + [_literal(texts[-1])]
    return [f"{indent}raise NotImplementedError("] + [f"{indent}    {p}" for p in parts[:-1]] + \
        [f"{indent}    {parts[-1]})"]


def is_teacher_only(cell):
    return TEACHER_TAG in cell.get("metadata", {}).get("tags", [])


def student_notebook(nb, name="notebook"):
    """A student copy of ``nb`` (stubs, no hidden tests, no teacher-only cells, the title note, no
    outputs) and its number of exercises."""
    student = copy.deepcopy(nb)
    student.cells = [c for c in student.cells if not is_teacher_only(c)]
    total = 0
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            where = f"{name} cell {index}"
            cell.source, count = stub_solutions(strip_hidden_tests(cell.source, where), where)
            total += count
            cell.outputs, cell.execution_count = [], None
    if total:
        title = student.cells[0]
        title.source = title.source.rstrip() + "\n\n" + STUDENT_NOTE
    return student, total


def nbgrader_source(nb):
    """The teaching notebook less its teacher-only cells and outputs: what ``nbgrader generate_assignment``
    reads from ``source/<assignment>/``."""
    source = copy.deepcopy(nb)
    source.cells = [c for c in source.cells if not is_teacher_only(c)]
    for cell in source.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return source


def build_wheel(out):
    """``pip wheel`` this checkout (no dependencies) into ``out`` -> the wheel's path."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet", "-w", tmp],
                       check=True)
        wheel = next(pathlib.Path(tmp).glob("minitofe-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(shutil.copy2(wheel, out / wheel.name))


def write_handout_files(out, wheel, exercises):
    """requirements.txt (the wheel with the notebooks extra) and the students' README.md."""
    requirement = f"./wheels/{wheel.name}[notebooks]" if wheel is not None else "minitofe[notebooks]"
    (out / "requirements.txt").write_text(f"{requirement}\n")
    table = "\n".join(f"| `{', '.join(e.functions)}` | `{e.notebook}` | {e.minutes} | {e.points} |"
                      for e in exercises)
    (out / "README.md").write_text(STUDENT_README.format(count=len(exercises), table=table))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "handout")
    parser.add_argument("--no-wheel", action="store_true", help="skip building the wheel (notebooks, README)")
    parser.add_argument("--nbgrader-source", type=pathlib.Path, metavar="DIR",
                        help="write nbgrader's source version to DIR instead of the handout")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from minitofe.exercises import EXERCISES
    paths = args.paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    out = args.nbgrader_source or args.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        student, count = student_notebook(nb, path.name)
        if count:
            nbformat.write(nbgrader_source(nb) if args.nbgrader_source else student, out / path.name)
            written.append(path.stem)
            print(f"{out / path.name}: {count} exercise{'s' if count > 1 else ''}")
    if args.nbgrader_source:
        return 0
    wheel = None if args.no_wheel else build_wheel(out / "wheels")
    write_handout_files(out, wheel, [e for e in EXERCISES if e.notebook in written])
    print(f"{out}: README.md, requirements.txt" + (f", wheels/{wheel.name}" if wheel else " (no wheel)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
