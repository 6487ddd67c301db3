"""scripts/publish_report.py: a report folder copied into the docs whole, its pictures beside it."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import publish_report as P      # noqa: E402


def _report(run_dir, rerun=False):
    report = run_dir / "report"
    report.mkdir(parents=True)
    (report / "table.md").write_text("| method | MACs target | seeds |\n|---|---|---|\n| tofe | 50 % | 3 |\n")
    (report / "studies.md").write_text("# Studies\n\n![the skip study](skip.png)\n")
    (report / "stage_errors.json").write_text('{"tofe": []}\n')
    for picture in ("stage_errors.png", "skip.png", "curves.png"):
        (report / picture).write_bytes(b"\x89PNG " + picture.encode())
    if rerun:
        (report / "rerun.md").write_text("# Rerun\n\nmachine spread 0.12\n")
    return run_dir


def test_the_report_goes_into_the_docs_whole_with_its_pictures(tmp_path):
    run_dir, docs = _report(tmp_path / "experiment", rerun=True), tmp_path / "docs"
    text = P.publish(run_dir, docs).read_text()
    assert text.index("## table.md") < text.index("## studies.md") < text.index("## rerun.md")
    assert "| tofe | 50 % | 3 |" in text and "machine spread 0.12" in text and '{"tofe": []}' in text
    assert "![the skip study](img/skip.png)" in text and "](skip.png)" not in text
    assert "`runs/experiment/report/`" in text and "](img/stage_errors.png)" in text
    for picture in ("stage_errors.png", "skip.png", "curves.png"):
        assert (docs / "img" / picture).read_bytes() == (run_dir / "report" / picture).read_bytes()
    assert not (docs / "img" / "keep_ratios.png").exists()                # not in this report: not made up


def test_a_report_without_its_table_is_refused_and_nothing_is_written(tmp_path, capsys):
    run_dir, docs = _report(tmp_path / "experiment"), tmp_path / "docs"
    (run_dir / "report" / "table.md").unlink()
    with pytest.raises(FileNotFoundError, match="table.md: no such file"):
        P.publish(run_dir, docs)
    assert P.main([str(run_dir), "--docs", str(docs)]) == 2
    assert "table.md" in capsys.readouterr().err and not docs.exists()
