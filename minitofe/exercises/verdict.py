"""What a check cell shows, and the helpers every check uses to find the first thing that is wrong.

A check returns a ``Verdict``: ``PASS`` with what was compared, or ``FAIL`` with one sentence naming the
first problem (an exception in the student's code with its line, a missing return value, a wrong shape,
the first wrong entry with both values). Inside a check, a helper that finds a problem raises ``Wrong``
with that sentence; the ``exercise`` decorator turns it into the verdict, so no traceback reaches the
student. The student's function is always called on copies of the inputs, with NumPy's floating-point
warnings silenced: a NaN it produces is reported as a value, the same in a notebook and under pytest.

Three rules hold for every exercise, whatever its check compares:

- *Write it yourself.* ``exercise(name, replaces=...)`` names the package functions the exercise asks the
  student to write. While the student's function runs, a profile hook (``sys.setprofile``) watches every
  Python call; a call of one of those functions, at any depth, however it was imported or renamed, fails
  the check. Catching the call, not grepping the source, is what makes this hard to get around.
- *Leave the inputs alone.* ``call`` hands the student copies and fails the check when a copy came back
  changed (``x -= x.max()`` on an argument changes the caller's array).
- *A plausible wrong answer is named.* ``same(..., mistakes=...)`` compares a FAIL with answers computed
  the wrong ways on the same input and names the cause only when the student's answer equals one of them.
"""
import copy
import functools
import inspect
import numbers
import sys
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


_REPLACED = {}     # (module, function name) -> "module.function": what the running check forbids


def _key(fn):
    """A function, or a "module.function" string (for a twin whose module may not be imported yet)
    -> (module, function name)."""
    if isinstance(fn, str):
        module, _, name = fn.rpartition(".")
        return module, name
    fn = inspect.unwrap(getattr(fn, "py_func", fn))
    return fn.__module__, fn.__code__.co_name


def exercise(name, replaces=()):
    """Decorator: a check that raises ``Wrong`` (or returns what it checked) -> one returning a Verdict.
    ``replaces``: the package functions the exercise asks the student to write (functions, or
    "module.function" strings for the Numba twins, imported only when used); a call of any of them from
    the student's code fails the check ("write it yourself")."""
    forbidden = {_key(f): ".".join(_key(f)) for f in replaces}

    def wrap(check):
        @functools.wraps(check)
        def run(*student_functions):
            saved = dict(_REPLACED)
            _REPLACED.clear()
            _REPLACED.update(forbidden)
            try:
                checked = check(*student_functions)
            except Wrong as wrong:
                return Verdict(name, False, str(wrong))
            finally:
                _REPLACED.clear()
                _REPLACED.update(saved)
            return Verdict(name, True, checked)
        run.replaces = tuple(forbidden.values())
        return run
    return wrap


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on deep copies of the arguments; an exception becomes ``Wrong``, and so
    does a copy that comes back changed (the student's function wrote into its input)."""
    args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
    before = copy.deepcopy((args, kwargs))
    out = call_in_place(fn, *args, **kwargs)
    for position, (now, was) in enumerate(zip(args, before[0])):
        _unchanged(fn, _arg_name(fn, position), now, was)
    for key, now in kwargs.items():
        _unchanged(fn, key, now, before[1][key])
    return out


def _arg_name(fn, position):
    try:
        return list(inspect.signature(fn).parameters)[position]
    except (TypeError, ValueError, IndexError):
        return f"argument {position + 1}"


def _unchanged(fn, name, now, was):
    """Raise ``Wrong`` when the array ``now`` (or an array in the dict or list ``now``) differs from ``was``."""
    if isinstance(was, dict):
        for key in was:
            _unchanged(fn, f"{name}[{key!r}]", now.get(key) if isinstance(now, dict) else None, was[key])
    elif isinstance(was, (list, tuple)):
        for i, item in enumerate(was):
            _unchanged(fn, f"{name}[{i}]", now[i] if len(now) > i else None, item)
    elif isinstance(was, np.ndarray):
        if not (isinstance(now, np.ndarray) and now.shape == was.shape
                and np.array_equal(now, was, equal_nan=was.dtype.kind == "f")):
            raise Wrong(f"{getattr(fn, '__name__', 'your function')} changed its input {name} in place "
                        f"(an in-place operation such as x -= ..., x[...] = ... or x *= ... on an "
                        f"argument); work on a copy, the caller still needs its array")


def call_in_place(fn, *args, **kwargs):
    """``call`` without the copies, to see whether ``fn`` changes its inputs."""
    if not callable(fn):
        raise Wrong(f"expected your function, got {type(fn).__name__} {fn!r}")
    called = []

    def watch(frame, event, arg):                 # the profile hook: sees every Python call
        if event == "call" and not called:
            hit = _REPLACED.get((frame.f_globals.get("__name__"), frame.f_code.co_name))
            if hit is not None:
                called.append(hit)
    name = getattr(fn, "__name__", "your function")
    previous = sys.getprofile()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if _REPLACED:
                sys.setprofile(watch)
            try:
                out = fn(*args, **kwargs)
            finally:
                sys.setprofile(previous)
    except NotImplementedError as err:
        raise Wrong(f"not written yet. {err}".strip()) from None
    except SystemExit as err:
        raise Wrong(f"{name} called sys.exit({err.code!r}): a function returns its answer, it never ends "
                    f"the program") from None
    except Exception as err:  # the student's bug, reported as one line, never a traceback
        if called:
            raise Wrong(_write_it_yourself(name, called[0])) from None
        raise Wrong(f"{name} raised {type(err).__name__}: {err}{_where(fn, err)}") from None
    if called:
        raise Wrong(_write_it_yourself(name, called[0]))
    return out


def _write_it_yourself(name, package_function):
    return (f"write it yourself: {name} calls minitofe's {package_function}, the function this exercise "
            f"asks you to write (the check compares your code with it)")


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
