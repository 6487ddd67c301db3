"""Which config a timm file or live timm model is (minitofe.io.timm_config, minitofe.io.timm_model), and
ToFe models through .safetensors. Torch-free: a live model is a duck-typed stand-in with timm's class
names and attributes (the real timm models: tests/test_timm_matrix.py)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

import minitofe
from minitofe.config import ViTConfig
from minitofe.io import timm as T
from minitofe.io import weights as W
from minitofe.io.timm_config import infer_config
from minitofe.io.timm_model import LAYERSCALE_MARKER, from_timm_model, read_timm_module
from minitofe.nn.params import init_params
from minitofe.tofe.config import ToFeConfig

BASE = dict(img_size=8, patch_size=2, in_chans=3, num_classes=5, embed_dim=12, depth=2, num_heads=3)
OPTIONS = {
    "token": {}, "avg-nocls": dict(class_token=False, global_pool="avg"),
    "layerscale": dict(init_values=LAYERSCALE_MARKER), "distilled": dict(distilled=True),
    "registers": dict(reg_tokens=4), "dinov2-reg": dict(reg_tokens=4, no_embed_class=True, num_classes=0,
                                                        init_values=LAYERSCALE_MARKER),
    "no-embed-class": dict(no_embed_class=True), "pre-norm": dict(pre_norm=True),
    "gap": dict(global_pool="avg", fc_norm=False), "token-fc-norm": dict(fc_norm=True),
    "no-final-norm": dict(final_norm=False), "headless-avg": dict(num_classes=0, global_pool="avg"),
    "non-square": dict(img_size=(8, 4)), "clip": dict(pre_norm=True, norm_eps=1e-5, act_layer="quick_gelu"),
}


def config(name):
    return ViTConfig(**{**BASE, **OPTIONS[name]})


def state(cfg, dtype=np.float32):
    return T.to_timm_state_dict(init_params(cfg, np.random.default_rng(0), dtype), cfg)


def statement(cfg):
    return dict(num_heads=cfg.num_heads, img_size=cfg.img_size, global_pool=cfg.global_pool,
                norm_eps=cfg.norm_eps, act_layer=cfg.act_layer, pool_include_prefix=cfg.pool_include_prefix)


# ---- a timm state dict and its statement ----

@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_keys_plus_statement_give_the_config(name):
    cfg = config(name)
    assert infer_config(state(cfg), **statement(cfg)) == cfg


def test_what_a_file_cannot_tell_must_be_stated():
    s = state(config("token"))
    with pytest.raises(ValueError, match=r"number of attention heads is not stored.*--heads N"):
        infer_config(s, img_size=8, global_pool="token")
    with pytest.raises(ValueError, match=r"the img_size is not stored in a timm file \(17 positions in "
                                         r"pos_embed\).*--img-size"):
        infer_config(s, num_heads=3, global_pool="token")
    with pytest.raises(ValueError, match=r"the global_pool is not stored.*--global-pool"):
        infer_config(s, num_heads=3, img_size=8)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['pool'\]"):
        infer_config(s, num_heads=3, pool="avg")


def test_a_256x64_file_is_not_read_as_128x128(tmp_path):
    cfg = ViTConfig(**{**BASE, "img_size": (256, 64), "patch_size": 16})       # 16 x 4 = 64 patches
    s = state(cfg)
    assert infer_config(s, num_heads=3, img_size=(256, 64), global_pool="token") == cfg
    path = tmp_path / "timm.safetensors"
    import safetensors.numpy as stnp
    stnp.save_file(s, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="img_size is not stored"):
        W.load_weights(path, num_heads=3, global_pool="token")
    with pytest.raises(ValueError, match=r"pos_embed has 65 positions, but img_size 224 .* 196 patches"):
        W.load_weights(path, num_heads=3, img_size=224, global_pool="token")
    W.save_safetensors(tmp_path / "ours.safetensors", T.from_timm_state_dict(s, cfg), cfg)
    assert W.load_weights(tmp_path / "ours.safetensors")[1].img_size == (256, 64)      # minitofe's own file


def test_no_embed_class_is_read_from_the_positions():
    cfg = config("registers")
    s = state(cfg.replace(no_embed_class=True))
    assert infer_config(s, **statement(cfg)).no_embed_class
    s["pos_embed"] = np.zeros((1, 20, 12), np.float32)
    with pytest.raises(ValueError, match=r"pos_embed has 20 positions, but img_size 8 .* 16 patches \(5 prefix"):
        infer_config(s, **statement(cfg))


@pytest.mark.parametrize("key, what", [
    ("blocks.0.attn.q_norm.weight", "qk_norm=True"), ("attn_pool.latent", r"attention pooling \(global_pool='map'\)"),
    ("blocks.1.mlp.fc1_g.weight", r"a gated MLP \(SwiGLU\)"), ("patch_embed.norm.weight", r"a norm inside the patch embedding \(embed_norm_layer\)"),
    ("blocks.0.mlp.norm.weight", "scale_mlp_norm=True"),
])
def test_keys_of_features_minitofe_does_not_compute_are_refused(key, what):
    s = dict(state(config("token")), **{key: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=f"the weights have '{key}': {what}"):
        infer_config(s, **statement(config("token")))


def test_a_preset_or_config_states_everything_and_must_agree_with_the_keys():
    from minitofe.config import get_config
    cfg = get_config("vit_fmnist_patch2_28")
    s = state(cfg.replace(num_classes=7))
    assert infer_config(s, model="vit_fmnist_patch2_28") == cfg.replace(num_classes=7)
    assert infer_config(s, model=cfg.replace(num_classes=7)) == cfg.replace(num_classes=7)
    with pytest.raises(ValueError, match=r"preset 'deit_tiny_patch16_224': patch_size: preset 16, weights 2"):
        infer_config(s, model="deit_tiny_patch16_224")
    with pytest.raises(ValueError, match="num_heads: preset 3, asked for 4"):
        infer_config(s, model="vit_fmnist_patch2_28", num_heads=4)
    with pytest.raises(ValueError, match="global_pool: preset 'token', asked for 'avg'"):
        infer_config(s, model="vit_fmnist_patch2_28", global_pool="avg")
    with pytest.raises(ValueError, match=r"final norm: preset 'norm', weights 'fc_norm'"):
        infer_config(state(cfg.replace(fc_norm=True)), model="vit_fmnist_patch2_28")


# ---- a live timm model, duck-typed ----

def _obj(cls, **attrs):
    return type(cls, (), {})() if not attrs else type(cls, (SimpleNamespace,), {})(**attrs)


class _T:
    """A tensor stand-in: shape, and .detach().cpu().numpy()."""
    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def detach(self):
        return self

    cpu = detach

    def numpy(self):
        return self.array


def _ln(C, eps):
    return _obj("LayerNorm", normalized_shape=(C,), eps=eps, weight=1, bias=1)


def _lin(out, inp, bias=True):
    return _obj("Linear", weight=np.zeros((out, inp)), bias=1 if bias else None)


def fake_timm_model(cfg, **changes):
    """A stand-in with timm's module classes and attributes for ``cfg``; ``changes`` overrides
    attributes by dotted path (``{'blocks.0.mlp.act': ...}`` as ``blocks__0__mlp__act``)."""
    C, p, hidden, eps = cfg.embed_dim, cfg.patch_size, cfg.mlp_hidden, cfg.norm_eps
    none = lambda: _obj("Identity")                                                    # noqa: E731
    act = {"gelu": _obj("GELU", approximate="none"), "gelu_tanh": _obj("GELUTanh"), "quick_gelu": _obj("QuickGELU")}
    blocks = [_obj("Block", norm1=_ln(C, eps), norm2=_ln(C, eps),
                   attn=_obj("Attention", num_heads=cfg.num_heads, head_dim=C // cfg.num_heads,
                             scale=(C // cfg.num_heads) ** -0.5, q_norm=none(), k_norm=none(), norm=none(),
                             qkv=_lin(3 * C, C, cfg.qkv_bias), proj=_lin(C, C)),
                   mlp=_obj("Mlp", norm=none(), fc1=_lin(hidden, C), fc2=_lin(C, hidden), act=act[cfg.act_layer]),
                   ls1=_obj("LayerScale" if cfg.init_values else "Identity"),
                   ls2=_obj("LayerScale" if cfg.init_values else "Identity")) for _ in range(cfg.depth)]
    conv = _obj("Conv2d", kernel_size=(p, p), stride=(p, p), padding=(0, 0), dilation=(1, 1), groups=1,
                weight=np.zeros((C, cfg.in_chans, p, p)), bias=None if cfg.pre_norm else 1)
    sd = {k: _T(v) for k, v in state(cfg).items()}
    model = _obj("VisionTransformerDistilled" if cfg.distilled else "VisionTransformer",
                 embed_dim=C, num_prefix_tokens=cfg.num_prefix_tokens, global_pool=cfg.global_pool,
                 no_embed_class=cfg.no_embed_class, pool_include_prefix=cfg.pool_include_prefix,
                 patch_embed=_obj("PatchEmbed", patch_size=(p, p), img_size=cfg.img_hw, norm=none(), proj=conv),
                 pos_embed=1, cls_token=1 if cfg.class_token else None,
                 reg_token=np.zeros((1, cfg.reg_tokens, C)) if cfg.reg_tokens else None,
                 norm_pre=_ln(C, eps) if cfg.pre_norm else none(), blocks=blocks,
                 norm=_ln(C, eps) if cfg.use_norm else none(), fc_norm=_ln(C, eps) if cfg.use_fc_norm else none(),
                 attn_pool=None, head=_lin(cfg.num_classes, C) if cfg.num_classes else none(),
                 head_dist=_lin(cfg.num_classes, C) if cfg.num_classes else none(), state_dict=lambda: sd)
    for path, value in changes.items():
        *parents, last = path.split("__")
        obj = model
        for part in parents:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        if last.isdigit():
            obj[int(last)] = value
        else:
            setattr(obj, last, value)
    return model


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_read_timm_module(name):
    cfg = config(name)
    params, got = from_timm_model(fake_timm_model(cfg))
    assert got == cfg.replace(init_values=got.init_values) and (got.init_values is None) == (cfg.init_values is None)
    assert list(params) == list(init_params(cfg, np.random.default_rng(0)))


@pytest.mark.parametrize("change, match", [
    (dict(blocks__1=_obj("ResPostBlock")), r"blocks.1: block class ResPostBlock .*refused"),
    (dict(blocks__0__norm2=_ln(12, 1e-5)), r"LayerNorm eps: differs between layers"),
    (dict(blocks__0__norm1=_obj("RmsNorm")), r"blocks.0.norm1: normalisation layer RmsNorm"),
    (dict(blocks__0__attn__q_norm=_ln(4, 1e-6)), r"blocks.0.attn.q_norm: qk_norm=True"),
    (dict(blocks__0__mlp__act=_obj("SiLU")), r"blocks.0.mlp.act: activation SiLU"),
    (dict(blocks__0__mlp=_obj("SwiGLU")), r"blocks.0.mlp: MLP class SwiGLU"),
    (dict(blocks__0__attn__proj=_lin(12, 12, bias=False)), r"blocks.0.attn.proj: a Linear without bias"),
    (dict(global_pool="max"), r"global_pool: 'max': max pooling"),
    (dict(global_pool="map"), r"global_pool: 'map': attention pooling"),
    (dict(pos_embed=None), r"pos_embed: None"),
    (dict(patch_embed__patch_size=(2, 4)), r"patch_embed.patch_size: \(2, 4\)"),
    (dict(patch_embed__norm=_ln(12, 1e-6)), r"patch_embed.norm: a norm inside the patch embedding"),
    (dict(num_prefix_tokens=3), r"num_prefix_tokens: 3, but the model has 1 class"),
])
def test_read_timm_module_refuses_by_name(change, match):
    with pytest.raises(ValueError, match=match):
        read_timm_module(fake_timm_model(config("token"), **change))


def test_read_timm_module_needs_timms_classes():
    with pytest.raises(TypeError, match="expected timm's VisionTransformer .* got object"):
        read_timm_module(object())
    with pytest.raises(TypeError, match="state_dict"):
        from_timm_model(object())


# ---- ToFe models through .safetensors ----

def test_tofe_model_round_trips_through_safetensors(tmp_path):
    cfg = ViTConfig(**{**BASE, "reg_tokens": 2})
    tcfg = ToFeConfig(stages=(1,), keep_ratios=(0.5,))
    model = minitofe.new_model(cfg, tcfg, np.random.default_rng(0))
    model.learned_keep_ratios = (0.375,)
    minitofe.save_model(tmp_path / "m.npz", model)
    written, _, _ = W.convert(tmp_path / "m.npz", tmp_path / "m.safetensors")
    assert set(written) == set(model.params) and any(k.startswith("tofe.") for k in written)
    back = minitofe.load_model(tmp_path / "m.safetensors")
    assert back.cfg == cfg and back.tofe == tcfg and back.learned_keep_ratios == (0.375,)
    assert back.params.keys() == model.params.keys()
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    images = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    assert np.array_equal(minitofe.predict(back, images)[0], minitofe.predict(model, images)[0])
    written, _, meta = W.convert(tmp_path / "m.npz", tmp_path / "b.safetensors", backbone_only=True)
    assert set(written) == set(model.backbone_params()) and "tofe" not in meta
    bare = minitofe.load_model(tmp_path / "b.safetensors")
    assert bare.tofe.method == "dense" and set(bare.params) == set(model.backbone_params())


def test_tofe_config_refuses_a_string():
    text = json.dumps(ToFeConfig().to_dict())
    with pytest.raises(TypeError, match="ToFeConfig.from_dict needs a dict, got str"):
        ToFeConfig.from_dict(text)
    assert ToFeConfig.from_dict(json.loads(text)) == ToFeConfig()
