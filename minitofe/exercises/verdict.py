"""What a check cell shows, and the helpers every check uses to find the first thing that is wrong.

A check returns a ``Verdict``: ``PASS`` with what was compared, or ``FAIL`` with one sentence naming the
first problem (an exception in the student's code with its line, a missing return value, a wrong shape,
the first wrong entry with both values). Inside a check, a helper that finds a problem raises ``Wrong``
with that sentence; the ``exercise`` decorator turns it into the verdict, so no traceback reaches the
student. The student's function is always called on copies of the inputs, with NumPy's floating-point
warnings silenced: a NaN it produces is reported as a value, the same in a notebook and under pytest.
"""
import copy
import functools
import numbers
import traceback
import warnings
from dataclasses import dataclass

import numpy as np

from ..gradcheck import numerical_grad


class Wrong(Exception):
    """Raised inside a check; its message is what the student reads."""


@dataclass(frozen=True)
class Verdict:
    exercise: str
    passed: bool
    message: str

    def __str__(self):
        return f"{'PASS' if self.passed else 'FAIL'} {self.exercise}: {self.message}"

    def _repr_pretty_(self, printer, cycle):          # how IPython shows the last value of a cell
        printer.text(str(self))


def exercise(name):
    """Decorator: a check that raises ``Wrong`` (or returns what it checked) -> one returning a Verdict."""
    def wrap(check):
        @functools.wraps(check)
        def run(*student_functions):
            try:
                checked = check(*student_functions)
            except Wrong as wrong:
                return Verdict(name, False, str(wrong))
            return Verdict(name, True, checked)
        return run
    return wrap


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on deep copies of the arguments; an exception becomes ``Wrong``."""
    return call_in_place(fn, *copy.deepcopy(args), **copy.deepcopy(kwargs))


def call_in_place(fn, *args, **kwargs):
    """``call`` without the copies, to see whether ``fn`` changes its inputs."""
    if not callable(fn):
        raise Wrong(f"expected your function, got {type(fn).__name__} {fn!r}")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise Wrong(f"not written yet. {err}".strip()) from None
    except Exception as err:  # the student's bug, reported as one line, never a traceback
        raise Wrong(f"{getattr(fn, '__name__', 'your function')} raised {type(err).__name__}: {err}"
                    f"{_where(fn, err)}") from None


def _where(fn, err):
    """' (line 7: return x[idx])' for the last frame of the student's own cell, else ''."""
    home = getattr(getattr(fn, "__code__", None), "co_filename", None)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == home]
    if not frames:
        return ""
    last = frames[-1]
    return f" (line {last.lineno}: {last.line.strip()})" if last.line else f" (line {last.lineno})"


def parts(result, names):
    """Unpack a tuple the student returns, e.g. ``(ds, dkeep)``, or say what came back instead."""
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        what = f"a {type(result).__name__}" if not isinstance(result, (tuple, list)) else \
            f"{len(result)} values"
        raise Wrong(f"should return {len(names)} values ({', '.join(names)}), got {what}")
    return result


def fmt(v):
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return f"{float(v):.6g}"


def as_array(name, got, want):
    """``got`` as an array of ``want``'s shape (and boolean when ``want`` is), else ``Wrong``."""
    if got is None:
        raise Wrong(f"{name} is None: did you forget a return statement?")
    try:
        arr = np.asarray(got)
    except Exception:  # a ragged list, an object that is no array
        arr = None
    if arr is None or arr.dtype == object or arr.dtype.kind not in "biuf":
        raise Wrong(f"{name} should be a numeric array of shape {want.shape}, got {type(got).__name__}")
    if arr.shape != want.shape:
        raise Wrong(f"{name} has shape {arr.shape}, expected {want.shape}")
    if want.dtype == bool and arr.dtype != bool:
        raise Wrong(f"{name} should be a boolean array (True = keep), got dtype {arr.dtype}")
    return arr


def same(name, got, want, rtol=1e-6, atol=1e-9, explain=None, against="expected"):
    """Raise ``Wrong`` at the first entry where ``got`` differs from ``want``; ``explain(index)`` may add
    a sentence about that entry. ``rtol = atol = 0`` asks for exact equality."""
    want = np.asarray(want)
    got = as_array(name, got, want)
    if want.dtype == bool or (rtol == 0 and atol == 0):
        bad = got != want
    else:
        bad = ~np.isclose(got, want, rtol=rtol, atol=atol)
    if not bad.any():
        return got
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
    msg = f"{where} = {fmt(got[idx])}, {against} {fmt(want[idx])}"
    if bad.size > 1:
        msg += f" ({int(bad.sum())} of {bad.size} entries differ)"
    if explain is not None:
        msg += explain(idx) or ""
    raise Wrong(msg)


def same_as_finite_differences(name, grad, loss, x, rtol=1e-5, atol=1e-7):
    """Compare ``grad`` with central differences of the scalar ``loss()`` in the float64 array ``x``."""
    numerical = numerical_grad(loss, x)
    same(name, grad, numerical, rtol=rtol, atol=atol, against="but finite differences give")


def smallest_failure(ranges, check_case, examples=50):
    """Search random cases for one where ``check_case(case)`` raises ``Wrong``, shrink it to the smallest
    and return ``(case, message)``, or None when every case passes. A case is a dict ``{name: int}`` drawn
    from ``ranges`` ``{name: (lo, hi)}`` (sizes, and a ``seed`` the check builds its arrays from), so
    hypothesis shrinks sizes and seeds toward small ones. Deterministic (derandomized, no example
    database): a student sees the same message on every run."""
    from hypothesis import HealthCheck, find, settings, strategies as st
    from hypothesis.errors import NoSuchExample

    def fails(case):
        try:
            check_case(case)
        except Wrong:
            return True
        return False

    cases = st.fixed_dictionaries({k: st.integers(lo, hi) for k, (lo, hi) in ranges.items()})
    opts = settings(max_examples=examples, database=None, derandomize=True, deadline=None,
                    suppress_health_check=list(HealthCheck))
    try:
        case = find(cases, fails, settings=opts)
    except NoSuchExample:
        return None
    try:
        check_case(case)
    except Wrong as wrong:
        return case, str(wrong)
    return None


def search(ranges, check_case, describe=None, examples=50):
    """``smallest_failure`` as a check step: raise ``Wrong`` naming the smallest failing case
    (``describe(case)``, unless the message names it already), else return a phrase for the pass
    message. Without hypothesis the search is skipped, and the phrase says so."""
    try:
        import hypothesis  # noqa: F401  (optional: the notebooks and test extras install it)
    except ImportError:
        return "random inputs not tried (pip install hypothesis)"
    found = smallest_failure(ranges, check_case, examples)
    if found is not None:
        case, message = found
        raise Wrong(message if describe is None
                    else f"{message}; smallest failing input found: {describe(case)}")
    return f"{examples} random inputs"
