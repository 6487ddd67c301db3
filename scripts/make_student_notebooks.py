"""Make the student version of the numbered notebooks: every exercise's solution replaced by a stub.

    python scripts/make_student_notebooks.py                      # -> build/student_notebooks/
    python scripts/make_student_notebooks.py --out DIR            # somewhere else
    python scripts/make_student_notebooks.py notebooks/02_*.ipynb  # only these

The teaching notebooks are the one source. In them an exercise is a function whose body is marked with
nbgrader's solution markers, optionally preceded by hint lines:

        ### HINT: np.argmax returns the first maximum
        ### BEGIN SOLUTION
        ...minitofe's answer...
        ### END SOLUTION

The student version replaces everything from the hint lines to ``### END SOLUTION`` with
``raise NotImplementedError("Hint: ...")`` at the same indentation (one string per hint line), adds a line under the title saying
what the student version is, and has no outputs. Everything else, the check cells included, is kept as
it is. Only notebooks with at least one exercise are written. Needs ``nbformat``.
"""
import argparse
import copy
import json
import pathlib
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
HINT, BEGIN, END = "### HINT:", "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_NOTE = ("*Student version: each exercise below raises `NotImplementedError` until you write it; "
                "the cell after it checks your function and says PASS, or what is wrong.*")


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


def student_notebook(nb, name="notebook"):
    """A student copy of ``nb`` (stubs, the title note, no outputs) and its number of exercises."""
    student = copy.deepcopy(nb)
    total = 0
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            cell.source, count = stub_solutions(cell.source, f"{name} cell {index}")
            total += count
            cell.outputs, cell.execution_count = [], None
    if total:
        title = student.cells[0]
        title.source = title.source.rstrip() + "\n\n" + STUDENT_NOTE
    return student, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "student_notebooks")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        student, count = student_notebook(nbformat.read(path, as_version=4), path.name)
        if count:
            nbformat.write(student, args.out / path.name)
            print(f"{args.out / path.name}: {count} exercise{'s' if count > 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
