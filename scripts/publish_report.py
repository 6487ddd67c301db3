"""Copy a finished report of the Fashion-MNIST experiment into the docs, whole and unedited.

    python scripts/publish_report.py RUN_DIR [--docs DOCS]

Reads ``RUN_DIR/report/`` (what ``fmnist_experiment.py report`` wrote) and writes ``DOCS/fmnist-results.md``
(default ``docs/``): a fixed introduction, the per-stage error figure and ``stage_errors.json``, then
``table.md``, ``studies.md`` and, when the report was made ``--against`` another run, ``rerun.md``, each
under its file name; the pictures they show go to ``DOCS/img/`` (``stage_errors.png``, ``curves.png``,
``keep_ratios.png``, ``skip.png``), where docs/results.md finds them too. A report without ``table.md``
is refused, naming the file, and nothing is written. The README's results table is then brought in line
by hand; ``tests/test_quoted_figures.py`` checks every figure of it against the published table.
"""
import argparse
import pathlib
import re
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PICTURES = ("stage_errors.png", "curves.png", "keep_ratios.png", "skip.png")
SECTIONS = ("table.md", "studies.md", "rerun.md")          # in this order; all but table.md optional

INTRO = """# Fashion-MNIST results: the report, whole

What `python scripts/fmnist_experiment.py report` wrote to `{run}/report/` for the experiment described
in the README ("Results"), unedited (copied by `python scripts/publish_report.py {run}`): every model on
the 10 000 test images at its MACs target, the spread verdicts, the remedies beside their decisions on
the validation split, the compute each phase took, and the studies. Per-stage approximation error of the
frozen tokens (`stage_errors.png`):

![Relative squared error of frozen tokens to the dense teacher, per stage, at 50 % MACs](img/stage_errors.png)

The per-stage figures and the freeze-path swap, as the report wrote them (`stage_errors.json`). Per
model and stage (counted from 0), at 50 % MACs on the test set: `frozen_fraction`, the share of patches
frozen; `frozen`, their relative squared error to the dense teacher's tokens at the stage's end;
`identity`, the same tokens' error had they been carried unchanged; `kept`, the kept tokens' error.
`freeze_paths`: test top-1 of the seed-0 tofe models with their trained approximator, the identity, and
an oracle that hands every frozen token its exact dense value:

```json
{errors}
```
"""


def _pictures_to_img(text):
    """A section's own picture links (``![...](skip.png)``) pointed at ``img/``, where they are copied."""
    return re.sub(r"(!\[[^\]]*\]\()(?!img/)([\w.-]+\.png\))", r"\1img/\2", text)


def publish(run_dir, docs):
    """Write ``docs/fmnist-results.md`` and the pictures from ``run_dir/report`` (module docstring);
    returns the markdown's path."""
    report = pathlib.Path(run_dir) / "report"
    for need in ("table.md", "stage_errors.json"):
        if not (report / need).is_file():
            raise FileNotFoundError(f"{report / need}: no such file; run `python scripts/fmnist_experiment.py "
                                    f"report --run-dir {run_dir}` first (nothing was written)")
    run = "runs/" + pathlib.Path(run_dir).name
    parts = [INTRO.format(run=run, errors=(report / "stage_errors.json").read_text().strip())]
    for name in SECTIONS:
        if (report / name).is_file():
            parts.append(f"## {name}\n\n" + _pictures_to_img((report / name).read_text().strip()) + "\n")
    docs = pathlib.Path(docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    for picture in PICTURES:
        if (report / picture).is_file():
            shutil.copyfile(report / picture, docs / "img" / picture)
    out = docs / "fmnist-results.md"
    out.write_text("\n".join(parts))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=pathlib.Path, help="the experiment's run folder (its report/ is read)")
    p.add_argument("--docs", type=pathlib.Path, default=REPO / "docs", help="where fmnist-results.md goes")
    args = p.parse_args(argv)
    try:
        print(f"wrote {publish(args.run_dir, args.docs)}")
    except FileNotFoundError as e:
        print(f"publish_report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
