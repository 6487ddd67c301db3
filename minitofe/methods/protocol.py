"""What a token-reduction method is to the rest of minitofe: one small frozen dataclass (docs/method.md,
"Where each method lives"; docs/contributing.md §15).

``predict``, the trainer, the golden bundles, the bench and the command line never ask a method's name
what to do: they take its ``Method`` from the registry (``minitofe.registry.get``, re-exported by
``minitofe.methods``) and call its functions. Every function has the signature of its ToFe counterpart,
so a method is a handful of forward/backward pairs with plain-data caches, like the rest of the package:

    param_shapes(cfg, tcfg) -> {key: shape}                      its own ``tofe.*`` parameters, drawn
                                                                 fresh by ``init_from_shapes``
    inference(params, images, cfg, tcfg, keep_ratios, kept_masks, ops) -> logits, info
                                                                 (inputs already checked)
    train_forward(params, images, labels, cfg, tcfg, noise, teacher, tau, hard, ops) -> out, cache
    train_backward(cache) -> dimages, grads                      None for both: training-free
    topk_macs(cfg, tcfg, ratios) -> MACs of one image at per-stage keep ratios
    ratios_for_budget(cfg, tcfg, budget, base) -> the keep ratios meeting a MACs budget
    train_schedule(cfg, tcfg, step, steps) -> tcfg for this step (EViT's annealed keep rate)

and a few facts: ``cache_type`` (how ``train_backward`` is found from a cache), ``learned_selector`` /
``uses_approximator`` (ToFe's modules, of the kinds ``ToFeConfig.selector`` / ``.approximator`` name),
``reuses`` (a frozen token can come back), ``learned_ratios``, ``topk_only`` (no ``threshold``
inference), ``noise`` (the training step draws Gumbel noise), ``needs_teacher(tcfg)``,
``teacher_features`` (distils the teacher's final tokens, not its stage outputs). ``summary``: one line
saying what the method is.
"""
from dataclasses import dataclass
from typing import Callable

from ..tofe.params import init_from_shapes


def no_params(cfg, tcfg):
    return {}


def never(tcfg):
    return False


def same_config(cfg, tcfg, step, steps):
    return tcfg


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    inference: Callable
    topk_macs: Callable
    ratios_for_budget: Callable
    param_shapes: Callable = no_params
    train_forward: Callable = None
    train_backward: Callable = None
    cache_type: type = None
    train_schedule: Callable = same_config
    needs_teacher: Callable = never
    learned_selector: bool = False
    uses_approximator: bool = False
    reuses: bool = True
    learned_ratios: bool = False
    topk_only: bool = False
    noise: bool = True
    teacher_features: bool = False

    def __post_init__(self):
        if (self.train_forward is None) != (self.train_backward is None):
            raise ValueError(f"method {self.name!r}: train_forward and train_backward come together")
        if self.train_forward is not None and self.cache_type is None:
            raise ValueError(f"method {self.name!r}: a trained method names its cache_type")

    def fresh_params(self, cfg, tcfg, rng, dtype):
        """Its fresh parameters, drawn in key order from ``param_shapes`` (``tofe.params.init_from_shapes``:
        weights trunc-normal, biases zero, LayerNorms ones / zeros, approximators' ``fc2`` zero)."""
        return init_from_shapes(self.param_shapes(cfg, tcfg), rng, dtype)
