"""ToFe building blocks: selector, Gumbel-Softmax, approximator, losses, the budget loss, the stage's
mix, the token gather, parameters.

Every backward is checked against central finite differences in float64 (minitofe.gradcheck) on a loss
sum(out * R) with a fixed random R, after moving the parameters away from their init."""
import numpy as np
import pytest

from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, numerical_grad, rel_error
from minitofe.tofe.approximator import approximator_backward, approximator_forward
from minitofe.tofe.budget_loss import budget_loss_backward, budget_loss_forward
from minitofe.tofe.config import ToFeConfig
from minitofe.tofe.gumbel import (gumbel_noise, gumbel_softmax_backward, gumbel_softmax_forward,
                                  tau_at)
from minitofe.tofe.losses import (approx_loss_backward, approx_loss_forward, flops_loss_backward,
                                  flops_loss_forward, kd_loss_backward, kd_loss_forward)
from minitofe.methods import init_params as init_tofe_params
from minitofe.methods import param_shapes as tofe_param_shapes
from minitofe.tofe.params import check_tofe_params
from minitofe.tofe.selector import keep_probability, selector_backward, selector_forward
from minitofe.tofe.stage import mix_backward, mix_forward
from minitofe.tofe.tokens import gather_tokens, gather_tokens_backward, mask_to_indices, ragged_indices

TOL = 1e-6
CFG = ViTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
TCFG = ToFeConfig(stages=(1, 2, 3))   # N = 1 + 4 = 5 tokens, C = 8, r = 4


def perturbed_params(rng, tcfg=TCFG):
    params = init_tofe_params(CFG, tcfg, rng)
    for v in params.values():
        v += 0.3 * rng.standard_normal(v.shape)
    return params


def assert_grads(f, params, grads, keys):
    errs = check_param_grads(f, params, grads, keys=keys)
    assert set(grads) == set(keys)
    assert max(errs.values()) <= TOL, errs


# ---------------------------------------------------------------- selector
def test_selector_gradients():
    rng = np.random.default_rng(0)
    params = perturbed_params(rng)
    pre = "tofe.selector.1."
    x = rng.standard_normal((2, CFG.num_tokens, 8))
    R = rng.standard_normal((2, CFG.num_tokens, 2))
    f = lambda: (selector_forward(x, params, pre, 1)[0] * R).sum()
    logits, cache = selector_forward(x, params, pre, 1)
    assert logits.shape == (2, 5, 2)
    dx, grads = selector_backward(R, cache)
    assert rel_error(numerical_grad(f, x), dx) <= TOL
    assert_grads(f, params, grads, [k for k in params if k.startswith(pre)])
    for k, g in grads.items():
        assert g.shape == params[k].shape and g.dtype == params[k].dtype


def test_selector_global_context_ignores_prefix_tokens():
    rng = np.random.default_rng(1)
    params = perturbed_params(rng)
    x = rng.standard_normal((1, 5, 8))
    a, _ = selector_forward(x, params, "tofe.selector.0.", 1)
    x[:, 0] += 3.0                                      # change the class token only
    b, _ = selector_forward(x, params, "tofe.selector.0.", 1)
    np.testing.assert_array_equal(a[:, 1:], b[:, 1:])
    p = keep_probability(a)
    assert p.shape == (1, 5) and np.all((p > 0) & (p < 1))
    with pytest.raises(ValueError, match="num_prefix"):
        selector_forward(x, params, "tofe.selector.0.", 5)


# ---------------------------------------------------------------- Gumbel-Softmax
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_soft_gumbel_gradient(tau):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 2))
    noise = gumbel_noise(rng, logits.shape)
    R = rng.standard_normal(logits.shape)
    f = lambda: (gumbel_softmax_forward(logits, noise, tau, hard=False)[0] * R).sum()
    _, cache = gumbel_softmax_forward(logits, noise, tau, hard=False)
    assert rel_error(numerical_grad(f, logits), gumbel_softmax_backward(R, cache)) <= TOL


