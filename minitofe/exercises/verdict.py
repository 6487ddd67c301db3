"""What a check cell shows, and the helpers every check uses to find the first thing that is wrong.

A check returns a ``Verdict``: ``PASS`` with what was compared, or ``FAIL`` with one sentence naming the
first problem (an exception in the student's code with its line, a missing return value, a wrong shape,
the first wrong entry with both values). Inside a check, a helper that finds a problem raises ``Wrong``
with that sentence; the ``exercise`` decorator turns it into the verdict, so no traceback reaches the
student. The student's function is always called on copies of the inputs, with NumPy's floating-point
warnings silenced: a NaN it produces is reported as a value, the same in a notebook and under pytest.

A plausible wrong answer is named: ``same(..., mistakes=...)`` compares a FAIL with answers computed the
wrong ways on the same input and names the cause only when the student's answer equals one of them. How
the student's function is called (copies, the write-it-yourself guard, an exception as one line) is
``calls``.
"""
import numbers
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


def _differs(got, want, rtol, atol):
    if want.dtype == bool or (rtol == 0 and atol == 0):
        return got != want
    return ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def named_mistake(got, want, mistakes, rtol=1e-6, atol=1e-9):
    """The cause of the first plausible wrong answer that ``got`` equals: ``mistakes`` is a sequence of
    ``(cause, answer)``, each answer an array (or a function returning one) computed the wrong way on the
    same input. A cause is named only when it is proven: ``got`` equals that wrong answer everywhere, and
    the wrong answer is not itself right on this input. -> the cause, or None."""
    got = np.asarray(got)
    for cause, answer in mistakes:
        try:
            answer = np.asarray(answer() if callable(answer) else answer)
            with np.errstate(all="ignore"):
                if answer.shape != got.shape or not _differs(answer, want, rtol, atol).any():
                    continue
                if not _differs(got, answer.astype(got.dtype, copy=False), rtol, atol).any():
                    return cause
        except Exception:  # a wrong way that does not apply to this input (e.g. nothing frozen)
            continue
    return None


def same(name, got, want, rtol=1e-6, atol=1e-9, explain=None, against="expected", mistakes=()):
    """Raise ``Wrong`` at the first entry where ``got`` differs from ``want``. When ``got`` equals one of
    ``mistakes`` (see ``named_mistake``) the message names that cause; otherwise ``explain(index)`` may
    add a sentence about the first wrong entry. ``rtol = atol = 0`` asks for exact equality."""
    want = np.asarray(want)
    got = as_array(name, got, want)
    bad = _differs(got, want, rtol, atol)
    if not bad.any():
        return got
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
    shown, wanted = fmt(got[idx]), fmt(want[idx])
    digits = 6
    while shown == wanted and digits < 17:          # close values: show enough digits to see them differ
        digits += 3
        shown, wanted = f"{float(got[idx]):.{digits}g}", f"{float(want[idx]):.{digits}g}"
    msg = f"{where} = {shown}, {against} {wanted}"
    if bad.size > 1:
        msg += f" ({int(bad.sum())} of {bad.size} entries differ)"
    cause = named_mistake(got, want, mistakes, rtol, atol)
    if cause is not None:
        raise Wrong(f"{msg}: {cause}")
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
