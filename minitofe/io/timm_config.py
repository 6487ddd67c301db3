"""Which ``ViTConfig`` a timm state dict (a ``.safetensors`` / ``.pth`` file) is an instance of.

The keys and shapes prove: embed_dim, patch size, in_chans, depth, MLP width, qkv bias, LayerScale, the
class / register / distillation tokens, ``pre_norm``, where the final norm sits (``norm`` before
pooling, ``fc_norm`` after it, or neither), num_classes (0 without ``head``) and, once the image size is
known, whether ``pos_embed`` covers the prefix tokens (``no_embed_class``). They cannot tell the number
of heads, the image size (``pos_embed`` is flat: 64 positions are 8x8 or 16x4 patches), the pooling
(token or avg), nor the block's maths (LayerNorm eps, activation, pre- or post-norm, pool_include_prefix).

Those come from one statement, the ``model`` argument, checked against everything the keys prove:
a minitofe preset name, a ``ViTConfig``, a timm architecture name (needs timm: the architecture is
built on torch's meta device with the file's depth and class count and read like a live model, so a
post-norm ``vit_base_patch16_rpn_224`` file is refused as its model is), or a timm module. Without
``model``, the stated facts are required: ``num_heads``, ``img_size`` and ``global_pool``; the block's
maths then default to timm's ``VisionTransformer`` (pre-norm ``Block``, LayerNorm eps 1e-6, exact GELU,
patch tokens pooled) unless ``norm_eps``, ``act_layer`` or ``pool_include_prefix`` say otherwise.
Keys of timm features minitofe does not compute (qk-norm, attention pooling, gated MLP, ...) are refused
by name before anything else.
"""
import re

from ..config import PRESETS, ViTConfig, get_config
from .timm import PATCH_KEY, TOFE_PREFIX
from .timm_model import LAYERSCALE_MARKER, read_timm_module, timm_template

STATED = ("img_size", "global_pool", "norm_eps", "act_layer", "pool_include_prefix")
UNSUPPORTED_KEYS = [
    (r"\.attn\.[qk]_norm\.", "qk_norm=True (a norm on queries and keys)"),
    (r"\.attn\.norm\.", "scale_attn_norm=True"), (r"\.attn\.gate\.", "gated attention"),
    (r"\.mlp\.norm\.", "scale_mlp_norm=True"), (r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.", "a gated MLP (SwiGLU)"),
    (r"^attn_pool\.", "attention pooling (global_pool='map')"),
    (r"^patch_embed\.norm\.", "a norm inside the patch embedding (embed_norm_layer)"),
]


def _shape(state, key):
    if key not in state:
        raise ValueError(f"cannot read the model config: key {key!r} is missing from the weights")
    return tuple(int(n) for n in state[key].shape)


def refuse_unsupported_keys(state):
    for key in state:
        for pattern, what in UNSUPPORTED_KEYS:
            if re.search(pattern, key):
                raise ValueError(f"the weights have {key!r}: {what}, which minitofe does not compute")


def _depth(state):
    idx = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"cannot read the depth: block indices in the weights are {sorted(idx)}, "
                         f"expected 0..depth-1")
    return len(idx)


