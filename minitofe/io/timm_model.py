"""A ``ViTConfig`` read from a live timm model: every attribute that changes the computation is either
mapped to a config field or refused with an error naming it.

The model is read by duck typing (class names and attributes; torch and timm are not imported, except by
``timm_template``, which builds a model with timm),
module by module: the model class (timm's ``VisionTransformer`` or ``VisionTransformerDistilled``, not a
subclass that may compute something else), the patch embedding, the prefix tokens and position
embedding, ``norm_pre``, every block (class ``Block``: pre-norm; ``ResPostBlock`` and the parallel
blocks are refused), its LayerNorms (class and eps), attention (qk-norm, output norm, gate, head size)
and MLP (class and activation), the final norms, the pooling and the classifier. minitofe computes
timm's eval-mode forward: dropout and drop-path rates do not matter. ``read_timm_module`` works on a
model built on torch's ``meta`` device too (no weights needed): that is how a timm architecture name
describes a weight file (``timm_template``).
"""
import math

from ..config import ViTConfig

MODEL_CLASSES = {"VisionTransformer": False, "VisionTransformerDistilled": True}   # name -> distilled
LAYERSCALE_MARKER = 1e-5   # LayerScale's init value is not in a checkpoint; it only decides the keys
POOLS_REFUSED = {"": "no pooling (global_pool='')", "max": "max pooling", "avgmax": "avg+max pooling",
                 "map": "attention pooling (MAP head, attn_pool)", "prr": "attention pooling (prr)"}


def _name(obj):
    return type(obj).__name__


def _refuse(attr, what):
    raise ValueError(f"timm model {attr}: {what}: not computed by minitofe, refused")


def _norm_eps(module, attr, C, eps_seen):
    """A LayerNorm over C with weight and bias -> True; Identity -> False; anything else refused."""
    if _name(module) == "Identity":
        return False
    if _name(module) != "LayerNorm":
        _refuse(attr, f"normalisation layer {_name(module)} (minitofe has LayerNorm only)")
    if tuple(module.normalized_shape) != (C,) or module.weight is None or module.bias is None:
        _refuse(attr, f"LayerNorm{tuple(module.normalized_shape)} with weight and bias is required over "
                      f"embed_dim {C}")
    eps_seen.setdefault(float(module.eps), attr)
    return True


def _activation(act, attr):
    name = _name(act)
    if name == "GELU":                                        # torch's (approximate=...) or timm's
        approx = getattr(act, "approximate", "none")
        return {"none": "gelu", "tanh": "gelu_tanh"}[approx]
    if name in ("GELUTanh", "QuickGELU"):
        return {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}[name]
    _refuse(attr, f"activation {name} (minitofe has GELU, GELUTanh, QuickGELU)")


def _linear(module, attr, shape, bias=True):
    if _name(module) != "Linear":
        _refuse(attr, f"layer {_name(module)} where a Linear is expected")
    if tuple(module.weight.shape) != shape:
        _refuse(attr, f"weight shape {tuple(module.weight.shape)}, expected {shape}")
    if bias is not None and (module.bias is not None) != bias:
        _refuse(attr, "a Linear without bias" if bias else "an unexpected bias")
    return module.bias is not None


