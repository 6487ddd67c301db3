"""Every token-reduction method, as peers behind one protocol (``protocol.Method``) and one registry
(``minitofe.registry``: a table that imports nothing, filled here): ToFe and its ablations (``tofe.py``,
running ``minitofe/tofe/``), ``dense``, ``idle``, ``evit-drop``, ``evit`` and ``dynamicvit``, each in its
own module. ``run`` runs any of them by name.

A new method is a new module and one line below (docs/method.md, "Where each method lives").
"""
from . import dense, dynamicvit, evit, evit_drop, idle, tofe
from ..registry import entries, get, names, register, unregister  # noqa: F401 (the registry's face)
from .run import (inference, init_params, param_shapes, ratios_for_budget, topk_macs,  # noqa: F401
                  train_backward, train_forward)

register(dense.DENSE)
register(evit.EVIT)
register(evit_drop.EVIT_DROP)
register(dynamicvit.DYNAMICVIT)
register(tofe.TOFE_CUMULATIVE)
register(idle.IDLE)
register(tofe.TOFE)
register(tofe.TOFE_IDENTITY)
register(tofe.TOFE_UNIFORM)
