"""Every method's ``tofe.*`` parameters, checked against what the registered methods know (docs/method.md,
"Where each method lives").

A checkpoint may carry modules its method does not use (a ``tofe`` file run as ``tofe-identity``, a
``dynamicvit`` file run as ``dense``): they are fine. Keys no registered method has for this backbone
and stage count are reported, with the missing and mis-shaped ones (``tofe.params.check_tofe_params``).
"""
import functools
from types import MappingProxyType

from ..registry import entries, get
from ..tofe.params import check_tofe_params


def known_shapes(cfg, tcfg):
    """``{key: shape}`` of the parameters any registered method would have with this config (with an
    approximator at every stage: a file of the last stage's too may be run with ``last_stage="drop"``)."""
    known = {}
    for m in entries():
        try:
            known.update(m.param_shapes(cfg, tcfg.replace(method=m.name, last_stage="approximate")))
        except ValueError:                  # a width that method cannot take (C % 4, C % r)
            continue
    return known


@functools.lru_cache(maxsize=64)
def _expected(cfg, tcfg):
    """(the method's keys, every method's keys) with their shapes, read-only: worked out once per pair of
    configs (both are frozen, hashable dataclasses), not at every forward (~0.2 ms a call for DeiT-S)."""
    want = get(tcfg.method).param_shapes(cfg, tcfg)
    return MappingProxyType(dict(want)), MappingProxyType(dict(known_shapes(cfg, tcfg), **want))


def check_method_params(params, cfg, tcfg):
    """``check_tofe_params`` for method ``tcfg.method`` with the keys every method knows; -> its keys."""
    want, known = _expected(cfg, tcfg)
    return check_tofe_params(params, cfg, tcfg, want=want, known=known)
