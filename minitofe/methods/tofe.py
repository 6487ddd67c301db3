"""ToFe and its ablations as registry entries (docs/method.md; ``minitofe/tofe/`` is the method itself).

    tofe             learned selector, freeze + reuse, MLP approximator, budget loss
    tofe-identity    as tofe with the identity approximator (ablation)
    tofe-uniform     as tofe with fixed equal keep ratios instead of learned ones (ablation)
    tofe-cumulative  ToFe's selector with a cumulative mask (a dropped token never returns), no
                     approximator, ToFe's losses

They are one implementation (``tofe.inference``, ``tofe.training``) configured by the entry's facts,
which ``ToFeConfig``'s properties read (``uses_approximator``, ``reuses_tokens``, ``learned_ratios``).
"""
from functools import partial

from .protocol import Method
from ..tofe.budget import ratios_for_budget, topk_macs
from ..tofe.inference import tofe_inference
from ..tofe.params import tofe_param_shapes
from ..tofe.training import TrainCache, tofe_train_backward, tofe_train_forward


def tofe_needs_teacher(tcfg):
    """L_kd (alpha > 0), or L_approx (beta > 0 with an approximator), reads the dense teacher."""
    return tcfg.alpha > 0 or (tcfg.beta > 0 and tcfg.uses_approximator)


def _entry(name, summary, approximator, reuses=True, learned_ratios=True):
    return Method(name, summary, partial(tofe_inference, check=False), topk_macs, ratios_for_budget,
                  param_shapes=tofe_param_shapes, train_forward=tofe_train_forward,
                  train_backward=tofe_train_backward, cache_type=TrainCache, needs_teacher=tofe_needs_teacher,
                  learned_selector=True, uses_approximator=approximator, reuses=reuses,
                  learned_ratios=learned_ratios)


TOFE = _entry("tofe", "learned selector, freeze + reuse, MLP approximator, budget loss", True)
TOFE_IDENTITY = _entry("tofe-identity", "as tofe with the identity approximator (ablation)", False)
TOFE_UNIFORM = _entry("tofe-uniform", "as tofe with fixed equal keep ratios (ablation)", True,
                      learned_ratios=False)
TOFE_CUMULATIVE = _entry("tofe-cumulative", "ToFe's selector, a dropped token never returns, no approximator",
                         False, reuses=False)
