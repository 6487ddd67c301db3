"""A toy baseline written the way a new method is added to minitofe: this one file, and one
``register`` line (in ``tests/test_method_registry.py``). No other module knows it.

``toy-norm``: each stage keeps the top-K patches by their token norm (a training-free ``Scorer`` handed to
ToFe's freeze-and-reuse loop), frozen tokens carried unchanged; the logits are scaled by one learned
temperature ``tofe.toy.scale``, trained on the dense forward with the cross-entropy."""
from functools import partial
from typing import NamedTuple

from minitofe.methods.protocol import Method
from minitofe.nn.layers import cross_entropy_backward, cross_entropy_forward
from minitofe.nn.vit import vit_backward, vit_forward
from minitofe.tofe.budget import ratios_for_budget, topk_macs
from minitofe.tofe.inference import tofe_inference
from minitofe.tofe.scoring import Scorer


def norm_scores(x, params, block_prefix, cfg):
    """x: (B, n, C) -> (B, n - T): each patch token's squared norm."""
    return (x[:, cfg.num_prefix_tokens:] ** 2).sum(axis=-1)


NORM = Scorer(norm_scores, lambda n, C: n * C)          # one multiply-add per channel and token


class ToyCache(NamedTuple):
    c_vit: tuple
    c_ce: tuple
    logits: object
    scale: object


def toy_inference(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, ops=None):
    logits, info = tofe_inference(params, images, cfg, tcfg, keep_ratios, kept_masks, check=False, ops=ops,
                                  scorer=NORM)
    return logits * params["tofe.toy.scale"], info


def toy_train_forward(params, images, labels, cfg, tcfg, noise, teacher=None, tau=None, hard=True, ops=None):
    logits, c_vit = vit_forward(params, images, cfg, check=False)
    scaled = logits * params["tofe.toy.scale"]
    loss, c_ce = cross_entropy_forward(scaled, labels)
    out = {"loss": float(loss), "losses": {"cls": float(loss), "total": float(loss)}, "logits": scaled}
    return out, ToyCache(c_vit, c_ce, logits, params["tofe.toy.scale"])


def toy_train_backward(cache):
    dscaled = cross_entropy_backward(1.0, cache.c_ce)
    dimages, grads = vit_backward(dscaled * cache.scale, cache.c_vit)
    grads["tofe.toy.scale"] = (dscaled * cache.logits).sum(keepdims=True).reshape(1)
    return dimages, grads


TOY = Method("toy-norm", "token-norm top-K, frozen tokens carried, a learned logit temperature",
             toy_inference, partial(topk_macs, scorer=NORM), partial(ratios_for_budget, scorer=NORM),
             param_shapes=lambda cfg, tcfg: {"tofe.toy.scale": (1,)}, train_forward=toy_train_forward,
             train_backward=toy_train_backward, cache_type=ToyCache)