def _block(blk, i, C, eps_seen):
    """One block -> (num_heads, hidden, qkv_bias, layerscale, act_layer); refuses anything else."""
    at = f"blocks.{i}"
    if _name(blk) != "Block":
        _refuse(at, f"block class {_name(blk)} (minitofe runs timm's pre-norm Block only; "
                    f"ResPostBlock is post-norm, the parallel blocks run branches side by side)")
    for n in ("norm1", "norm2"):
        if not _norm_eps(getattr(blk, n), f"{at}.{n}", C, eps_seen):
            _refuse(f"{at}.{n}", "Identity (the block needs its LayerNorm)")
    attn, mlp = blk.attn, blk.mlp
    if _name(attn) != "Attention":
        _refuse(f"{at}.attn", f"attention class {_name(attn)} (minitofe has timm's Attention)")
    for n, what in (("q_norm", "qk_norm=True"), ("k_norm", "qk_norm=True"), ("norm", "scale_attn_norm=True")):
        if _name(getattr(attn, n, None)) not in ("Identity", "NoneType"):
            _refuse(f"{at}.attn.{n}", what)
    if getattr(attn, "gate", None) is not None:
        _refuse(f"{at}.attn.gate", "gated attention")
    H = int(attn.num_heads)
    if (H * int(attn.head_dim) != C
            or not math.isclose(float(attn.scale), attn.head_dim ** -0.5, rel_tol=1e-12)):
        _refuse(f"{at}.attn", f"{H} heads of size {attn.head_dim}, scale {attn.scale} (need heads * "
                              f"head_dim = embed_dim {C} and scale head_dim ** -0.5)")
    qkv_bias = _linear(attn.qkv, f"{at}.attn.qkv", (3 * C, C), bias=None)
    _linear(attn.proj, f"{at}.attn.proj", (C, C))
    if _name(mlp) != "Mlp":
        _refuse(f"{at}.mlp", f"MLP class {_name(mlp)} (minitofe has timm's Mlp: fc1, activation, fc2)")
    if _name(getattr(mlp, "norm", None)) not in ("Identity", "NoneType"):
        _refuse(f"{at}.mlp.norm", "scale_mlp_norm=True")
    hidden = int(mlp.fc1.weight.shape[0])
    _linear(mlp.fc1, f"{at}.mlp.fc1", (hidden, C))
    _linear(mlp.fc2, f"{at}.mlp.fc2", (C, hidden))
    ls = tuple(_name(getattr(blk, n)) for n in ("ls1", "ls2"))
    if ls not in (("Identity", "Identity"), ("LayerScale", "LayerScale")):
        _refuse(f"{at}.ls1/ls2", f"{ls[0]}/{ls[1]} (LayerScale on both branches or on neither)")
    return H, hidden, qkv_bias, ls[0] == "LayerScale", _activation(mlp.act, f"{at}.mlp.act")


def _patch_embed(model):
    pe = model.patch_embed
    if _name(pe) != "PatchEmbed":
        _refuse("patch_embed", f"class {_name(pe)} (minitofe has timm's PatchEmbed)")
    p = tuple(int(v) for v in pe.patch_size)
    if p[0] != p[1]:
        _refuse("patch_embed.patch_size", f"{p} (minitofe needs square patches)")
    if _name(getattr(pe, "norm", None)) not in ("Identity", "NoneType"):
        _refuse("patch_embed.norm", "a norm inside the patch embedding (embed_norm_layer)")
    proj = pe.proj
    if (_name(proj) != "Conv2d" or tuple(proj.kernel_size) != p or tuple(proj.stride) != p
            or tuple(proj.padding) != (0, 0) or tuple(proj.dilation) != (1, 1) or proj.groups != 1):
        _refuse("patch_embed.proj", "not a convolution with kernel = stride = patch size, no padding")
    return p[0], tuple(int(v) for v in pe.img_size), int(proj.weight.shape[1]), proj.bias is not None


