"""timm's state-dict layout <-> minitofe's parameter dict, and a ``ViTConfig`` read from timm weights.

Owns the one documented layout change of DESIGN.md "Backbone": timm stores the patch embedding as a
convolution weight ``(C, Cin, p, p)``; minitofe holds it as the equivalent Linear weight
``(C, Cin * p * p)`` (a C-order reshape, so ``to_timm_state_dict`` undoes it exactly). Every other key is
taken unchanged: same name, shape and dtype. Nothing is cast unless a ``dtype`` is asked for, and
nothing is broadcast or renamed; ``check_params`` reports missing, unexpected and mis-shaped keys by name.

This module never imports torch or timm. A live timm model is read by duck typing (``state_dict()`` and a
few attributes), torch tensors through ``.detach().cpu().numpy()``.
"""
import math

import numpy as np

from ..config import PRESETS, ViTConfig, get_config
from ..nn.params import check_params, param_shapes

PATCH_KEY = "patch_embed.proj.weight"
TOFE_PREFIX = "tofe."          # ToFe selector/approximator keys: minitofe-only, never exported to timm
# LayerScale's init value is not stored in a checkpoint (the gammas are trained values); a config read
# from weights only needs to know that LayerScale is present, which decides the ``ls*.gamma`` keys.
LAYERSCALE_MARKER = 1e-5


def timm_patch_shape(cfg):
    """timm's patch-embedding conv weight shape ``(C, Cin, p, p)``."""
    return (cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size)


def to_numpy(key, value, dtype=None):
    """One state-dict value -> a C-contiguous NumPy array that owns its memory. Accepts NumPy arrays and
    torch-like tensors (duck-typed ``.detach().cpu().numpy()``). Casts only when ``dtype`` is given."""
    if not isinstance(key, str):
        raise TypeError(f"state dict keys must be strings, got {key!r} ({type(key).__name__})")
    if hasattr(value, "detach") and not isinstance(value, np.ndarray):
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as e:          # e.g. bfloat16, which NumPy has no type for
            raise TypeError(f"{key}: cannot convert tensor of dtype {getattr(value, 'dtype', '?')} "
                            f"to NumPy ({e}); convert it to float32 first") from None
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{key}: expected an array or tensor, got {type(value).__name__}")
    if dtype is not None:
        return value.astype(dtype, order="C", copy=True)
    return np.array(value, order="C", copy=True)


def from_timm_state_dict(state_dict, cfg, dtype=None):
    """{timm key: array or tensor} -> minitofe params {key: array}, validated against ``cfg``.

    The only change is the patch-embedding conv weight (C, Cin, p, p) -> (C, Cin * p * p). Arrays are
    copied (contiguous, own memory), in ``param_shapes`` order; the dtype is kept unless ``dtype`` asks
    for an explicit cast."""
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of key -> array, got {type(state_dict).__name__}")
    params = {k: to_numpy(k, v, dtype) for k, v in state_dict.items()}
    if PATCH_KEY in params:
        w, want = params[PATCH_KEY], timm_patch_shape(cfg)
        if w.shape != want:
            raise ValueError(f"{PATCH_KEY}: expected timm's conv shape {want}, got {w.shape}")
        params[PATCH_KEY] = w.reshape(w.shape[0], -1)      # C-order: (Cin, p, p) flattened row-major
    check_params(params, cfg)
    return {k: params[k] for k in param_shapes(cfg)}       # timm's order, whatever the file's order


def to_timm_state_dict(params, cfg):
    """minitofe params -> {timm key: array} in timm's key order, conv weight back to (C, Cin, p, p).

    ``tofe.*`` keys are left out (timm has no such modules). The arrays may share memory with params."""
    check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    out = {k: np.ascontiguousarray(params[k]) for k in param_shapes(cfg)}
    out[PATCH_KEY] = out[PATCH_KEY].reshape(timm_patch_shape(cfg))
    return out


# ---- a ViTConfig from the shapes of a timm state dict ----

def _shape(state_dict, key):
    if key not in state_dict:
        raise ValueError(f"cannot infer the model config: key {key!r} is missing from the weights")
    return tuple(int(n) for n in state_dict[key].shape)


def _depth(state_dict):
    idx = {int(k.split(".")[1]) for k in state_dict
           if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"cannot infer depth: block indices in the weights are {sorted(idx)}, "
                         f"expected 0..depth-1")
    return len(idx)