def test_hard_gumbel_value_and_straight_through():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 6, 2))
    noise = gumbel_noise(rng, logits.shape)
    y, c_hard = gumbel_softmax_forward(logits, noise, 0.7, hard=True)
    y_soft, c_soft = gumbel_softmax_forward(logits, noise, 0.7, hard=False)
    assert set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(y.sum(-1), 1.0)
    np.testing.assert_array_equal(y.argmax(-1), y_soft.argmax(-1))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(gumbel_softmax_backward(dy, c_hard), gumbel_softmax_backward(dy, c_soft))
    tie = np.zeros((1, 2))
    np.testing.assert_array_equal(gumbel_softmax_forward(tie, tie.copy(), 1.0)[0], [[1.0, 0.0]])  # keep


class _ExtremeRng(np.random.Generator):
    def random(self, size=None, dtype=np.float64, out=None):
        return np.resize(np.array([0.0, 1.0, 0.5]), size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gumbel_noise_finite_and_distributed(dtype):
    g = gumbel_noise(_ExtremeRng(np.random.PCG64(0)), (6,), dtype)
    assert g.dtype == dtype and np.all(np.isfinite(g))
    g = gumbel_noise(np.random.default_rng(4), (200_000,), dtype)
    assert abs(g.mean() - np.euler_gamma) < 0.02 and abs(g.var() - np.pi ** 2 / 6) < 0.05


def test_gumbel_bad_inputs():
    logits = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match=r"noise shape \(2, 2\).*logits shape \(2, 3, 2\)"):
        gumbel_softmax_forward(logits, np.zeros((2, 2)), 1.0)
    with pytest.raises(TypeError, match="noise dtype float32 != logits dtype float64"):
        gumbel_softmax_forward(logits, np.zeros((2, 3, 2), np.float32), 1.0)
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau must be"):
            gumbel_softmax_forward(logits, logits.copy(), tau)
    with pytest.raises(TypeError, match="Generator"):
        gumbel_noise(np.random.RandomState(0), (2,))