def key_facts(state):
    """The ViTConfig fields the keys and shapes prove, and the number of pos_embed positions."""
    conv = _shape(state, PATCH_KEY)
    if len(conv) != 4 or conv[2] != conv[3]:
        raise ValueError(f"{PATCH_KEY}: expected timm's conv shape (C, Cin, p, p) with square p, got {conv}")
    C = conv[0]
    reg = _shape(state, "reg_token") if "reg_token" in state else (1, 0, C)
    if len(reg) != 3 or reg[0] != 1 or reg[2] != C:
        raise ValueError(f"reg_token: expected (1, register tokens, {C}), got {reg}")
    pos = _shape(state, "pos_embed")
    if len(pos) != 3 or pos[0] != 1 or pos[2] != C:
        raise ValueError(f"pos_embed: expected (1, positions, {C}), got {pos}")
    hidden = _shape(state, "blocks.0.mlp.fc1.weight")[0]
    if "norm.weight" in state and "fc_norm.weight" in state:
        raise ValueError("the weights have both 'norm' and 'fc_norm': timm's ViT has one or the other")
    facts = dict(patch_size=conv[2], in_chans=conv[1], embed_dim=C, depth=_depth(state), mlp_ratio=hidden / C,
                 num_classes=_shape(state, "head.weight")[0] if "head.weight" in state else 0,
                 qkv_bias="blocks.0.attn.qkv.bias" in state,
                 init_values=LAYERSCALE_MARKER if "blocks.0.ls1.gamma" in state else None,
                 class_token="cls_token" in state, reg_tokens=reg[1], distilled="dist_token" in state,
                 pre_norm="norm_pre.weight" in state)
    return facts, pos[1], ("norm.weight" in state, "fc_norm.weight" in state)


def _mismatches(cfg, facts, positions, norms):
    """What the statement ``cfg`` says differently from the keys, as 'field: statement X, weights Y'."""
    bad = []
    for name, value in facts.items():
        want = getattr(cfg, name)
        same = (want is None) == (value is None) if name == "init_values" else want == value
        if name == "mlp_ratio":
            same = cfg.mlp_hidden == round(value * cfg.embed_dim)
        if not same:
            bad.append((name, want, value))
    if (cfg.use_norm, cfg.use_fc_norm) != norms:
        say = lambda n: {(True, False): "norm", (False, True): "fc_norm",  # noqa
                         (False, False): "no final norm"}[n]
        bad.append(("final norm", say((cfg.use_norm, cfg.use_fc_norm)), say(norms)))
    if not bad and cfg.embed_len != positions:
        bad.append(("img_size", cfg.img_size, f"a pos_embed of {positions} positions"))
    return bad


def _statement(state, model, img_size):
    """``model`` (preset name, timm name, ViTConfig or timm module) -> (ViTConfig, its name, its kind)."""
    num_classes = _shape(state, "head.weight")[0] if "head.weight" in state else 0
    if isinstance(model, ViTConfig):
        return model, "the given config", "config"
    if isinstance(model, str) and model in PRESETS:
        return get_config(model).replace(num_classes=num_classes), f"preset {model!r}", "preset"
    if isinstance(model, str):
        template = timm_template(model, num_classes, _depth(state), img_size)
        return read_timm_module(template), f"timm model {model!r}", "model"
    return read_timm_module(model), f"timm model {type(model).__name__}", "model"


def stated_config(state, model, num_heads=None, **stated):
    """Check a statement against the keys -> ``ViTConfig`` (see the module docstring)."""
    cfg, label, kind = _statement(state, model, stated.get("img_size"))
    facts, positions, norms = key_facts(state)
    bad = [f"{n}: {kind} {a!r}, weights {b!r}" for n, a, b in _mismatches(cfg, facts, positions, norms)]
    if num_heads is not None and num_heads != cfg.num_heads:
        bad.append(f"num_heads: {kind} {cfg.num_heads}, asked for {num_heads}")
    for name, value in stated.items():
        if value is not None and getattr(cfg.replace(**{name: value}), name) != getattr(cfg, name):
            bad.append(f"{name}: {kind} {getattr(cfg, name)!r}, asked for {value!r}")
    if bad:
        raise ValueError(f"the weights do not match {label}: " + "; ".join(bad))
    return cfg