def _inferred_fields(state_dict):
    """Every ViTConfig field except num_heads, read from key names and shapes."""
    conv = _shape(state_dict, PATCH_KEY)
    if len(conv) != 4 or conv[2] != conv[3]:
        raise ValueError(f"{PATCH_KEY}: expected timm's conv shape (C, Cin, p, p), got {conv}")
    C, in_chans, p = conv[0], conv[1], conv[2]
    class_token, distilled = "cls_token" in state_dict, "dist_token" in state_dict
    pos = _shape(state_dict, "pos_embed")
    n_patches = pos[1] - class_token - distilled if len(pos) == 3 else -1
    grid = math.isqrt(max(n_patches, 0))
    if n_patches <= 0 or grid * grid != n_patches:
        raise ValueError(f"pos_embed {pos}: expected (1, prefix tokens + grid**2, C) with "
                         f"{class_token + distilled} prefix token(s)")
    hidden = _shape(state_dict, "blocks.0.mlp.fc1.weight")[0]
    mlp_ratio = hidden / C
    if mlp_ratio * C != hidden:
        raise ValueError(f"blocks.0.mlp.fc1.weight: MLP width {hidden} is not mlp_ratio * embed_dim {C} "
                         f"for any float mlp_ratio")
    if "head.weight" not in state_dict:
        raise ValueError("the weights have no 'head.weight': models without a classifier head "
                         "(num_classes=0) are not supported")
    return dict(img_size=grid * p, patch_size=p, in_chans=in_chans,
                num_classes=_shape(state_dict, "head.weight")[0], embed_dim=C,
                depth=_depth(state_dict), mlp_ratio=mlp_ratio,
                qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
                init_values=LAYERSCALE_MARKER if "blocks.0.ls1.gamma" in state_dict else None,
                class_token=class_token,
                global_pool="avg" if "fc_norm.weight" in state_dict or not class_token else "token",
                distilled=distilled)


def _preset_mismatches(preset, fields):
    bad = []
    for name, value in fields.items():
        want = getattr(preset, name)
        same = (want is None) == (value is None) if name == "init_values" else want == value
        if not same:
            bad.append(f"{name}: preset {want!r}, weights {value!r}")
    return bad


def match_preset(fields, model=None, num_heads=None):
    """ViTConfig fields (all but num_heads) -> ``ViTConfig``, with the heads from the preset ``model``
    or ``num_heads``. With ``model``, every field but ``num_classes`` must match the preset."""
    if model is None:
        if num_heads is None:
            raise ValueError("the number of attention heads is not stored in the weights: pass a preset "
                             f"name (--model NAME, one of {sorted(PRESETS)}) or the head count (--heads N)")
        return ViTConfig(num_heads=num_heads, **fields)
    preset = get_config(model).replace(num_classes=fields["num_classes"])
    bad = _preset_mismatches(preset, fields)
    if num_heads is not None and num_heads != preset.num_heads:
        bad.append(f"num_heads: preset {preset.num_heads}, asked for {num_heads}")
    if bad:
        raise ValueError(f"the weights do not match preset {model!r}: " + "; ".join(bad))
    return preset


def infer_config(state_dict, model=None, num_heads=None):
    """A ``ViTConfig`` for a timm state dict (values: anything with ``.shape``).

    Sizes come from the shapes. The number of heads is not in the weights: it comes from the preset
    ``model`` (a name in ``minitofe.config.PRESETS``) or ``num_heads``. With ``model``, the weights must
    match the preset in every field except ``num_classes`` (taken from the weights). Without a preset,
    ``init_values`` is ``LAYERSCALE_MARKER`` when LayerScale is present: it only decides the keys."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    return match_preset(_inferred_fields(state_dict), model, num_heads)


# ---- a live timm model (duck-typed; timm is never imported here) ----

def _square(name, value):
    """timm keeps patch/img sizes as (h, w) tuples; minitofe needs square ones."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"timm model {name}={tuple(value)}: minitofe supports square sizes only")
        value = value[0]
    return int(value)


def _model_attributes(model):
    """The config facts a timm ``VisionTransformer`` states as attributes (those it has)."""
    facts = {}
    for name in ("embed_dim", "num_classes", "num_prefix_tokens", "global_pool"):
        if getattr(model, name, None) is not None:
            facts[name] = getattr(model, name)
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "patch_size", None) is not None:
        facts["patch_size"] = _square("patch_embed.patch_size", embed.patch_size)
    if getattr(embed, "img_size", None) is not None:
        facts["img_size"] = _square("patch_embed.img_size", embed.img_size)
    if hasattr(model, "cls_token"):
        facts["class_token"] = model.cls_token is not None
    facts["distilled"] = getattr(model, "dist_token", None) is not None
    return facts


def from_timm_model(model):
    """A live timm ViT -> (params, cfg). Reads ``model.state_dict()`` and the attributes ``embed_dim``,
    ``blocks[0].attn.num_heads``, ``patch_embed.patch_size``/``img_size``, ``num_prefix_tokens``,
    ``global_pool``, ``cls_token``/``dist_token``; any disagreement with the weights raises."""
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"expected a timm model with .state_dict(), got {type(model).__name__}")
    if getattr(model, "no_embed_class", False):
        raise ValueError("timm model has no_embed_class=True (pos_embed without prefix tokens): not supported")
    try:
        num_heads = int(model.blocks[0].attn.num_heads)
    except (AttributeError, IndexError, TypeError):
        raise TypeError("cannot read the head count from model.blocks[0].attn.num_heads") from None
    state_dict = model.state_dict()
    cfg = infer_config(state_dict, num_heads=num_heads)
    facts = _model_attributes(model)
    pool = facts.get("global_pool", cfg.global_pool)
    if pool not in ("token", "avg"):
        raise ValueError(f"timm model global_pool={pool!r}: minitofe supports 'token' and 'avg'")
    bad = [f"{k}: model says {v!r}, weights say {getattr(cfg, k)!r}"
           for k, v in facts.items() if getattr(cfg, k) != v]
    if bad:
        raise ValueError("timm model attributes disagree with its weights: " + "; ".join(bad))
    return from_timm_state_dict(state_dict, cfg), cfg