def test_tau_schedule():
    assert tau_at(50, 100, 2.0) == 2.0
    for s in ("linear", "cosine", "exponential"):
        assert tau_at(0, 100, 2.0, 0.5, s) == pytest.approx(2.0)
        assert tau_at(100, 100, 2.0, 0.5, s) == pytest.approx(0.5)
        assert tau_at(500, 100, 2.0, 0.5, s) == pytest.approx(0.5)
    assert tau_at(50, 100, 2.0, 0.5, "linear") == pytest.approx(1.25)
    assert tau_at(50, 100, 2.0, 0.5, "cosine") == pytest.approx(1.25)
    assert tau_at(50, 100, 2.0, 0.5, "exponential") == pytest.approx(1.0)
    assert tau_at(25, 100, 2.0, 0.5, "cosine") > tau_at(25, 100, 2.0, 0.5, "linear")
    with pytest.raises(ValueError, match="step must be >= 0"):
        tau_at(-1, 10, 1.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        tau_at(0, 0, 1.0)
    with pytest.raises(ValueError, match="schedule"):
        tau_at(0, 10, 1.0, 0.1, "step")


# ---------------------------------------------------------------- approximator
def test_approximator_gradients_and_fresh_identity():
    rng = np.random.default_rng(5)
    fresh = init_tofe_params(CFG, TCFG, rng)
    x = rng.standard_normal((2, 5, 8))
    np.testing.assert_array_equal(approximator_forward(x, fresh, "tofe.approx.2.")[0], x)
    params = perturbed_params(rng)
    pre = "tofe.approx.2."
    for shape in [(2, 5, 8), (7, 8)]:                   # training (B, N, C) and gathered rows (M, C)
        x = rng.standard_normal(shape)
        R = rng.standard_normal(shape)
        f = lambda: (approximator_forward(x, params, pre)[0] * R).sum()
        dx, grads = approximator_backward(R, approximator_forward(x, params, pre)[1])
        assert rel_error(numerical_grad(f, x), dx) <= TOL
        assert_grads(f, params, grads, [k for k in params if k.startswith(pre)])


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_kd_loss(T):
    rng = np.random.default_rng(6)
    zs, zt = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    f = lambda: kd_loss_forward(zs, zt, T)[0]
    loss, cache = kd_loss_forward(zs, zt, T)
    assert loss > 0 and kd_loss_forward(zt, zt.copy(), T)[0] == pytest.approx(0.0, abs=1e-15)
    assert rel_error(numerical_grad(f, zs), kd_loss_backward(1.0, cache)) <= TOL
    with pytest.raises(ValueError, match=r"teacher_logits shape \(4, 4\)"):
        kd_loss_forward(zs, zt[:, :4], T)


def test_approx_loss():
    rng = np.random.default_rng(7)
    a, t = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 4, 8))
    w = (rng.random((2, 4)) < 0.5).astype(np.float64)
    w[0, 0] = 1.0
    loss, cache = approx_loss_forward(a, t, w)
    assert loss == pytest.approx((w * ((a - t) ** 2).mean(-1)).sum() / w.sum())
    f = lambda: approx_loss_forward(a, t, w)[0]
    assert rel_error(numerical_grad(f, a), approx_loss_backward(1.0, cache)) <= TOL
    loss, cache = approx_loss_forward(a, t, np.zeros((2, 4)))
    assert loss == 0.0 and not approx_loss_backward(1.0, cache).any()
    with pytest.raises(ValueError, match=r"frozen_weight must be \(B, P\) = \(2, 4\)"):
        approx_loss_forward(a, t, np.zeros((2, 5)))


@pytest.mark.parametrize("per_image", [False, True])
def test_flops_loss(per_image):
    rng = np.random.default_rng(8)
    ratio = rng.random(5)
    f = lambda: flops_loss_forward(ratio, 0.5, 2.0, per_image)[0]
    loss, cache = flops_loss_forward(ratio, 0.5, 2.0, per_image)
    want = 2.0 * (((ratio - 0.5) ** 2).mean() if per_image else (ratio.mean() - 0.5) ** 2)
    assert loss == pytest.approx(want)
    dratio = flops_loss_backward(1.0, cache)
    assert dratio.shape == (5,) and rel_error(numerical_grad(f, ratio), dratio) <= TOL
    with pytest.raises(ValueError, match=r"ratio must be \(B,\)"):
        flops_loss_forward(ratio[:, None], 0.5, 2.0, per_image)


@pytest.mark.parametrize("method, per_image", [("tofe", False), ("tofe", True), ("tofe-uniform", False),
                                               ("tofe-cumulative", False)])
def test_budget_loss_gradient_per_kept_patch(method, per_image):
    """d L / d m[b, p] of a stage's patches is that stage's dkept[b] (the kept count n_s = T + sum_p m)."""
    rng = np.random.default_rng(9)
    tcfg = ToFeConfig(method=method, stages=TCFG.stages, per_image_budget=per_image, target_ratio=0.4)
    T, P = CFG.num_prefix_tokens, CFG.num_patches
    patches = [rng.random((3, P)) for _ in TCFG.stages]                                # m_s, (B, P)
    f = lambda: budget_loss_forward([np.concatenate([np.ones((3, T)), m], axis=1) for m in patches], CFG,
                                    tcfg, TCFG.stages)
    loss, macs, ratio, keep_frac, cache = f()
    assert macs.shape == ratio.shape == (3,) and keep_frac.shape == (3, 3) and loss > 0
    dkept = budget_loss_backward(cache)
    for s, m in enumerate(patches):
        assert rel_error(numerical_grad(lambda: f()[0], m), np.broadcast_to(dkept[s][:, None], (3, P))) <= TOL


