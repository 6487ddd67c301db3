"""Every layer's backward against float64 central differences (relative error <= 1e-6), and the
gradient checker itself catching a wrong backward."""
import numpy as np
import pytest

from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, directional_check, numerical_grad, rel_error
from minitofe.nn.attention import attention_backward, attention_forward, masked_softmax_backward, masked_softmax_forward
from minitofe.nn.block import block_backward, block_forward, mlp_backward, mlp_forward
from minitofe.nn.embed import patchify, unpatchify
from minitofe.nn.layers import (cross_entropy_backward, cross_entropy_forward, gelu_backward, gelu_forward,
                                layernorm_backward, layernorm_forward, linear_backward, linear_forward,
                                softmax_backward, softmax_forward)
from minitofe.nn.params import init_params, param_shapes
from minitofe.nn.vit import vit_backward, vit_forward

TOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _check(fwd, bwd, inputs, rng):
    """fwd(*inputs) -> (out, cache); bwd(dout, cache) -> tuple of grads aligned with inputs."""
    out, cache = fwd(*inputs)
    R = rng.standard_normal(out.shape)
    grads = bwd(R, cache)
    for x, g in zip(inputs, grads):
        if g is None:
            continue
        num = numerical_grad(lambda: np.sum(fwd(*inputs)[0] * R), x)
        assert rel_error(num, g) < TOL


def test_linear():
    rng = _rng()
    _check(linear_forward, linear_backward,
           [rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)], rng)


def test_layernorm():
    rng = _rng(1)
    _check(layernorm_forward, layernorm_backward,
           [rng.standard_normal((2, 3, 6)) * 3 + 1, rng.standard_normal(6), rng.standard_normal(6)], rng)


def test_gelu():
    rng = _rng(2)
    _check(gelu_forward, lambda d, c: (gelu_backward(d, c),), [rng.standard_normal((3, 7)) * 3], rng)


def test_softmax():
    rng = _rng(3)
    _check(softmax_forward, lambda d, c: (softmax_backward(d, c),), [rng.standard_normal((3, 7))], rng)


def test_cross_entropy_value_and_grad():
    rng = _rng(4)
    z = rng.standard_normal((4, 5))
    y = np.array([0, 4, 2, 2])
    for eps in (0.0, 0.1):
        loss, cache = cross_entropy_forward(z, y, eps)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        t = np.full((4, 5), eps / 5)
        t[np.arange(4), y] += 1 - eps
        assert abs(loss - (-(t * np.log(p)).sum() / 4)) < 1e-12
        num = numerical_grad(lambda: cross_entropy_forward(z, y, eps)[0], z)
        assert rel_error(num, cross_entropy_backward(1.0, cache)) < TOL


@pytest.mark.parametrize("bad, match", [(np.array([0, 5, 1, 1]), "labels must lie"),
                                        (np.array([0.0, 1, 1, 1]), "labels must be ints"),
                                        (np.array([0, 1]), "labels must be ints of shape")])
