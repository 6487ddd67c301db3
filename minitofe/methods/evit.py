"""Method ``evit``: EViT as its authors define it (docs/method.md, "Baselines"; docs/baselines.md).

In each stage's first block, after attention, keep the ceil(rate * n) most class-attended patch tokens
and fuse the rest into one token (``evit_block``); the whole model forward and backward is
``evit_model``, the keep rate for a budget ``evit_budget``. Fine-tuned with the keep rate annealed from 1
(``train_schedule``), the cross-entropy alone, no Gumbel noise and no teacher.
"""
from .evit_block import keep_rate_at
from .evit_budget import EVIT_RULE, evit_keep_rate, evit_topk_macs
from .evit_model import EvitCache, evit_inference, evit_train_backward, evit_train_forward
from .protocol import Method
from .rate_search import ratios_for_budget


def evit_predict(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, ops=None):
    """EViT ranks by its own attention: no replayed masks; it needs a class token."""
    if kept_masks is not None:
        raise ValueError("method 'evit' ranks by its own attention: kept_masks cannot be given")
    if not cfg.class_token:
        raise ValueError("method 'evit' needs a class token (class_token=True)")
    return evit_inference(params, images, cfg, tcfg, keep_ratios, ops=ops)


def evit_train(params, images, labels, cfg, tcfg, noise=None, teacher=None, tau=None, hard=True, ops=None):
    """The training forward at ``tcfg``'s keep rate (no noise, no teacher, no temperature)."""
    return evit_train_forward(params, images, labels, cfg, tcfg, ops=ops)


def evit_schedule(cfg, tcfg, step, steps):
    """The keep rate at ``step``: 1 during the warm-up, then annealed to its target (``keep_rate_at``)."""
    rate = keep_rate_at(step, steps, evit_keep_rate(cfg, tcfg), tcfg.evit_warmup, tcfg.evit_anneal)
    return tcfg.replace(evit_keep_rate=rate)


def evit_ratios(cfg, tcfg, budget, base=None):
    """The keep rate meeting ``budget``, at every stage (``base`` is ToFe's: EViT has one number)."""
    return ratios_for_budget(cfg, tcfg, budget, EVIT_RULE)


EVIT = Method("evit", "EViT: inattentive tokens fused into one (the authors' method)", evit_predict,
              evit_topk_macs, evit_ratios,
              train_forward=evit_train, train_backward=evit_train_backward, cache_type=EvitCache,
              train_schedule=evit_schedule, reuses=False, topk_only=True, noise=False)
