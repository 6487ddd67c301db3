"""scripts/block_times.py: every block of a ToFe and a dense forward timed by its rows, the fit over them."""
import json
import pathlib

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def test_every_block_call_is_timed_by_its_rows_and_the_block_is_put_back(monkeypatch, capsys):
    pytest.importorskip("numba")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import block_times
    import minitofe.kernels.block as fast_block
    original = fast_block._block_inplace
    assert block_times.main(["--model", "deit_tiny_patch16_224", "--runs", "1", "--threads", "1",
                             "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert fast_block._block_inplace is original
    rows = {(b["block"], b["rows"]) for b in out["blocks"]}
    assert {(j, 197) for j in range(12)} <= rows                      # the dense forward's
    kept = sorted({r for _, r in rows if r < 197}, reverse=True)      # ToFe's stages: fewer rows each time
    assert len(kept) == 3 and abs(out["macs_ratio"] - 0.5) < 0.01
    assert all(b["ms"] > 0 for b in out["blocks"]) and out["fit"]["per_row_ms"] > 0
