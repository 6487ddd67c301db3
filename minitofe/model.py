"""The public API: a model is plain data (weights + configs), and a handful of functions use it.

    model = load_model("weights/tofe_fmnist.npz")          # or new_model(cfg, tcfg, rng)
    logits, info = predict(model, images)                   # ToFe inference (model.tofe.method)
    logits, _ = predict(model, images, method="dense")      # the dense backbone
    out, cache = train_forward(model, images, labels, noise, teacher)
    dimages, grads = train_backward(cache)                  # grads.keys() == model.params.keys()

A developer validating another implementation feeds both the same ``params``, images and Gumbel ``noise``
(``draw_noise`` or their own arrays) and compares ``out`` (selector logits, masks, stage outputs, per-term
losses) and ``grads`` entry by entry.
"""
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .backend import to_numpy
from .config import ViTConfig
from .nn import vit
from .nn.params import init_params
from . import methods
from .tofe import train_inputs
from .tofe.config import ToFeConfig
from .tofe.training import draw_noise

__all__ = ["Model", "new_model", "load_model", "load_shipped", "add_tofe", "save_model", "predict",
           "train_forward", "train_backward", "draw_noise", "teacher_forward", "update_learned_ratios",
           "vit_forward"]


@dataclass
class Model:
    params: dict                            # {timm key or tofe.* key: array}
    cfg: ViTConfig
    tofe: ToFeConfig = field(default_factory=ToFeConfig)
    learned_keep_ratios: tuple = None       # running mean of the per-stage keep ratios seen in training

    def backbone_params(self):
        return {k: v for k, v in self.params.items() if not k.startswith("tofe.")}


def _check_model(model):
    if not isinstance(model, Model):
        raise TypeError(f"model must be a minitofe.Model (from new_model / load_model), got "
                        f"{type(model).__name__}")


def new_model(cfg, tofe=None, rng=None, dtype=np.float64):
    """Fresh backbone (timm init) and ToFe modules for ``tofe.method``; ``dtype`` float32 or float64
    (the inits check their arguments: ``nn.params.check_init_args``)."""
    rng = np.random.default_rng(0) if rng is None else rng
    tofe = ToFeConfig() if tofe is None else tofe
    params = init_params(cfg, rng, dtype)
    params.update(methods.init_params(cfg, tofe, rng, dtype))
    return Model(params, cfg, tofe)


def load_model(path, model=None, num_heads=None, dtype=None):
    """Load a ``.npz`` (minitofe: config, ToFe config and learned ratios inside), ``.safetensors`` or
    ``.pth`` (timm layout: backbone only, so the ToFe method is ``dense`` until ``add_tofe``).
    ``model`` / ``num_heads`` name the preset or head count a timm file needs; ``dtype`` casts."""
    from .io.weights import load_weights
    params, cfg, meta = load_weights(path, model=model, num_heads=num_heads, dtype=dtype)
    meta = meta or {}
    if "tofe" in meta:
        tofe = ToFeConfig.from_dict(meta["tofe"])
    else:
        tofe = ToFeConfig(method="dense")
    ratios = meta.get("learned_keep_ratios")
    return Model(params, cfg, tofe, tuple(ratios) if ratios is not None else None)


def load_shipped(method="tofe", rng=None, dtype=None, random_fallback=True):
    """The weights minitofe ships, loaded by name (``minitofe.io.shipped``) -> (model, description).

    The fine-tuned ToFe model when it is shipped and ``method`` is its method (``method=None``: whatever
    its method); otherwise the dense backbone with fresh modules for ``method`` (selectors at their random
    init, approximators at the identity; ``None``: the training-free ``idle``, which has none), said in
    the description; with ``random_fallback``, random weights (also said) when no file is found, else
    ``ValueError``."""
    from .config import get_config
    from .io.shipped import BACKBONE_FILE, BACKBONE_MODEL, TOFE_FILE, find_shipped, weights_dirs
    tofe_path, backbone_path = find_shipped(TOFE_FILE), find_shipped(BACKBONE_FILE)
    if tofe_path is not None:
        model = load_model(tofe_path, dtype=dtype)
        if method in (None, model.tofe.method):
            ratios = ", ".join(f"{r:.3f}" for r in model.learned_keep_ratios or ())   # for a person to read
            return model, (f"fine-tuned {model.tofe.method} weights {tofe_path} (learned keep ratios "
                           f"({ratios}))")
    tofe = ToFeConfig(method="idle" if method is None else method)
    if backbone_path is not None:
        timm_layout = backbone_path.suffix != ".npz"
        backbone = load_model(backbone_path, model=BACKBONE_MODEL if timm_layout else None, dtype=dtype)
        model = add_tofe(backbone, tofe, rng)
        if not tofe.trainable:
            return model, f"{backbone_path} (backbone only: method {tofe.method!r}, training-free)"
        return model, (f"backbone {backbone_path} with FRESH {tofe.method} modules (random selectors, "
                       f"identity approximators: not trained)")
    if not random_fallback:
        raise ValueError(f"no shipped weights found (looked for {TOFE_FILE} and {BACKBONE_FILE} in "
                         f"{', '.join(map(str, weights_dirs()))})")
    model = new_model(get_config(BACKBONE_MODEL), tofe, rng, np.float32 if dtype is None else dtype)
    return model, "RANDOM weights (no shipped weights found): predictions are meaningless"