def infer_config(state_dict, model=None, num_heads=None, **stated):
    """A ``ViTConfig`` for a timm state dict (values: anything with ``.shape``): from the statement
    ``model``, or from the keys plus ``num_heads``, ``img_size`` and ``global_pool`` (required) and
    ``norm_eps``, ``act_layer``, ``pool_include_prefix`` (timm's defaults when not given)."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    unknown = sorted(set(stated) - set(STATED))
    if unknown:
        raise TypeError(f"infer_config: unknown option(s) {unknown}; known: {list(STATED)}")
    state = {k: v for k, v in state_dict.items() if not k.startswith(TOFE_PREFIX)}
    refuse_unsupported_keys(state)
    if model is not None:
        return stated_config(state, model, num_heads, **stated)
    facts, positions, (use_norm, use_fc_norm) = key_facts(state)
    hint = f"name a preset (--model NAME, one of {sorted(PRESETS)}) or a timm architecture, or pass"
    if num_heads is None:
        raise ValueError(f"the number of attention heads is not stored in the weights: {hint} the head "
                         f"count (--heads N)")
    for name, flag, example in (("img_size", "--img-size", "224 or 256x64"), ("global_pool", "--global-pool",
                                                                               "token or avg")):
        if stated.get(name) is None:
            raise ValueError(f"the {name} is not stored in a timm file ({positions} positions in pos_embed): "
                             f"{hint} {flag} ({name}=..., e.g. {example})")
    options = {k: v for k, v in stated.items() if v is not None}
    final = use_norm or use_fc_norm
    fc_norm = use_fc_norm if final else None
    cfg = ViTConfig(num_heads=num_heads, final_norm=final, **facts, **options,
                    fc_norm=None if fc_norm == (options["global_pool"] == "avg") else fc_norm)
    T = cfg.num_prefix_tokens
    if positions == cfg.num_patches and T:
        cfg = cfg.replace(no_embed_class=True)
    elif positions != cfg.num_tokens:
        raise ValueError(f"pos_embed has {positions} positions, but img_size {cfg.img_size} with patch size "
                         f"{cfg.patch_size} has {cfg.num_patches} patches ({T} prefix tokens): "
                         f"another image size?")
    return cfg


def legacy_minitofe_config(state, num_heads):
    """Files written by minitofe before configs were stored: square images, 'avg' pooling iff fc_norm
    or no class token (minitofe could write nothing else then)."""
    facts, positions, (_, use_fc_norm) = key_facts(state)
    P = positions - facts["class_token"] - facts["distilled"]
    grid = int(round(P ** 0.5)) if P > 0 else 0
    if grid * grid != P:
        raise ValueError(f"pos_embed has {positions} positions: not a square grid plus prefix tokens")
    pool = "avg" if use_fc_norm or not facts["class_token"] else "token"
    return ViTConfig(num_heads=num_heads, img_size=grid * facts["patch_size"], global_pool=pool, **facts)


def match_preset(cfg, model=None, num_heads=None):
    """A config (a minitofe file's) against the statement a caller gave anyway: a preset name, a timm
    architecture name or module, a ViTConfig, or a head count. Returns ``cfg``."""
    if num_heads is not None and num_heads != cfg.num_heads:
        raise ValueError(f"the file's config has num_heads={cfg.num_heads}, asked for {num_heads}")
    if model is None:
        return cfg
    if isinstance(model, str) and model in PRESETS:
        want, label, kind = (get_config(model).replace(num_classes=cfg.num_classes), f"preset {model!r}",
                             "preset")
    elif isinstance(model, str):
        template = timm_template(model, cfg.num_classes, cfg.depth, cfg.img_size)
        want, label, kind = read_timm_module(template), f"timm model {model!r}", "model"
    elif isinstance(model, ViTConfig):
        want, label, kind = model, "the given config", "config"
    else:
        want, label, kind = read_timm_module(model), f"timm model {type(model).__name__}", "model"
    bad = []
    for name in cfg.to_dict():
        a, b = getattr(want, name), getattr(cfg, name)
        if ((a is None) != (b is None)) if name == "init_values" else a != b:
            bad.append(f"{name}: {kind} {a!r}, weights {b!r}")
    if bad:
        raise ValueError(f"the weights do not match {label}: " + "; ".join(bad))
    return cfg