def read_timm_module(model):
    """A timm ``VisionTransformer`` (or ``VisionTransformerDistilled``) -> ``ViTConfig``, or a
    ValueError naming the first attribute minitofe does not compute."""
    if _name(model) not in MODEL_CLASSES:
        raise TypeError(f"expected timm's VisionTransformer or VisionTransformerDistilled, got "
                        f"{_name(model)} (a subclass may compute something else)")
    distilled = MODEL_CLASSES[_name(model)]
    C = int(model.embed_dim)
    p, img_size, in_chans, patch_bias = _patch_embed(model)
    if getattr(model, "pos_embed", None) is None:
        _refuse("pos_embed", "None (no position embedding)")
    class_token = getattr(model, "cls_token", None) is not None
    reg = getattr(model, "reg_token", None)
    reg_tokens = int(reg.shape[1]) if reg is not None else 0
    if int(model.num_prefix_tokens) != class_token + reg_tokens + distilled:
        _refuse("num_prefix_tokens",
                f"{model.num_prefix_tokens}, but the model has {int(class_token)} class, "
                f"{reg_tokens} register and {int(distilled)} distillation token(s)")
    eps_seen = {}
    pre_norm = _norm_eps(model.norm_pre, "norm_pre", C, eps_seen)
    if patch_bias == pre_norm:
        _refuse("patch_embed.proj.bias", f"{'present' if patch_bias else 'absent'} with pre_norm={pre_norm} "
                                         f"(timm's VisionTransformer has the bias iff not pre_norm)")
    blocks = [_block(blk, i, C, eps_seen) for i, blk in enumerate(model.blocks)]
    if not blocks:
        _refuse("blocks", "no blocks")
    if len(set(blocks)) != 1:
        _refuse("blocks", f"blocks differ from each other ({sorted(set(blocks))})")
    H, hidden, qkv_bias, layerscale, act_layer = blocks[0]
    pool = model.global_pool
    if pool in POOLS_REFUSED or getattr(model, "attn_pool", None) is not None:
        _refuse("global_pool", f"{pool!r}: {POOLS_REFUSED.get(pool, 'attention pooling')}")
    use_norm = _norm_eps(model.norm, "norm", C, eps_seen)
    use_fc_norm = _norm_eps(model.fc_norm, "fc_norm", C, eps_seen)
    if distilled and use_fc_norm:
        _refuse("fc_norm", "a LayerNorm, which timm's distilled head never applies")
    if len(eps_seen) != 1:
        _refuse("LayerNorm eps", f"differs between layers: {eps_seen}")
    num_classes = _head(model, "head", C)
    if distilled and _head(model, "head_dist", C) != num_classes:
        _refuse("head_dist", "a different number of classes than head")
    fc_norm = use_fc_norm if (use_norm or use_fc_norm) else None
    return ViTConfig(
        img_size=img_size, patch_size=p, in_chans=in_chans, num_classes=num_classes, embed_dim=C,
        depth=len(blocks), num_heads=H, mlp_ratio=hidden / C, qkv_bias=qkv_bias,
        init_values=LAYERSCALE_MARKER if layerscale else None, class_token=class_token, global_pool=pool,
        distilled=distilled, reg_tokens=reg_tokens, no_embed_class=bool(model.no_embed_class),
        pre_norm=pre_norm, fc_norm=None if fc_norm == (pool == "avg") else fc_norm,
        final_norm=use_norm or use_fc_norm,
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
        norm_eps=next(iter(eps_seen)), act_layer=act_layer)


def _head(model, attr, C):
    head = getattr(model, attr)
    if _name(head) == "Identity":
        return 0
    _linear(head, attr, (int(head.weight.shape[0]), C))
    return int(head.weight.shape[0])


def from_timm_model(model):
    """A live timm ViT -> (params, cfg): the config from ``read_timm_module``, the weights from
    ``model.state_dict()`` (checked key by key against the config)."""
    from .timm import from_timm_state_dict
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"expected a timm model with .state_dict(), got {_name(model)}")
    cfg = read_timm_module(model)
    return from_timm_state_dict(model.state_dict(), cfg), cfg


def check_architecture(name):
    """A minitofe preset or a timm architecture name -> 'preset' or 'timm'; anything else is refused,
    listing the presets (timm's names need timm installed)."""
    from ..config import PRESETS
    if name in PRESETS:
        return "preset"
    try:
        import timm
    except ImportError:
        raise ValueError(f"unknown model {name!r}: not a minitofe preset (one of {sorted(PRESETS)}); timm "
                         f'architecture names need timm: pip install "minitofe[torch]"') from None
    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}: neither a minitofe preset (one of {sorted(PRESETS)}) "
                         f"nor a timm architecture (timm.list_models())")
    return "timm"


def timm_template(name, num_classes, depth, img_size=None):
    """timm's architecture ``name`` built on torch's meta device (no memory, no weights) with the class
    count and depth of a weight file: the description ``read_timm_module`` reads. Needs timm."""
    check_architecture(name)
    import timm
    kw = {} if img_size is None else {"img_size": img_size}
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, depth=depth, device="meta",
                                 **kw)
    except TypeError as e:
        raise ValueError(f"timm cannot build {name!r} with num_classes={num_classes}, depth={depth} "
                         f"({e})") from None
