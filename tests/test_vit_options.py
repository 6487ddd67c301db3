"""The timm ViT options beyond the plain DeiT layout, each with forward AND hand-written backward checked
against float64 central differences (relative error <= 1e-6): register tokens, ``no_embed_class``,
``pre_norm``, the final norm before or after pooling (or none), avg pooling with or without the prefix
tokens, head-less models and ``forward_features``, non-square images, LayerNorm eps and the MLP
activations; then ToFe on a backbone with register tokens (prefix tokens, never frozen) and the
refusals (ToFe on a non-default block, training a head-less model)."""
import numpy as np
import pytest

from minitofe import kernels
from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, directional_check, numerical_grad, rel_error
from minitofe.nn.activations import act_backward, act_forward
from minitofe.nn.block import block_backward, block_forward
from minitofe.nn.head import forward_head
from minitofe.nn.params import init_params, param_shapes
from minitofe.nn.vit import vit_backward, vit_features_backward, vit_forward, vit_forward_features
from minitofe.tofe.config import ToFeConfig
from minitofe.methods import inference as tofe_inference
from minitofe.methods import init_params as init_tofe_params
from minitofe.tofe.params import check_tofe_params
from minitofe.methods import train_backward as tofe_train_backward, train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise

TOL = 1e-6
BASE = dict(img_size=4, patch_size=2, in_chans=2, num_classes=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
OPTIONS = {
    "registers": dict(reg_tokens=2, init_values=0.3),
    "registers-no-cls-avg": dict(reg_tokens=3, class_token=False, global_pool="avg"),
    "no-embed-class": dict(no_embed_class=True, reg_tokens=1),
    "pre-norm-clip": dict(pre_norm=True, norm_eps=1e-5, act_layer="quick_gelu"),
    "avg-norm-before-pool": dict(global_pool="avg", fc_norm=False),
    "token-fc-norm": dict(fc_norm=True),
    "no-final-norm": dict(final_norm=False, global_pool="avg"),
    "avg-include-prefix": dict(global_pool="avg", pool_include_prefix=True, reg_tokens=1),
    "headless-token": dict(num_classes=0, reg_tokens=4, init_values=0.2, no_embed_class=True),
    "headless-avg": dict(num_classes=0, global_pool="avg", fc_norm=False),
    "headless-distilled": dict(num_classes=0, distilled=True),
    "non-square": dict(img_size=(6, 2), reg_tokens=1),
    "gelu-tanh": dict(act_layer="gelu_tanh", qkv_bias=False),
}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _model(extra, seed=0):
    rng = _rng(seed)
    cfg = ViTConfig(**{**BASE, **extra})
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(cfg, rng).items()}
    images = rng.standard_normal((2, cfg.in_chans) + cfg.img_hw)
    return cfg, params, images, rng


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "quick_gelu"])
def test_activations(name):
    rng = _rng(1)
    x = rng.standard_normal((3, 7)) * 3
    R = rng.standard_normal(x.shape)
    y, cache = act_forward(x, name)
    num = numerical_grad(lambda: np.sum(act_forward(x, name)[0] * R), x)
    assert rel_error(num, act_backward(R, cache)) < TOL
    assert np.all(np.isfinite(act_forward(np.array([-800.0, 800.0]), name)[0]))    # no overflow


def test_activations_match_their_definitions():
    from math import erf, sqrt, tanh, exp
    for v in (-3.0, -0.5, 0.0, 0.7, 2.5):
        x = np.array([v])
        assert abs(act_forward(x, "gelu")[0][0] - 0.5 * v * (1 + erf(v / sqrt(2)))) < 1e-15
        t = tanh(sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))
        assert abs(act_forward(x, "gelu_tanh")[0][0] - 0.5 * v * (1 + t)) < 1e-15
        assert abs(act_forward(x, "quick_gelu")[0][0] - v / (1 + exp(-1.702 * v))) < 1e-15
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        act_forward(np.zeros(2), "relu")