def add_tofe(model, tofe, rng=None):
    """Give a (backbone) model fresh ToFe modules for ``tofe.method`` (selectors, approximators at
    identity), in the params' dtype; existing ``tofe.*`` parameters are replaced. Returns the model."""
    rng = np.random.default_rng(0) if rng is None else rng
    dtype = next(iter(model.params.values())).dtype
    params = model.backbone_params()
    params.update(methods.init_params(model.cfg, tofe, rng, dtype))
    model.params, model.tofe, model.learned_keep_ratios = params, tofe, None
    return model


def save_model(path, model):
    """Save as minitofe ``.npz`` with the configs and learned keep ratios in its metadata."""
    from .io.weights import save_npz
    meta = {"tofe": model.tofe.to_dict()}
    if model.learned_keep_ratios is not None:
        meta["learned_keep_ratios"] = [float(r) for r in model.learned_keep_ratios]
    save_npz(path, model.params, model.cfg, meta)


def predict(model, images, method=None, keep_ratios=None, inference=None, kept_masks=None, fast=False):
    """Reduced (or dense) inference. ``method`` overrides ``model.tofe.method``; ``keep_ratios`` the
    per-stage rho_i for ``topk`` (default: the learned ratios, else the config's); ``inference`` is
    ``"topk"`` or ``"threshold"`` (evit / dynamicvit: top-K only; their ``keep_ratios`` are EViT's
    per-stage keep rates of the current tokens and DynamicViT's fractions of P). Returns logits
    (B, num_classes) and the info dict of ``tofe_inference`` (kept / frozen / reused per stage, realised
    MACs per image; the method's own ``inference``, from the registry ``minitofe.methods``).
    ``fast=True`` runs on the Numba kernels (``minitofe.kernels``; the reference path
    when Numba is absent): the choice is made here, once, and handed down as ``ops``."""
    _check_model(model)
    tcfg = model.tofe
    if method is not None or inference is not None:
        tcfg = tcfg.replace(**{k: v for k, v in (("method", method), ("inference", inference)) if v})
    if keep_ratios is None and tcfg.learned_ratios and model.learned_keep_ratios is not None:
        keep_ratios = model.learned_keep_ratios
    with kernels.thread_scope(fast, like=images):          # BLAS threads sized to the free cores
        return methods.inference(model.params, images, model.cfg, tcfg, keep_ratios=keep_ratios,
                                 kept_masks=kept_masks, ops=kernels.ops(fast, like=images))


def train_forward(model, images, labels, noise, teacher=None, tau=None, hard=True, fast=False):
    """The training forward of ``model.tofe.method`` with the given noise (see ``tofe_train_forward``)."""
    _check_model(model)
    return methods.train_forward(model.params, images, labels, model.cfg, model.tofe, noise, teacher, tau,
                                 hard, ops=kernels.ops(fast, like=images))


def train_backward(cache):
    """Gradients of the total training loss: (dimages, grads) with ``grads.keys() == params.keys()``."""
    return methods.train_backward(cache)


def update_learned_ratios(model, batch_keep_ratios, momentum=0.99):
    """Running mean of the per-stage keep ratios seen in training (stored with the weights and used by
    ``topk`` inference): r <- momentum * r + (1 - momentum) * batch (the first batch initialises it)."""
    new = np.asarray(to_numpy(batch_keep_ratios), dtype=np.float64)     # may be a device array
    if model.learned_keep_ratios is None:
        model.learned_keep_ratios = tuple(float(v) for v in new)
    else:
        old = np.asarray(model.learned_keep_ratios)
        model.learned_keep_ratios = tuple(float(v) for v in momentum * old + (1 - momentum) * new)
    return model.learned_keep_ratios


def teacher_forward(teacher_params, images, cfg, stages, fast=False):
    """The dense teacher's outputs (``tofe.train_inputs.teacher_forward``); ``fast=True``: the blocks on
    the Numba kernels (the choice is made here and handed down as ``ops``)."""
    ops = kernels.ops(fast, like=images)
    return train_inputs.teacher_forward(teacher_params, images, cfg, stages, ops=ops)


def vit_forward(params, images, cfg, check=True, fast=False, pre_logits=False):
    """The dense ViT's forward (``nn.vit.vit_forward``); ``fast=True``: the blocks on the Numba kernels
    (the choice is made here and handed down as ``ops``)."""
    return vit.vit_forward(params, images, cfg, check, kernels.ops(fast, like=images), pre_logits)
