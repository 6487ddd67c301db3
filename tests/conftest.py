"""Suite-wide: the run's header and summary name how the pinned values are compared on this machine
(``tests/test_pinned.py``)."""
import functools
import importlib.util
import pathlib

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "make_pinned.py"


@functools.lru_cache(maxsize=None)                  # the header and the summary: read the file once
def pinned_mode_line():
    spec = importlib.util.spec_from_file_location("make_pinned_header", _SCRIPT)
    make_pinned = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_pinned)
    made_on = make_pinned.recorded_arithmetic()
    how = make_pinned.mode(made_on)
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}"
                     for b in (made_on or {}).get("blas", []))
    if how == "exact":
        return f"pinned values: compared bit for bit (this machine's arithmetic is the recorded one: {blas})"
    return (f"pinned values: compared within 1e-12 of each array's magnitude (recorded on "
            f"{blas or 'unknown'}; this machine differs)")


def pytest_report_header(config):
    return pinned_mode_line()


def pytest_terminal_summary(terminalreporter):
    """Also at the end, where ``-q`` (the README's command) still shows it, when the pinned tests ran."""
    if any(r.nodeid.split("::")[0].endswith("test_pinned.py") for key in ("passed", "failed")
           for r in terminalreporter.stats.get(key, [])):
        terminalreporter.write_line(pinned_mode_line())
