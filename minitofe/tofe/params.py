"""The ToFe parameters: their keys and shapes, initialisation, and validation (docs/method.md,
"Token selector", "Freeze path").

They sit in the same flat dict as the backbone's timm keys, under ``tofe.``:

    tofe.selector.{i}.norm.{weight,bias}   (C,)          only when the method has a learned selector
    tofe.selector.{i}.fc1.weight           (C/2, C)      u = GELU(LN(x) W1.T + b1)
    tofe.selector.{i}.fc2.weight           (C/4, C)      input is concat(u, g): 2 * (C/2) = C
    tofe.selector.{i}.fc3.weight           (2, C/4)      [keep, freeze]
    tofe.approx.{i}.norm.{weight,bias}     (C,)          only when the method uses the MLP approximator
    tofe.approx.{i}.fc1.weight             (C/r, C)
    tofe.approx.{i}.fc2.weight             (C, C/r)      zero at init: a fresh approximator is the identity

(each ``.weight`` with its ``.bias``), for i in range(number of stages): the ``mlp`` kinds. Another
selector or approximator kind (``ToFeConfig.selector`` / ``.approximator``, ``parts.py``) has the keys
its own file lists under the same prefixes. A baseline's own parameters
(DynamicViT's ``tofe.predictor.{i}.*``) are the baseline's (``minitofe.methods``); ``init_from_shapes``
initialises any method's, and ``check_tofe_params`` takes the keys every method knows from the caller.
"""
import numpy as np

from .approximator import approximator_shapes  # noqa: F401 (the mlp kinds' keys, named here too)
from .config import ToFeConfig
from .parts import approximator_of, selector_of
from .selector import selector_shapes  # noqa: F401
from ..nn.block import check_default_block
from ..nn.params import check_init_args, key_mismatch, trunc_normal


def tofe_param_shapes(cfg, tcfg, selector=None, approximator=None):
    """Ordered ``{key: shape}`` of the ToFe modules for backbone ``cfg`` (ViTConfig) and ``tcfg``
    (ToFeConfig). ``selector`` / ``approximator`` override what the method needs (None: ask tcfg, which
    has no approximator at the last stage under ``last_stage="drop"``; True: one at every stage)."""
    S = len(tcfg.resolved_stages(cfg.depth))
    selector = tcfg.learned_selector if selector is None else selector
    approximated = tcfg.approximated_stages(cfg.depth) if approximator is None else (approximator,) * S
    C = cfg.embed_dim
    shapes = {}
    for i in range(S):
        if selector:
            shapes.update(selector_of(tcfg).shapes(f"tofe.selector.{i}.", C, tcfg.approx_reduction))
    for i in range(S):
        if approximated[i]:
            shapes.update(approximator_of(tcfg).shapes(f"tofe.approx.{i}.", C, tcfg.approx_reduction))
    return shapes


def init_tofe_params(cfg, tcfg, rng, dtype=np.float64):
    """Fresh ToFe parameters: Linear weights trunc-normal(0.02) with zero biases, LayerNorm (the 1-d
    weights) ones/zeros, and the approximator's ``fc2`` weight and bias zero (so it starts as the
    identity)."""
    check_init_args(cfg, rng, dtype, "init_tofe_params")
    if not isinstance(tcfg, ToFeConfig):
        raise TypeError(f"init_tofe_params needs a ToFeConfig, got {type(tcfg).__name__}")
    return init_from_shapes(tofe_param_shapes(cfg, tcfg), rng, dtype)


def init_from_shapes(shapes, rng, dtype):
    """``{key: shape}`` -> fresh parameters, drawn in key order (the rule of ``init_tofe_params``)."""
    params = {}
    for key, shape in shapes.items():
        if len(shape) == 1:                                     # LayerNorm weight, or a bias
            v = np.ones(shape) if key.endswith("weight") else np.zeros(shape)
        elif key.startswith("tofe.approx.") and ".fc2." in key:
            v = np.zeros(shape)
        elif key.endswith(".weight"):
            v = trunc_normal(rng, shape, 0.02)
        else:
            v = np.zeros(shape)
        params[key] = np.ascontiguousarray(v, dtype=dtype)
    return params


def check_tofe_params(params, cfg, tcfg, want=None, known=None):
    """Raise ``ValueError`` naming missing, mis-shaped and unknown ``tofe.*`` keys for the method in
    ``tcfg``. Extra keys a method does not use are fine (e.g. a ``tofe`` checkpoint run as
    ``tofe-identity``), but ``tofe.*`` keys no method of this config has (another stage count, another C)
    are reported. ``want`` / ``known``: the keys the method needs and those any method knows, with their
    shapes (None: ToFe's own; ``minitofe.methods.check_method_params`` passes every method's). Returns
    the list of the ToFe keys the method needs."""
    if not isinstance(tcfg, ToFeConfig):
        raise TypeError(f"tcfg must be a minitofe.ToFeConfig, got {type(tcfg).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    check_default_block(cfg, "ToFe")
    if tcfg.last_stage == "drop" and cfg.global_pool != "token":
        raise ValueError(f"last_stage='drop' needs a head that reads the class token only (global_pool="
                         f"'token'), got global_pool={cfg.global_pool!r}: the head would average the last "
                         f"stage's frozen tokens, which no approximator updates")
    want = tofe_param_shapes(cfg, tcfg) if want is None else want
    C, r = cfg.embed_dim, tcfg.approx_reduction
    if known is None:
        known = tofe_param_shapes(cfg, tcfg, selector=tcfg.learned_selector or C % 4 == 0,
                                  approximator=tcfg.uses_approximator or C % r == 0)
    present = [k for k in params if k.startswith("tofe.")]
    if want and not present:
        raise ValueError(f"weights have no ToFe selector/approximator parameters; method "
                         f"'{tcfg.method}' needs them — train or init them first "
                         f"(minitofe.tofe.params.init_tofe_params); missing keys {list(want)}")
    missing = [k for k in want if k not in params]
    misshaped = [f"{k}: expected {known[k]}, got {tuple(params[k].shape)}"
                 for k in present if k in known and tuple(params[k].shape) != known[k]]
    unknown = [k for k in present if k not in known]
    problem = key_mismatch(missing, unknown, misshaped, unexpected_label="unknown keys")
    if problem:
        raise ValueError(f"ToFe parameters do not match method '{tcfg.method}' with stages "
                         f"{tcfg.resolved_stages(cfg.depth)}: " + problem)
    return list(want)