@pytest.mark.parametrize("act", ["gelu_tanh", "quick_gelu"])
def test_block_with_eps_and_activation(act):
    cfg, params, _, rng = _model(dict(depth=1, init_values=0.5))
    x = rng.standard_normal((2, 5, 8))
    out, cache = block_forward(x, params, "blocks.0.", 2, norm_eps=1e-2, act_layer=act)
    default, _ = block_forward(x, params, "blocks.0.", 2)
    assert np.abs(out - default).max() > 1e-4                        # the options change the result
    R = rng.standard_normal(out.shape)
    dx, grads, _ = block_backward(R, cache)
    block = {k: v for k, v in params.items() if k.startswith("blocks.0.")}
    f = lambda: np.sum(block_forward(x, params, "blocks.0.", 2, norm_eps=1e-2, act_layer=act)[0] * R)
    errs = check_param_grads(f, block, grads)
    assert max(errs.values()) < TOL, errs
    assert rel_error(numerical_grad(f, x), dx) < TOL


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_option_forward_backward_finite_differences(name):
    cfg, params, images, rng = _model(OPTIONS[name])
    assert set(params) == set(param_shapes(cfg))
    out, cache = vit_forward(params, images, cfg)
    assert out.shape == (2, cfg.num_classes or cfg.embed_dim)
    R = rng.standard_normal(out.shape)
    dimages, grads = vit_backward(R, cache)
    assert grads.keys() == params.keys()
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype for k in params)
    f = lambda: np.sum(vit_forward(params, images, cfg)[0] * R)
    errs = check_param_grads(f, params, grads)
    assert max(errs.values()) < TOL, sorted(errs.items(), key=lambda t: -t[1])[:3]
    assert rel_error(numerical_grad(f, images), dimages) < TOL


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_forward_features_and_pooled_features(name):
    """forward_features (all tokens after the final norm) and the pooled features (pre_logits), each with
    its backward; the head applied to the features gives vit_forward's output bit for bit."""
    cfg, params, images, rng = _model(OPTIONS[name], seed=1)
    features, cache = vit_forward_features(params, images, cfg)
    assert features.shape == (2, cfg.num_tokens, cfg.embed_dim)
    assert np.array_equal(forward_head(features, params, cfg)[0], vit_forward(params, images, cfg)[0])
    R = rng.standard_normal(features.shape)
    dimages, grads = vit_features_backward(R, cache)
    assert grads.keys() == params.keys()
    f = lambda: np.sum(vit_forward_features(params, images, cfg)[0] * R)
    assert directional_check(f, params, grads, rng)[2] < TOL
    assert rel_error(numerical_grad(f, images), dimages) < TOL
    for k in ("head.weight", "fc_norm.weight"):
        if k in grads:
            assert not grads[k].any(), k                           # not used by forward_features
    pooled, cache = vit_forward(params, images, cfg, pre_logits=True)
    assert pooled.shape == (2, cfg.embed_dim)
    R = rng.standard_normal(pooled.shape)
    _, grads = vit_backward(R, cache)
    f = lambda: np.sum(vit_forward(params, images, cfg, pre_logits=True)[0] * R)
    assert directional_check(f, params, grads, rng)[2] < TOL


def test_backward_refuses_the_other_cache_and_bad_gradients():
    cfg, params, images, _ = _model(OPTIONS["headless-token"])
    features, fcache = vit_forward_features(params, images, cfg)
    out, cache = vit_forward(params, images, cfg)
    with pytest.raises(TypeError, match="from vit_forward_features: pass it to vit_features_backward"):
        vit_backward(out, fcache)
    with pytest.raises(TypeError, match="from vit_forward: pass it to vit_backward"):
        vit_features_backward(features, cache)
    with pytest.raises(ValueError, match=r"dfeatures must have the features' shape \(2, 9, 8\)"):
        vit_features_backward(features[:, 1:], fcache)
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 8\)"):
        vit_backward(np.ones((2, 3)), cache)


def test_option_semantics():
    """What each option means, against a direct computation on the same params."""
    cfg, params, images, _ = _model(OPTIONS["no-embed-class"])
    with_class = cfg.replace(no_embed_class=False)
    p2 = dict(params, pos_embed=np.concatenate([np.zeros((1, 2, 8)), params["pos_embed"]], axis=1))
    assert np.allclose(vit_forward(params, images, cfg)[0], vit_forward(p2, images, with_class)[0], atol=1e-14)
    cfg, params, images, _ = _model(OPTIONS["avg-include-prefix"])
    feats = vit_forward_features(params, images, cfg)[0]
    from minitofe.nn.layers import layernorm_forward
    pooled = layernorm_forward(feats.mean(axis=1), params["fc_norm.weight"], params["fc_norm.bias"])[0]
    assert np.allclose(vit_forward(params, images, cfg, pre_logits=True)[0], pooled, atol=1e-14)


@pytest.mark.parametrize("name", ["registers", "no-embed-class", "headless-token"])
def test_fast_path_equals_reference(name):
    cfg, params, images, _ = _model(OPTIONS[name])
    ref, _ = vit_forward(params, images, cfg)
    got, _ = vit_forward(params, images, cfg, ops=kernels.ops(True, like=images))
    assert np.abs(got - ref).max() < 1e-12
    clip, params, images, _ = _model(OPTIONS["pre-norm-clip"])           # not the kernels' block: reference
    got, _ = vit_forward(params, images, clip, ops=kernels.ops(True, like=images))
    assert np.array_equal(got, vit_forward(params, images, clip)[0])


TOFE_BACKBONE = dict(img_size=(6, 4), reg_tokens=2, no_embed_class=True, pre_norm=True, init_values=0.3, depth=3)


