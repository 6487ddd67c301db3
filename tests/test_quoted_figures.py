"""Every figure the docs quote beside a command is what that command prints now.

A ``console`` block that follows the marker line ``<!-- quoted output: checked by
tests/test_quoted_figures.py -->`` in ``README.md``, ``weights/README.md`` or ``docs/*.md`` is run here:
each ``$ minitofe ...`` line as a command, from a scratch folder that sees the checkout's ``weights/``;
the lines quoted after it must appear in its output in order (a line ``...`` stands for any number of
lines). A quoted JSON line gives a subset of the printed object's fields: each must be there, a number
equal to the printed one rounded to as many decimals as quoted. Commands that read Fashion-MNIST
(``eval``, ``train``) are ``slow`` and need the data set; the others run in the default suite.

The README's results table is the report's (``docs/fmnist-results.md``, what ``fmnist_experiment.py
report`` wrote): each of its figures is checked against that report's table here too.
"""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = "<!-- quoted output: checked by tests/test_quoted_figures.py -->"
DOCS = [REPO / "README.md", REPO / "weights" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NEEDS_DATA = ("eval", "train")


def quoted_commands():
    """-> [(doc, command, [quoted output lines])] of every marked console block."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(re.escape(MARKER) + r"\n```console\n(.*?)```", text, re.S):
            for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
                command, *out = chunk.rstrip("\n").split("\n")
                found.append((doc.relative_to(REPO).as_posix(), command, out))
    return found


def _fashion_mnist_present():
    from minitofe.data.fashion_mnist import fashion_mnist_root
    root = fashion_mnist_root()
    return any((root / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def _params():
    params = []
    for doc, command, out in quoted_commands():
        marks = [pytest.mark.slow] if shlex.split(command)[1] in NEEDS_DATA else []
        params.append(pytest.param(command, out, marks=marks, id=f"{doc}: {command}"))
    return params


def matches(quoted, printed):
    """Is ``quoted`` (a JSON subset or a text line) what ``printed`` says?"""
    if quoted.startswith("{"):
        try:
            got = json.loads(printed)
        except ValueError:
            return False
        for key, want in json.loads(quoted).items():
            if key not in got:
                return False
            if isinstance(want, float) and not isinstance(want, bool):
                decimals = len(re.search(r'"%s":\s*-?\d+\.?(\d*)' % re.escape(key), quoted).group(1))
                if round(float(got[key]), decimals) != want:
                    return False
            elif got[key] != want:
                return False
        return True
    return quoted.rstrip() == printed.rstrip()


def first_mismatch(quoted, printed):
    """-> None when every quoted line is found in order (``...`` skips lines), else the line not found."""
    i = 0
    for k, want in enumerate(quoted):
        if want == "...":
            continue
        skip = k > 0 and quoted[k - 1] == "..."
        while i < len(printed) and not matches(want, printed[i]):
            if not skip:
                return want
            i += 1
        if i == len(printed):
            return want
        i += 1
    return None


@pytest.mark.parametrize("command, quoted", _params())
def test_the_quoted_output_is_what_the_command_prints(command, quoted, tmp_path):
    argv = shlex.split(command)
    assert argv[0] == "minitofe", f"only minitofe commands are run here: {command}"
    if argv[1] in NEEDS_DATA and not _fashion_mnist_present():
        pytest.skip("needs the Fashion-MNIST files (apt-get install dataset-fashion-mnist)")
    (tmp_path / "weights").symlink_to(REPO / "weights")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "minitofe", *argv[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr
    missing = first_mismatch(quoted, run.stdout.splitlines())
    assert missing is None, f"`{command}` no longer prints\n  {missing}\nIt printed:\n{run.stdout}"


def test_the_matcher_fails_on_a_changed_figure():
    printed = ['{"top1": 0.9077, "n": 10000, "macs_ratio": 1.0, "weights": "x"}', "a", "b", "c"]
    assert first_mismatch(['{"top1": 0.9077, "n": 10000}', "...", "c"], printed) is None
    assert first_mismatch(['{"top1": 0.9065}'], printed) == '{"top1": 0.9065}'
    assert first_mismatch(['{"top1": 0.908}'], printed) is None              # quoted to 3 decimals
    assert first_mismatch(['{"top1": 0.9077}', "b"], printed) == "b"         # no '...': the next line
    assert first_mismatch(['{"missing": 1}'], printed) == '{"missing": 1}'


def test_every_marked_block_was_found():
    commands = [c for _, c, _ in quoted_commands()]
    assert "minitofe demo" in commands and "minitofe eval --method dense --json" in commands


def _table(text, header):
    """The rows (lists of cells) of the markdown table whose header line starts with ``header``."""
    rows = []
    for line in text[text.index(header):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_readmes_results_are_the_reports():
    """Each figure of the README's results table is the report's mean ± std for that method, budget and
    number of seeds (``docs/fmnist-results.md``)."""
    readme = _table((REPO / "README.md").read_text(), "| method | seeds | 50 % MACs | 35 % MACs |")
    report = _table((REPO / "docs" / "fmnist-results.md").read_text(), "| method | MACs target | seeds |")
    report_rows = {(r[0].split(" ")[0], r[1].split()[0]): r[1:] for r in report}
    checked = 0
    for label, seeds, *cells in readme:
        method = label.split("`")[1]
        for budget, cell in zip(("50", "35"), cells):
            figure = cell.replace("*", "")
            if figure == "–" or "stages" in label:
                continue
            row = report_rows[(method, budget)]
            assert row[2].replace("*", "") == figure, f"{label} at {budget} %: report says {row[2]}"
            assert seeds in ("–", row[1])
            checked += 1
    assert checked >= 11


def _records_mean_std(method, budget):
    """'mean ± std' (%) of the test top-1 in the kept records of the regenerated experiment's final runs of
    ``method`` at ``budget`` (%), and their number."""
    import statistics
    paths = sorted((REPO / "results" / "fmnist" / "experiment" / "final").glob(f"{method}_{budget}_s*.json"))
    tops = [100 * json.loads(p.read_text())["test_top1"] for p in paths]
    return f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}", len(tops)


def test_the_regenerated_figures_quoted_are_the_kept_records():
    """docs/results.md's table of the regeneration, and the README's sentence on ``tofe-uniform``, quote
    the mean ± std of the test figures in the runs' records (``results/fmnist/experiment/final/``)."""
    rows = _table((REPO / "docs" / "results.md").read_text(), "| method (regenerated) | seeds |")
    assert {r[0] for r in rows} >= {"`tofe`", "`tofe-uniform`"}
    for label, seeds, *cells in rows:
        for budget, cell in zip(("50", "35"), cells):
            assert (cell, int(seeds)) == _records_mean_std(label.strip("`"), budget), (label, budget)
    readme = " ".join((REPO / "README.md").read_text().split())
    uniform = [_records_mean_std("tofe-uniform", b)[0] for b in ("50", "35")]
    assert f"gives {uniform[0]} and {uniform[1]}, ahead of ToFe at 50 %" in readme