def test_cross_entropy_bad_labels(bad, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy_forward(np.zeros((4, 5)), bad)


@pytest.mark.parametrize("masked", [False, True])
def test_masked_softmax(masked):
    rng = _rng(5)
    s = rng.standard_normal((2, 3, 5, 5)) * 2
    m = rng.uniform(0.1, 1.0, size=(2, 5)) if masked else None
    A, cache = masked_softmax_forward(s, m)
    assert np.allclose(A.sum(-1), 1.0)
    R = rng.standard_normal(A.shape)
    ds, dm = masked_softmax_backward(R, cache)
    assert rel_error(numerical_grad(lambda: np.sum(masked_softmax_forward(s, m)[0] * R), s), ds) < TOL
    if masked:
        assert rel_error(numerical_grad(lambda: np.sum(masked_softmax_forward(s, m)[0] * R), m), dm) < TOL


def test_masked_softmax_hard_mask_and_diagonal_only_rows():
    """With a 0/1 mask, masked keys get weight 0; a row whose keys are all masked attends to itself only.
    The gradient w.r.t. the mask is still defined at m = 0 (the selector learns through it)."""
    rng = _rng(6)
    s = rng.standard_normal((1, 2, 4, 4)) * 50      # large scores, still finite
    m = np.array([[1.0, 0.0, 0.0, 0.0]])
    A, cache = masked_softmax_forward(s, m)
    assert np.all(np.isfinite(A))
    for i in (1, 2, 3):  # frozen query rows: allowed keys are 0 (kept) and itself
        allowed = {0, i}
        assert np.allclose(A[0, :, i, [j for j in range(4) if j not in allowed]], 0.0)
    assert np.allclose(A[0, :, 0], np.eye(4)[0])   # kept row 0 only sees itself (only kept key)
    all_masked = np.zeros((1, 4))
    A2, _ = masked_softmax_forward(s, all_masked)
    assert np.allclose(A2, np.broadcast_to(np.eye(4), A2.shape))
    s_small = rng.standard_normal((1, 2, 4, 4))
    R = rng.standard_normal(A.shape)
    _, cache = masked_softmax_forward(s_small, m)
    ds, dm = masked_softmax_backward(R, cache)
    num = numerical_grad(lambda: np.sum(masked_softmax_forward(s_small, m)[0] * R), m)
    assert rel_error(num, dm) < TOL and np.abs(dm[0, 1:]).max() > 0


@pytest.mark.parametrize("masked", [False, True])
def test_attention(masked):
    rng = _rng(7)
    B, N, C, H = 2, 5, 6, 2
    p = {"a.qkv.weight": rng.standard_normal((3 * C, C)) * 0.3, "a.qkv.bias": rng.standard_normal(3 * C),
         "a.proj.weight": rng.standard_normal((C, C)) * 0.3, "a.proj.bias": rng.standard_normal(C)}
    x = rng.standard_normal((B, N, C))
    m = rng.uniform(0.2, 1, (B, N)) if masked else None
    out, cache = attention_forward(x, p, "a.", H, m)
    R = rng.standard_normal(out.shape)
    dx, grads, dm = attention_backward(R, cache)
    f = lambda: np.sum(attention_forward(x, p, "a.", H, m)[0] * R)
    assert rel_error(numerical_grad(f, x), dx) < TOL
    assert max(check_param_grads(f, p, grads).values()) < TOL
    if masked:
        assert rel_error(numerical_grad(f, m), dm) < TOL


@pytest.mark.parametrize("init_values", [None, 0.5])
def test_block_and_mlp(init_values):
    rng = _rng(8)
    cfg = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=6, depth=1,
                    num_heads=2, init_values=init_values)
    p = {k: v + rng.standard_normal(v.shape) * 0.2 for k, v in init_params(cfg, rng).items()}
    x = rng.standard_normal((2, cfg.num_tokens, 6))
    m = rng.uniform(0.2, 1, (2, cfg.num_tokens))
    out, cache = block_forward(x, p, "blocks.0.", 2, m)
    R = rng.standard_normal(out.shape)
    dx, grads, dm = block_backward(R, cache)
    f = lambda: np.sum(block_forward(x, p, "blocks.0.", 2, m)[0] * R)
    assert rel_error(numerical_grad(f, x), dx) < TOL
    assert rel_error(numerical_grad(f, m), dm) < TOL
    keys = [k for k in p if k.startswith("blocks.0.")]
    assert set(grads) == set(keys)
    assert max(check_param_grads(f, p, grads, keys).values()) < TOL
    y, c = mlp_forward(x, p, "blocks.0.mlp.")
    dx, g = mlp_backward(R, c)
    f2 = lambda: np.sum(mlp_forward(x, p, "blocks.0.mlp.")[0] * R)
    assert rel_error(numerical_grad(f2, x), dx) < TOL


def test_patchify_inverse_and_conv_order():
    rng = _rng(9)
    img = rng.standard_normal((2, 3, 6, 4))
    pt = patchify(img, 2)
    assert pt.shape == (2, 6, 12)
    assert np.array_equal(unpatchify(pt, 2, 3, 6, 4), img)
    # patch (row 1, col 0), channel 2, pixel (1, 0) -> index 2*4 + 1*2 + 0 of patch 1*2 + 0
    assert pt[1, 2, 2 * 4 + 1 * 2 + 0] == img[1, 2, 2 + 1, 0]


CONFIGS = [dict(), dict(distilled=True, init_values=0.3), dict(class_token=False, global_pool="avg", qkv_bias=False)]


@pytest.mark.parametrize("extra", CONFIGS)
def test_embed_head_and_full_vit(extra):
    rng = _rng(10)
    cfg = ViTConfig(img_size=4, patch_size=2, in_chans=2, num_classes=3, embed_dim=6, depth=2, num_heads=2,
                    **extra)
    p = {k: v + rng.standard_normal(v.shape) * 0.2 for k, v in init_params(cfg, rng).items()}
    img = rng.standard_normal((2, 2, 4, 4))
    logits, cache = vit_forward(p, img, cfg)
    R = rng.standard_normal(logits.shape)
    dimg, grads = vit_backward(R, cache)
    assert grads.keys() == p.keys()
    assert all(grads[k].shape == p[k].shape and grads[k].dtype == p[k].dtype for k in p)
    f = lambda: np.sum(vit_forward(p, img, cfg)[0] * R)
    errs = check_param_grads(f, p, grads)
    assert max(errs.values()) < TOL, errs
    assert rel_error(numerical_grad(f, img), dimg) < TOL
    _, _, err = directional_check(f, p, grads, rng)
    assert err < TOL


