"""Running any registered method by its name, the way ``predict``, the trainer, the golden bundles and
the bench do (docs/method.md, "Where each method lives"): the inputs are checked once here, then the
method's own functions (``protocol.Method``) run.
"""
import numpy as np

from .params import check_method_params
from ..registry import entries, get
from ..nn.embed import check_images
from ..nn.params import check_init_args, check_params
from ..tofe.config import ToFeConfig


def method_of(tcfg):
    """The registry's entry for ``tcfg`` (a ``ToFeConfig``, else a TypeError)."""
    if not isinstance(tcfg, ToFeConfig):
        raise TypeError(f"tcfg must be a minitofe.ToFeConfig, got {type(tcfg).__name__}")
    return get(tcfg.method)


def inference(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, check=True, ops=None):
    """images: (B, Cin, Hh, W) -> logits (B, num_classes), info (``tofe.inference.tofe_inference``'s
    keys) of method ``tcfg.method``. ``ops``: the functions the blocks run on (None: the reference)."""
    method = method_of(tcfg)
    if check:
        check_images(images, cfg, check_params(params, cfg, extra_ok=("tofe.",)))
        check_method_params(params, cfg, tcfg)
    if method.topk_only and tcfg.inference != "topk":
        raise ValueError(f"method {tcfg.method!r} decides by top-K only (the authors' rule); got "
                         f"inference={tcfg.inference!r}")
    return method.inference(params, images, cfg, tcfg, keep_ratios=keep_ratios, kept_masks=kept_masks,
                            ops=ops)


def train_forward(params, images, labels, cfg, tcfg, noise, teacher=None, tau=None, hard=True, ops=None):
    """One training forward of method ``tcfg.method`` -> out, cache (``tofe.training.tofe_train_forward``
    says what ``out`` holds). A training-free method is refused."""
    method = method_of(tcfg)
    if method.train_forward is None:
        raise ValueError(f"method {tcfg.method!r} has no learned selector and is not trained "
                         f"(training-free); use tofe_inference")
    return method.train_forward(params, images, labels, cfg, tcfg, noise, teacher, tau, hard, ops)


def train_backward(cache):
    """The backward of the method whose forward made ``cache`` -> dimages, grads (keys of params)."""
    for method in entries():
        if method.cache_type is not None and isinstance(cache, method.cache_type):
            return method.train_backward(cache)
    what = f"a tuple of {len(cache)}" if isinstance(cache, tuple) else type(cache).__name__
    raise TypeError(f"cache must be the cache tofe_train_forward returned (a TrainCache), got {what}")


def param_shapes(cfg, tcfg):
    """``{key: shape}`` of method ``tcfg.method``'s own ``tofe.*`` parameters."""
    return get(tcfg.method).param_shapes(cfg, tcfg)


def init_params(cfg, tcfg, rng, dtype=np.float64):
    """Fresh ``tofe.*`` parameters of method ``tcfg.method`` (``tofe.params.init_tofe_params``' rule)."""
    check_init_args(cfg, rng, dtype, "init_tofe_params")
    if not isinstance(tcfg, ToFeConfig):
        raise TypeError(f"init_tofe_params needs a ToFeConfig, got {type(tcfg).__name__}")
    return get(tcfg.method).fresh_params(cfg, tcfg, rng, dtype)


def topk_macs(cfg, tcfg, ratios):
    """MACs of one image in ``topk`` inference of method ``tcfg.method`` at per-stage ``ratios``."""
    return get(tcfg.method).topk_macs(cfg, tcfg, ratios)


def ratios_for_budget(cfg, tcfg, budget, base=None):
    """Method ``tcfg.method``'s keep ratios meeting ``budget`` x dense MACs (``base``: the profile a
    ToFe method scales, e.g. its learned ratios)."""
    return get(tcfg.method).ratios_for_budget(cfg, tcfg, budget, base)
