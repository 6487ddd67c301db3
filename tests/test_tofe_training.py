"""The ToFe training forward/backward: finite differences on the whole model (soft relaxation, hard mask
with the straight-through surrogate), every method's gradient keys, a 20-step smoke test, bad input."""
import numpy as np
import pytest

import minitofe.tofe.stage as stage
from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, directional_check, numerical_grad, rel_error
from minitofe.nn.params import init_params
from minitofe.train.optim import adamw_init, adamw_step
from minitofe.tofe.config import ToFeConfig
from minitofe.tofe.gumbel import gumbel_softmax_forward
from minitofe.methods import init_params as init_tofe_params
from minitofe.methods import train_backward as tofe_train_backward, train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise, teacher_forward

CFG = ViTConfig(img_size=6, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=3, num_heads=2,
                mlp_ratio=2.0, distilled=True, init_values=0.5)


def _setup(method="tofe", seed=0, cfg=CFG, **kw):
    rng = np.random.default_rng(seed)
    kw.setdefault("target_ratio", 0.6)
    tcfg = ToFeConfig(method=method, stages=(1, 2), keep_ratios=(0.5, 0.5), **kw)
    teacher_params = init_params(cfg, rng)
    teacher_params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in teacher_params.items()}
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in teacher_params.items()}
    params.update({k: v + 0.3 * rng.standard_normal(v.shape)
                   for k, v in init_tofe_params(cfg, tcfg, rng).items()})
    images = rng.standard_normal((3, cfg.in_chans, cfg.img_size, cfg.img_size))
    labels = np.array([0, 2, 1])
    teacher = teacher_forward(teacher_params, images, cfg, tcfg.resolved_stages(cfg.depth))
    noise = draw_noise(rng, cfg, tcfg, 3, np.float64)
    return params, images, labels, tcfg, teacher, noise, rng


@pytest.mark.parametrize("method, fuse, last", [(m, False, "approximate") for m in (
    "tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative")] + [
    ("tofe", True, "approximate"), ("tofe-identity", True, "approximate"), ("tofe", True, "drop")])
def test_soft_relaxation_whole_model_finite_differences(method, fuse, last):
    """``fuse``: with the fused frozen token (``tofe/fuse.py``), whose weights send gradient to the
    patches, the mask and the selector's keep probability; ``last``: ``last_stage`` (with "drop" the last
    stage's frozen patches get gradient through the fused token only)."""
    params, images, labels, tcfg, teacher, noise, rng = _setup(method, tau=2.0, fuse_frozen=fuse,
                                                               last_stage=last)
    f = lambda: tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)[0]["loss"]
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)
    dimages, grads = tofe_train_backward(cache)
    assert grads.keys() == params.keys()
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype
               and np.all(np.isfinite(grads[k])) for k in params)
    errs = check_param_grads(f, params, grads)
    assert max(errs.values()) < 1e-6, sorted(errs.items(), key=lambda t: -t[1])[:3]
    assert rel_error(numerical_grad(f, images), dimages) < 1e-6


@pytest.mark.parametrize("fuse, last", [(False, "approximate"), (True, "approximate"), (True, "drop")])
def test_hard_mask_gradients_with_the_straight_through_surrogate(monkeypatch, fuse, last):
    """Hard forward: the value uses the 0/1 mask, the backward the soft Gumbel Jacobian. The surrogate
    whose finite differences equal that gradient keeps the hard value at the base point and moves with the
    soft sample: m(theta) = hard(theta_0) + y_soft(theta) - y_soft(theta_0). ``fuse``: the fused frozen
    token's weights (1 - m_j) q_j / sum_k (1 - m_k) q_k take that m too; ``last``: ``last_stage``."""
    params, images, labels, tcfg, teacher, noise, rng = _setup("tofe", seed=1, fuse_frozen=fuse,
                                                               last_stage=last)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in out["masks"])
    assert 0 < out["keep_ratios"].min() and out["keep_ratios"].max() < 1
    dimages, grads = tofe_train_backward(cache)
    base = []                                               # (hard, soft) at theta_0, per stage call

    def record(logits, noise_s, tau, hard=True):
        y, c = gumbel_softmax_forward(logits, noise_s, tau, hard=True)
        base.append((y, c[0]))
        return y, c
    monkeypatch.setattr(stage, "gumbel_softmax_forward", record)
    tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    calls = iter(())

    def surrogate(logits, noise_s, tau, hard=True):
        y_hard0, y_soft0 = next(calls)
        y_soft, c = gumbel_softmax_forward(logits, noise_s, tau, hard=False)
        return y_hard0 + (y_soft - y_soft0), c
    monkeypatch.setattr(stage, "gumbel_softmax_forward", surrogate)

    def f():
        nonlocal calls
        calls = iter(base)
        return tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)[0]["loss"]
    # h = 1e-5: with last_stage="drop" the first selector's small gradient takes ~3e-6 of rounding at
    # h = 1e-6 (shrinking with h as rounding does: 4e-7 at 1e-5, 3e-8 at 1e-4), the others' ~1e-7
    errs = check_param_grads(f, params, grads, h=1e-5)
    assert max(errs.values()) < 1e-6, sorted(errs.items(), key=lambda t: -t[1])[:3]
    assert rel_error(numerical_grad(f, images), dimages) < 1e-6
    sel = [k for k in params if k.startswith("tofe.selector.")]
    assert all(np.abs(grads[k]).max() > 0 for k in sel)     # the selector does learn through the mask


