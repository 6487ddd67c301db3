"""Method ``dynamicvit``: DynamicViT as its authors define it (docs/method.md, "Baselines";
docs/baselines.md).

Its own predictor per stage (``dynamicvit_predictor``), cumulative hard Gumbel decisions, keep ratios
rho, rho^2, rho^3 (``dynamicvit_budget``), ratio + distillation losses (``dynamicvit_train``); inference
gathers the kept tokens once per stage (``dynamicvit_infer``).
"""
from .dynamicvit_budget import DYNAMICVIT_RULE, dynamicvit_topk_macs
from .dynamicvit_infer import dynamicvit_inference
from .dynamicvit_predictor import dynamicvit_param_shapes
from .dynamicvit_train import DynamicViTCache, dynamicvit_train_backward, dynamicvit_train_forward
from .protocol import Method
from .rate_search import ratios_for_budget


def dynamicvit_needs_teacher(tcfg):
    """The KL to the teacher's logits and the MSE to its final tokens read the dense teacher."""
    return tcfg.dvit_kl_weight > 0 or tcfg.dvit_token_weight > 0


def dynamicvit_ratios_for_budget(cfg, tcfg, budget, base=None):
    """(rho, rho^2, ...) for the rho meeting ``budget`` (``base`` is ToFe's: DynamicViT has one number)."""
    return ratios_for_budget(cfg, tcfg, budget, DYNAMICVIT_RULE)


DYNAMICVIT = Method(
    "dynamicvit", "DynamicViT: its own predictor, tokens dropped for good (the authors' method)",
    dynamicvit_inference, dynamicvit_topk_macs,
    dynamicvit_ratios_for_budget,
    param_shapes=dynamicvit_param_shapes, train_forward=dynamicvit_train_forward,
    train_backward=dynamicvit_train_backward, cache_type=DynamicViTCache,
    needs_teacher=dynamicvit_needs_teacher, reuses=False, topk_only=True, teacher_features=True)