def _tofe_model(method, seed=0):
    cfg, params, images, rng = _model(TOFE_BACKBONE, seed)
    tcfg = ToFeConfig(method=method, stages=(1, 2), keep_ratios=(0.5, 0.5), alpha=0.0, beta=0.0)
    params.update({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_tofe_params(cfg, tcfg, rng).items()})
    return cfg, tcfg, params, images, rng


def test_tofe_keep_all_equals_dense_with_registers():
    cfg, tcfg, params, images, _ = _tofe_model("tofe")
    backbone = {k: v for k, v in params.items() if not k.startswith("tofe.")}
    dense, _ = vit_forward(backbone, images, cfg)
    logits, info = tofe_inference(params, images, cfg, tcfg, keep_ratios=(1.0, 1.0))
    assert np.array_equal(logits, dense)
    _, info = tofe_inference(params, images, cfg, tcfg)
    assert all(k.shape == (2, cfg.num_patches) for k in info["kept"])   # decisions are about patches only


def test_tofe_training_keeps_registers_and_its_gradient_is_right():
    """Register tokens are prefix tokens: their mask is 1 at every stage; the soft-relaxation training
    loss's hand-written gradient matches finite differences."""
    cfg, tcfg, params, images, rng = _tofe_model("tofe", seed=2)
    labels = np.array([0, 2])
    noise = draw_noise(rng, cfg, tcfg, 2, np.float64)
    out, cache = tofe_train_forward(params, images, labels, cfg, tcfg, noise, hard=False, tau=2.0)
    T = cfg.num_prefix_tokens
    assert T == 3 and all(np.all(m[:, :T] == 1.0) for m in out["masks"])
    dimages, grads = tofe_train_backward(cache)
    f = lambda: tofe_train_forward(params, images, labels, cfg, tcfg, noise, hard=False, tau=2.0)[0]["loss"]
    assert directional_check(f, params, grads, rng)[2] < TOL
    for k in ("reg_token", "pos_embed", "norm_pre.weight"):
        assert rel_error(numerical_grad(f, params[k]), grads[k]) < TOL, k


def test_tofe_refuses_what_it_does_not_compute():
    cfg, params, images, _ = _model(OPTIONS["pre-norm-clip"])
    tcfg = ToFeConfig(method="dense")
    with pytest.raises(ValueError, match=r"ToFe implements timm's default block only .*norm_eps=1e-05, "
                                         r"act_layer='quick_gelu'"):
        check_tofe_params(params, cfg, tcfg)
    cfg, tcfg, params, images, rng = _tofe_model("tofe")
    headless = cfg.replace(num_classes=0)
    params = {k: v for k, v in params.items() if not k.startswith("head.")}
    with pytest.raises(ValueError, match=r"no classifier head \(num_classes=0\)"):
        tofe_train_forward(params, images, np.zeros(2, int), headless, tcfg, draw_noise(rng, headless, tcfg, 2,
                                                                                         np.float64))


@pytest.mark.parametrize("bad, match", [
    (dict(reg_tokens=-1), "reg_tokens must be an int >= 0"),
    (dict(num_classes=-1), "num_classes must be an int >= 0"),
    (dict(img_size=(6, 5)), r"img_size \(6, 5\) is not a multiple of patch_size 2"),
    (dict(img_size=(6, 4, 2)), "img_size must be a positive int or a"),
    (dict(distilled=True, reg_tokens=1), "does not combine with reg_tokens"),
    (dict(norm_eps=0), "norm_eps must be a positive number"),
    (dict(act_layer="relu"), r"act_layer must be one of \['gelu', 'gelu_tanh', 'quick_gelu'\]"),
    (dict(fc_norm="yes"), "fc_norm must be None, True or False"),
    (dict(pre_norm=1), "pre_norm must be True or False"),
])
def test_bad_option_values(bad, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**BASE, **bad})


def test_config_round_trip_and_sizes():
    cfg = ViTConfig(**{**BASE, **OPTIONS["non-square"]})
    assert cfg.img_hw == (6, 2) and cfg.grid_hw == (3, 1) and cfg.num_patches == 3 and cfg.num_tokens == 5
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["img_size"] == [6, 2]
    with pytest.raises(ValueError, match=r"not square: its patch grid is 3x1"):
        cfg.grid_size
    assert ViTConfig(**{**BASE, "img_size": (4, 4)}).img_size == 4                    # square -> one int
    old = {k: v for k, v in ViTConfig(**BASE).to_dict().items() if k in
           ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads")}
    assert ViTConfig.from_dict(old) == ViTConfig(**{**old})                 # fields missing -> old behaviour
    with pytest.raises(TypeError, match="needs a dict, got str"):
        ViTConfig.from_dict('{"depth": 2}')