def test_directional_check_float64_whole_model():
    params, images, labels, tcfg, teacher, noise, rng = _setup("tofe", seed=2, tau=0.7, per_image_budget=True)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)
    _, grads = tofe_train_backward(cache)
    f = lambda: tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)[0]["loss"]
    assert directional_check(f, params, grads, rng)[2] < 1e-6


def test_losses_are_reported_and_sum_to_total():
    params, images, labels, tcfg, teacher, noise, _ = _setup("tofe", alpha=0.7, beta=1.3, lam=3.0)
    out, _ = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    L = out["losses"]
    assert L["total"] == pytest.approx(L["cls"] + 0.7 * L["kd"] + 1.3 * L["approx"] + L["flops"], rel=1e-12)
    assert L["kd"] > 0 and L["approx"] > 0 and L["flops"] > 0
    assert len(out["selector_logits"]) == len(out["masks"]) == len(out["stage_outputs"]) == 2
    assert out["selector_logits"][0].shape == (3, CFG.num_tokens, 2)
    assert out["macs_ratio"].shape == (3,) and np.all(out["macs_ratio"] < 1.1)


def test_twenty_adamw_steps_lower_the_loss_and_move_macs_toward_target():
    cfg = CFG.replace(img_size=8, distilled=False)
    params, images, labels, tcfg, teacher, _, rng = _setup("tofe", seed=3, cfg=cfg, target_ratio=0.5,
                                                           lam=20.0)
    images = rng.standard_normal((8, 1, 8, 8))
    labels = rng.integers(0, 3, 8)
    teacher = None
    tcfg = tcfg.replace(alpha=0.0, beta=0.0)
    noise = draw_noise(np.random.default_rng(0), cfg, tcfg, 8, np.float64)       # fixed micro-batch
    state = adamw_init(params)
    first = tofe_train_forward(params, images, labels, cfg, tcfg, noise, teacher)[0]
    for _ in range(20):
        out, cache = tofe_train_forward(params, images, labels, cfg, tcfg, noise, teacher)
        _, grads = tofe_train_backward(cache)
        adamw_step(params, grads, state, lr=3e-3, weight_decay=0.0)
    last = tofe_train_forward(params, images, labels, cfg, tcfg, noise, teacher)[0]
    assert last["loss"] < first["loss"]
    assert abs(last["macs_ratio"].mean() - 0.5) < abs(first["macs_ratio"].mean() - 0.5)


@pytest.mark.parametrize("fuse", [False, True])
def test_frozen_everything_is_legal(fuse):
    """A selector that freezes every patch: the blocks run on the prefix tokens alone (and the fused token
    of every patch), all finite."""
    params, images, labels, tcfg, teacher, noise, _ = _setup("tofe", fuse_frozen=fuse)
    for s in range(len(noise)):
        noise[s][..., 1] = 1e6                                  # forces "freeze" everywhere
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    assert all(np.all(m[:, CFG.num_prefix_tokens:] == 0) for m in out["masks"])
    _, grads = tofe_train_backward(cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("change, match", [
    (dict(noise_shape=(3, 9, 3)), r"noise\[0\] must be float64 of shape \(3, 9, 2\)"),
    (dict(noise_dtype=np.float32), r"noise\[0\] must be float64"),
    (dict(noise_count=1), "list of 2 arrays"),
    (dict(method="evit-drop"), "training-free"),
    (dict(drop_tofe=True), "no ToFe selector/approximator parameters"),
    (dict(no_teacher=True), "teacher"),
])
def test_bad_training_input(change, match):
    params, images, labels, tcfg, teacher, noise, _ = _setup("tofe")
    if "noise_shape" in change:
        noise = [np.zeros(change["noise_shape"])] * 2
    if "noise_dtype" in change:
        noise = [n.astype(change["noise_dtype"]) for n in noise]
    if "noise_count" in change:
        noise = noise[:1]
    if "method" in change:
        tcfg = tcfg.replace(method=change["method"])
    if change.get("drop_tofe"):
        params = {k: v for k, v in params.items() if not k.startswith("tofe.")}
    if change.get("no_teacher"):
        teacher = None
    with pytest.raises((ValueError, TypeError), match=match):
        tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)


@pytest.mark.parametrize("kw, match", [(dict(keep_ratios=(0.0, 0.5)), "keep_ratios"),
                                       (dict(keep_ratios=(1.2, 0.5)), "keep_ratios"),
                                       (dict(stages=(2, 1)), "strictly increasing"),
                                       (dict(stages=(1, 1)), "strictly increasing"),
                                       (dict(tau=0.0), "tau"), (dict(method="tofu"), "unknown method")])
def test_bad_tofe_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        ToFeConfig(**kw)


def test_stages_beyond_depth_rejected():
    with pytest.raises(ValueError, match="beyond the depth"):
        ToFeConfig(stages=(1, 3), keep_ratios=(0.5, 0.5)).resolved_stages(3)