def test_mix_gradients():
    rng = np.random.default_rng(10)
    h, a, m, R = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4)), rng.random((2, 5)), \
        rng.standard_normal((2, 5, 4))
    dh, da, dm = mix_backward(R, h, a, m)
    f = lambda: (mix_forward(h, a, m) * R).sum()
    for x, dx in ((h, dh), (a, da), (m, dm)):
        assert rel_error(numerical_grad(f, x), dx) <= TOL


def test_gather_tokens_gradient_and_ragged_indices():
    rng = np.random.default_rng(11)
    x, keep = rng.standard_normal((3, 6, 4)), rng.random((3, 6)) < 0.5
    idx = mask_to_indices(np.stack([[True, False, True, True, False, False]] * 3))      # (3, 3)
    R = rng.standard_normal((3, 3, 4))
    dx = gather_tokens_backward(R, idx, 6)
    assert rel_error(numerical_grad(lambda: (gather_tokens(x, idx) * R).sum(), x), dx) <= TOL
    assert [r.tolist() for r in ragged_indices(keep)] == [np.flatnonzero(row).tolist() for row in keep]


# ---------------------------------------------------------------- parameters
def test_param_shapes_per_method():
    def groups(method):
        return {k.split(".")[1] for k in tofe_param_shapes(CFG, TCFG.replace(method=method))}
    assert groups("dense") == groups("idle") == groups("evit") == groups("evit-drop") == set()
    assert groups("tofe-cumulative") == groups("tofe-identity") == {"selector"}
    assert groups("dynamicvit") == {"predictor"}
    assert groups("tofe") == groups("tofe-uniform") == {"selector", "approx"}
    shapes = tofe_param_shapes(CFG, TCFG)
    assert len(shapes) == 3 * 8 + 3 * 6
    assert shapes["tofe.selector.0.fc2.weight"] == (2, 8) and shapes["tofe.approx.2.fc1.weight"] == (2, 8)
    params = init_tofe_params(CFG, TCFG, np.random.default_rng(9), np.float32)
    assert all(v.dtype == np.float32 for v in params.values())
    assert not params["tofe.approx.0.fc2.weight"].any() and params["tofe.selector.0.fc1.weight"].any()
    with pytest.raises(ValueError, match="divisible by 4"):
        tofe_param_shapes(CFG.replace(embed_dim=6, num_heads=2), TCFG)
    with pytest.raises(ValueError, match="approx_reduction"):
        tofe_param_shapes(CFG, TCFG.replace(approx_reduction=3, method="tofe"))


def test_check_tofe_params():
    params = init_tofe_params(CFG, TCFG, np.random.default_rng(10))
    assert check_tofe_params(params, CFG, TCFG) == list(tofe_param_shapes(CFG, TCFG))
    check_tofe_params(params, CFG, TCFG.replace(method="tofe-identity"))     # extra approx keys are fine
    check_tofe_params({}, CFG, TCFG.replace(method="dense"))
    with pytest.raises(ValueError, match="weights have no ToFe selector/approximator parameters; method "
                                         "'tofe' needs them"):
        check_tofe_params({"head.weight": np.zeros((3, 8))}, CFG, TCFG)
    bad = dict(params)
    del bad["tofe.approx.1.fc1.bias"]
    bad["tofe.selector.2.fc3.weight"] = np.zeros((3, 2))
    bad["tofe.selector.3.norm.weight"] = np.zeros(8)
    with pytest.raises(ValueError, match=r"missing keys \['tofe.approx.1.fc1.bias'\].*"
                                         r"unknown keys \['tofe.selector.3.norm.weight'\].*"
                                         r"tofe.selector.2.fc3.weight: expected \(2, 2\), got \(3, 2\)"):
        check_tofe_params(bad, CFG, TCFG)