def test_float32_follows_params_and_mixed_dtypes_rejected():
    rng = _rng(11)
    cfg = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=6, depth=1, num_heads=2)
    p32 = init_params(cfg, rng, np.float32)
    img = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    logits, cache = vit_forward(p32, img, cfg)
    assert logits.dtype == np.float32
    _, grads = vit_backward(np.ones_like(logits), cache)
    assert all(g.dtype == np.float32 for g in grads.values())
    with pytest.raises(TypeError, match="float64"):
        vit_forward(p32, img.astype(np.float64), cfg)
    mixed = dict(p32, **{"head.bias": p32["head.bias"].astype(np.float64)})
    with pytest.raises(TypeError, match="mix dtypes"):
        vit_forward(mixed, img, cfg)
    with pytest.raises(TypeError, match="float16"):
        vit_forward({k: v.astype(np.float16) for k, v in p32.items()}, img.astype(np.float16), cfg)


@pytest.mark.parametrize("shape, match", [((1, 2, 4, 4), r"\(B, 1, 4, 4\)"), ((1, 1, 8, 8), "got"),
                                          ((1, 4, 4), "NCHW"), ((0, 1, 4, 4), "empty batch")])
def test_bad_image_shapes(shape, match):
    cfg = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=6, depth=1, num_heads=2)
    p = init_params(cfg, _rng())
    with pytest.raises(ValueError, match=match):
        vit_forward(p, np.zeros(shape), cfg)


def test_bad_images_values_and_params():
    cfg = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=6, depth=1, num_heads=2)
    p = init_params(cfg, _rng())
    img = np.zeros((1, 1, 4, 4))
    img[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        vit_forward(p, img, cfg)
    with pytest.raises(TypeError, match="int64"):
        vit_forward(p, np.zeros((1, 1, 4, 4), dtype=np.int64), cfg)
    q = dict(p)
    del q["head.bias"]
    q["extra.weight"] = np.zeros(3)
    q["blocks.0.norm1.weight"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"missing keys \['head.bias'\].*unexpected keys \['extra.weight'\].*"
                                         r"blocks.0.norm1.weight: expected \(6,\), got \(5,\)"):
        vit_forward(q, np.zeros((1, 1, 4, 4)), cfg)


def test_gradient_checker_catches_a_wrong_backward():
    """A GELU backward that forgets the x * pdf term must fail the check the real one passes."""
    rng = _rng(12)
    x = rng.standard_normal((4, 5))
    R = rng.standard_normal(x.shape)
    _, cache = gelu_forward(x)
    num = numerical_grad(lambda: np.sum(gelu_forward(x)[0] * R), x)
    assert rel_error(num, gelu_backward(R, cache)) < TOL
    wrong = R * cache[1]                                   # Phi(x) only
    assert rel_error(num, wrong) > 1e-2
    p = {"w": rng.standard_normal((3, 5)), "b": rng.standard_normal(3)}
    f = lambda: np.sum(linear_forward(x, p["w"], p["b"])[0])
    wrong_grads = {"w": np.ones((3, 5)), "b": np.full(3, 4.0)}
    assert directional_check(f, p, wrong_grads, rng)[2] > 1e-2
    with pytest.raises(TypeError, match="float64"):
        numerical_grad(f, x.astype(np.float32))


@pytest.mark.parametrize("bad, match", [(dict(img_size=30, patch_size=4), "multiple"),
                                        (dict(embed_dim=10, num_heads=3), "divisible"),
                                        (dict(global_pool="max"), "global_pool"),
                                        (dict(depth=0), "depth"),
                                        (dict(class_token=False), "needs class_token")])
def test_bad_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**bad)


def test_param_shapes_match_deit_tiny_count():
    from minitofe.config import get_config
    n = sum(int(np.prod(s)) for s in param_shapes(get_config("deit_tiny_patch16_224")).values())
    assert n == 5_717_416  # timm's deit_tiny_patch16_224 parameter count


@pytest.mark.parametrize("mask", [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
def test_masked_attention_finite_differences_with_diagonal_only_rows(mask):
    """Hard 0/1 masks, including rows where every key but the diagonal is masked: values finite and
    gradients (scores, mask, inputs, params) equal central differences."""
    rng = _rng(13)
    B, N, C, H = 1, 4, 6, 2
    p = {"a.qkv.weight": rng.standard_normal((3 * C, C)) * 0.5, "a.qkv.bias": rng.standard_normal(3 * C),
         "a.proj.weight": rng.standard_normal((C, C)) * 0.5, "a.proj.bias": rng.standard_normal(C)}
    x = rng.standard_normal((B, N, C))
    m = np.array([mask])
    out, cache = attention_forward(x, p, "a.", H, m)
    assert np.all(np.isfinite(out))
    R = rng.standard_normal(out.shape)
    dx, grads, dm = attention_backward(R, cache)
    f = lambda: np.sum(attention_forward(x, p, "a.", H, m)[0] * R)
    assert rel_error(numerical_grad(f, x), dx) < TOL
    assert rel_error(numerical_grad(f, m), dm) < TOL
    assert max(check_param_grads(f, p, grads).values()) < TOL
