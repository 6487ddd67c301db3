"""``record(name, value)``: one call, placed in another implementation's code, that keeps an intermediate
under a golden bundle's name while a capture runs, and does nothing otherwise (docs/validate.md).

    from minitofe.validate import record, recording
    def my_forward(...):
        ...
        record("stage.0.mask", m)              # a no-op outside ``recording()``
    with recording() as outputs:               # {name: array}, the bundle's names
        my_forward(...)
    compare("golden.safetensors", outputs)

Framework-free: values are kept as they are given (a NumPy array is copied; ``minitofe.validate.torch``
passes a converter that detaches and clones tensors). The recording in progress lives in a context
variable, so nested or concurrent captures do not see each other's values.
"""
import contextvars
from contextlib import contextmanager

import numpy as np

_CURRENT = contextvars.ContextVar("minitofe_validate_recording", default=None)


class Recording(dict):
    """{name: value} of one capture; a name is recorded once (a second value is an error: a module that
    ran twice, or two places recording the same tensor)."""

    def __init__(self, convert=None):
        super().__init__()
        self.convert = convert or (lambda v: np.array(v, copy=True))

    def put(self, name, value):
        if not isinstance(name, str) or not name:
            raise TypeError(f"record: the name must be a bundle name (a non-empty str), got {name!r}")
        if name in self:
            raise ValueError(f"record: {name!r} recorded twice in one capture (a module that runs twice, or "
                             f"two record() calls with one name)")
        self[name] = self.convert(value)


def record(name, value):
    """Keep ``value`` under ``name`` if a capture is running; returns ``value`` unchanged either way."""
    rec = _CURRENT.get()
    if rec is not None:
        rec.put(name, value)
    return value


@contextmanager
def recording(convert=None):
    """Collect every ``record`` call made inside the ``with`` block into the Recording it yields."""
    rec = Recording(convert)
    token = _CURRENT.set(rec)
    try:
        yield rec
    finally:
        _CURRENT.reset(token)
