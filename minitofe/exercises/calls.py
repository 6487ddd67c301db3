"""Calling a student's function inside a check: on copies of the inputs, with NumPy's warnings silenced,
an exception turned into one line (``Wrong``) that names the line of the student's code, never a
traceback.

Two rules hold for every exercise, whatever its check compares:

- *Write it yourself.* ``exercise(name, replaces=...)`` names the package functions the exercise asks the
  student to write. While the student's function runs, a profile hook (``sys.setprofile``) watches every
  Python call; a call of one of those functions, at any depth, however it was imported or renamed, fails
  the check. Catching the call, not grepping the source, is what makes this hard to get around.
- *Leave the inputs alone.* ``call`` hands the student copies and fails the check when a copy came back
  changed (``x -= x.max()`` on an argument changes the caller's array).
"""
import copy
import functools
import inspect
import sys
import traceback
import warnings

import numpy as np

from .verdict import Verdict, Wrong

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
    """Raise ``Wrong`` when the array ``now`` (or an array in the dict or list ``now``) differs from
    ``was``."""
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
                if _REPLACED and sys.getprofile() is not watch:
                    raise Wrong(f"{name} switched off the check's watch on its calls (sys.setprofile)")
            finally:
                sys.setprofile(previous)
    except Wrong:
        raise
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


