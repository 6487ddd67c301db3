"""The authors' baselines ``evit`` and ``dynamicvit``: finite differences of every new piece and of each
whole training forward (float64), keep-all equals dense, order and fusion checked independently,
cumulative masks, MACs against the matmuls actually run, training against inference, the fast path,
the renamed simplified methods, and ``minitofe train`` on a tiny image folder."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minitofe
import minitofe.methods.dynamicvit_train as dynamicvit
from minitofe.config import ViTConfig
from minitofe.gradcheck import check_param_grads, directional_check, numerical_grad, rel_error
from minitofe.kernels import fast_kernels, ops as kernel_ops
from minitofe.nn.params import init_params
from minitofe.nn.vit import vit_forward
from minitofe.methods.dynamicvit_budget import dynamicvit_ratios
from minitofe.methods.evit_budget import evit_keep_rate
from minitofe.tofe.config import ToFeConfig
from minitofe.methods.evit_block import (evit_block_backward, evit_block_forward, keep_count, keep_rate_at,
                                reduce_backward, reduce_forward)
from minitofe.methods.evit_model import evit_train_forward
from minitofe.tofe.gumbel import gumbel_softmax_forward
from minitofe.methods import inference as tofe_inference
from minitofe.tofe.macs import attention_macs, block_macs, dense_macs, mlp_macs, predictor_macs
from minitofe.methods import init_params as init_tofe_params
from minitofe.methods.dynamicvit_predictor import predictor_backward, predictor_forward
from minitofe.methods import train_backward as tofe_train_backward, train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise, teacher_forward
from test_macs import counted

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
T, P = CFG.num_prefix_tokens, CFG.num_patches


def _setup(method, cfg=CFG, seed=0, B=3, **kw):
    """Perturbed teacher and student params (predictors large enough to matter, not saturated), images,
    noise."""
    rng = np.random.default_rng(seed)
    tcfg = ToFeConfig(method=method, **kw)
    teacher_params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(cfg, rng).items()}
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in teacher_params.items()}
    params.update({k: v + 0.5 * rng.standard_normal(v.shape) for k, v in init_tofe_params(cfg, tcfg, rng).items()})
    images = rng.standard_normal((B, cfg.in_chans, cfg.img_size, cfg.img_size))
    labels = rng.integers(0, cfg.num_classes, B)
    teacher = teacher_forward(teacher_params, images, cfg, tcfg.resolved_stages(cfg.depth))
    return params, images, labels, tcfg, teacher, draw_noise(rng, cfg, tcfg, B, np.float64), rng


# every parameter by a random direction, these (each reduction / stage start, the ends) entry by entry
FD_KEYS = ("cls_token", "patch_embed.proj.bias", "blocks.1.norm1.", "blocks.1.attn.qkv.", "blocks.2.attn.qkv.bias",
           "blocks.3.mlp.fc2.bias", "norm.", "head.bias", "tofe.")


def _whole_model_check(f, params, grads, rng, h=1e-6):
    assert directional_check(f, params, grads, rng, h)[2] < 1e-7
    keys = [k for k in params if k.startswith(FD_KEYS)]
    errs = check_param_grads(f, params, grads, keys, h)
    assert max(errs.values()) < 1e-6, sorted(errs.items(), key=lambda t: -t[1])[:3]


def _model(params, tcfg, cfg=CFG):
    return minitofe.Model(params, cfg, tcfg)


# ---------------------------------------------------------------- EViT pieces
def test_keep_count_is_the_authors_ceil_and_the_schedule_anneals_from_one():
    assert keep_count(0.7, 196) == 138 and keep_count(0.35, 20) == 7 and keep_count(1.0, 5) == 5
    assert keep_count(1e-9, 5) == 1
    rates = [keep_rate_at(s, 300, 0.7, warmup=10 / 300, anneal=100 / 300) for s in range(300)]
    assert rates[:11] == [1.0] * 11 and rates[110:] == [0.7] * 190
    assert rates[60] == pytest.approx(0.7 + 0.3 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert keep_rate_at(0, 10, 0.5, warmup=0, anneal=0) == 0.5      # no annealing: the target throughout


@pytest.mark.parametrize("fuse", [True, False])
def test_reduce_finite_differences(fuse):
    rng = np.random.default_rng(0)
    x, cls = rng.standard_normal((2, 7, 4)), rng.uniform(0.01, 0.3, (2, 6))
    R = rng.standard_normal((2, 1 + 3 + fuse, 4))
    out, kept_idx, cache = reduce_forward(x, cls, 3, 1, fuse)
    dx, dcls = reduce_backward(R, cache)
    f = lambda: (reduce_forward(x, cls, 3, 1, fuse)[0] * R).sum()
    assert rel_error(numerical_grad(f, x), dx) < 1e-8 and rel_error(numerical_grad(f, cls), dcls) < 1e-8


def test_kept_order_and_the_fused_token_computed_independently():
    rng = np.random.default_rng(1)
    B, n, C, K, Tp = 3, 9, 5, 4, 2
    x, cls = rng.standard_normal((B, Tp + n, C)), rng.uniform(0, 1, (B, n))
    out, kept_idx, _ = reduce_forward(x, cls, K, Tp, True)
    assert out.shape == (B, Tp + K + 1, C)
    for b in range(B):
        best = sorted(range(n), key=lambda j: -cls[b, j])[:K]
        assert list(kept_idx[b]) == [0, 1] + [Tp + j for j in sorted(best)]       # prefix, then in order
        np.testing.assert_array_equal(out[b, :Tp + K], x[b, kept_idx[b]])
        fused = sum(cls[b, j] * x[b, Tp + j] for j in range(n) if j not in best)  # not renormalised
        np.testing.assert_allclose(out[b, -1], fused, rtol=1e-12)


@pytest.mark.parametrize("cfg", [CFG, CFG.replace(distilled=True, init_values=0.3)], ids=["cls", "dist+ls"])
def test_reduction_block_finite_differences(cfg):
    """The whole reduction block, incl. the class-attention weights of the fused token into qkv."""
    rng = np.random.default_rng(2)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(cfg, rng).items()}
    block = {k: v for k, v in params.items() if k.startswith("blocks.1.")}
    x = rng.standard_normal((2, cfg.num_tokens, cfg.embed_dim))
    Tp, K = cfg.num_prefix_tokens, 6
    R = rng.standard_normal((2, Tp + K + 1, cfg.embed_dim))
    f = lambda: (evit_block_forward(x, params, "blocks.1.", 2, Tp, K)[0] * R).sum()
    out, _, _, cache = evit_block_forward(x, params, "blocks.1.", 2, Tp, K)
    dx, grads = evit_block_backward(R, cache)
    assert grads.keys() == block.keys()
    errs = check_param_grads(f, params, grads, keys=list(block))
    assert max(errs.values()) < 1e-7, errs
    assert rel_error(numerical_grad(f, x), dx) < 1e-7


# ---------------------------------------------------------------- EViT whole model
def test_evit_whole_training_forward_finite_differences():
    params, images, labels, tcfg, _, _, rng = _setup("evit", evit_keep_rate=0.6)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, None)
    assert out["tokens"] == [1 + 10 + 1, 1 + 7 + 1, 1 + 5 + 1]         # ceil(.6 * 16), ceil(.6 * 11), ..
    dimages, grads = tofe_train_backward(cache)
    assert grads.keys() == params.keys()
    f = lambda: tofe_train_forward(params, images, labels, CFG, tcfg, None)[0]["loss"]
    _whole_model_check(f, params, grads, rng)
    assert rel_error(numerical_grad(f, images), dimages) < 1e-6


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_keep_all_equals_dense_and_train_equals_predict(fuse):
    params, images, labels, tcfg, _, _, _ = _setup("evit", evit_keep_rate=1.0, evit_fuse=fuse)
    dense, _ = vit_forward(params, images, CFG)
    out, _ = evit_train_forward(params, images, labels, CFG, tcfg)
    logits, info = minitofe.predict(_model(params, tcfg), images)
    np.testing.assert_array_equal(out["logits"], dense)
    np.testing.assert_array_equal(logits, dense)
    assert np.all(info["macs"] == dense_macs(CFG))
    out, _ = evit_train_forward(params, images, labels, CFG, tcfg, keep_rate=0.5)
    logits, info = minitofe.predict(_model(params, tcfg), images, keep_ratios=(0.5, 0.5, 0.5))
    np.testing.assert_array_equal(out["logits"], logits)                # same semantics, same numbers
    assert all(np.array_equal(a, b) for a, b in zip(out["kept"], info["kept"]))
    assert all(not (b & ~a).any() for a, b in zip(info["kept"], info["kept"][1:]))   # nothing comes back


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_macs_equal_the_matmuls_run_and_a_hand_count(fuse):
    params, images, _, tcfg, _, _, _ = _setup("evit", evit_keep_rate=0.5, evit_fuse=fuse)
    result = {}
    macs = counted(lambda p, x: result.update(info=tofe_inference(p, x, CFG, tcfg)[1]), params, images)
    assert macs == int(round(float(np.sum(result["info"]["macs"]))))
    C, f = CFG.embed_dim, int(fuse)
    n = [17, 1 + keep_count(0.5, 16) + f]                               # tokens after each reduction
    n += [1 + keep_count(0.5, n[-1] - 1) + f]
    n += [1 + keep_count(0.5, n[-1] - 1) + f]
    hand = (dense_macs(CFG) - 3 * block_macs(17, C, 4.0)
            + sum(attention_macs(a, C) + mlp_macs(b, C, 4.0) for a, b in zip(n, n[1:])))
    assert result["info"]["macs"][0] == hand



@pytest.mark.parametrize("option", ["reduce_in_block", "predictor"])
def test_the_new_macs_options_have_exact_derivatives(option):
    from minitofe.tofe.macs import tofe_macs
    rng = np.random.default_rng(6)
    kept, R = rng.uniform(3.0, 17.0, size=(4, 3)), rng.standard_normal(4)
    kw = dict(selector=False, approximator=False, **{option: True})
    f = lambda: (tofe_macs(CFG, (1, 2, 3), kept, **kw)[0] * R).sum()
    _, d = tofe_macs(CFG, (1, 2, 3), kept, **kw)
    assert rel_error(numerical_grad(f, kept, h=1e-3), d * R[:, None]) <= 1e-6

# ---------------------------------------------------------------- DynamicViT pieces
def test_predictor_finite_differences_including_the_policy():
    rng = np.random.default_rng(3)
    tcfg = ToFeConfig(method="dynamicvit")
    params = {k: v + rng.standard_normal(v.shape) for k, v in init_tofe_params(CFG, tcfg, rng).items()}
    x, policy = rng.standard_normal((2, 5, 8)), rng.uniform(0.2, 1.0, (2, 5))
    R = rng.standard_normal((2, 5, 2))
    f = lambda: (predictor_forward(x, params, "tofe.predictor.1.", policy)[0] * R).sum()
    logp, cache = predictor_forward(x, params, "tofe.predictor.1.", policy)
    np.testing.assert_allclose(np.exp(logp).sum(axis=-1), 1.0)
    dx, grads, dpolicy = predictor_backward(R, cache)
    keys = [k for k in params if k.startswith("tofe.predictor.1.")]
    assert sorted(grads) == sorted(keys)
    assert max(check_param_grads(f, params, grads, keys).values()) < 1e-7
    assert rel_error(numerical_grad(f, x), dx) < 1e-7 and rel_error(numerical_grad(f, policy), dpolicy) < 1e-7


def _predictor_written_out(x, params, prefix, policy, eps):
    """DynamicViT's PredictorLG from its definition, independently of minitofe's layers."""
    from scipy.special import erf
    gelu = lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2)))                            # noqa: E731
    lin = lambda z, name: z @ params[prefix + name + ".weight"].T + params[prefix + name + ".bias"]  # noqa
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    u = gelu(lin(n * params[prefix + "in_conv.0.weight"] + params[prefix + "in_conv.0.bias"], "in_conv.1"))
    h = u.shape[-1] // 2
    g = (u[..., h:] * policy[..., None]).sum(1, keepdims=True) / policy.sum(1)[:, None, None]
    z = lin(gelu(lin(gelu(lin(np.concatenate([u[..., :h], np.broadcast_to(g, u[..., h:].shape)], -1),
                              "out_conv.0")), "out_conv.2")), "out_conv.4")
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_predictor_normalises_with_the_authors_layernorm_eps():
    """PredictorLG's LayerNorm is torch's default (eps 1e-5), not the ViT's 1e-6: on tokens of small
    variance the two differ visibly, and minitofe's predictor is the 1e-5 one."""
    rng = np.random.default_rng(4)
    params = {k: v + rng.standard_normal(v.shape)
              for k, v in init_tofe_params(CFG, ToFeConfig(method="dynamicvit"), rng).items()}
    x, policy = 3e-3 * rng.standard_normal((2, 5, 8)), rng.uniform(0.2, 1.0, (2, 5))   # variance ~1e-5
    logp, _ = predictor_forward(x, params, "tofe.predictor.0.", policy)
    authors = _predictor_written_out(x, params, "tofe.predictor.0.", policy, 1e-5)
    vit_eps = _predictor_written_out(x, params, "tofe.predictor.0.", policy, 1e-6)
    assert rel_error(logp, authors) < 1e-13 and rel_error(logp, vit_eps) > 1e-3


def test_dynamicvit_soft_whole_forward_finite_differences():
    params, images, labels, tcfg, teacher, noise, rng = _setup("dynamicvit", dvit_rho=0.7)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)
    assert all(v > 0 for v in out["losses"].values())
    dimages, grads = tofe_train_backward(cache)
    assert grads.keys() == params.keys()
    f = lambda: tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=False)[0]["loss"]
    _whole_model_check(f, params, grads, rng, h=1e-5)
    assert rel_error(numerical_grad(f, images), dimages) < 1e-6


def test_dynamicvit_hard_decisions_with_the_straight_through_surrogate(monkeypatch):
    """As for ToFe: the surrogate m(theta) = hard(theta_0) + y_soft(theta) - y_soft(theta_0) has the
    straight-through gradient as its true gradient."""
    params, images, labels, tcfg, teacher, noise, rng = _setup("dynamicvit", seed=4, dvit_rho=0.6)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    assert out["losses"]["token"] > 0 and 0 < out["keep_ratios"].min() < out["keep_ratios"].max() < 1
    _, grads = tofe_train_backward(cache)
    base, calls = [], iter(())

    def record(logits, noise_s, tau, hard=True):
        y, c = gumbel_softmax_forward(logits, noise_s, tau, hard=True)
        base.append((y, c[0]))
        return y, c

    def surrogate(logits, noise_s, tau, hard=True):
        y_hard0, y_soft0 = next(calls)
        y_soft, c = gumbel_softmax_forward(logits, noise_s, tau, hard=False)
        return y_hard0 + (y_soft - y_soft0), c
    monkeypatch.setattr(dynamicvit, "gumbel_softmax_forward", record)
    tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    monkeypatch.setattr(dynamicvit, "gumbel_softmax_forward", surrogate)

    def f():
        nonlocal calls
        calls = iter(base)
        return tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)[0]["loss"]
    _whole_model_check(f, params, grads, rng, h=1e-5)


def test_dynamicvit_losses_have_the_documented_reductions():
    params, images, labels, tcfg, teacher, noise, _ = _setup("dynamicvit", dvit_rho=0.6, dvit_ratio_weight=3.0,
                                                             dvit_kl_weight=0.7, dvit_token_weight=0.4)
    out, _ = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    L, ratios = out["losses"], (0.6, 0.36, 0.216)
    fracs = [m[:, T:].mean(axis=1) for m in out["masks"]]                  # per image keep fraction
    assert L["ratio"] == pytest.approx(3.0 / 3 * sum(np.mean((fr - r) ** 2) for fr, r in zip(fracs, ratios)))
    z, zt = out["logits"], teacher["logits"]
    p, pt = (np.exp(a - a.max(1, keepdims=True)) for a in (z, zt))
    p, pt = p / p.sum(1, keepdims=True), pt / pt.sum(1, keepdims=True)
    assert L["kl"] == pytest.approx(np.mean((pt * np.log(pt / p)).sum(1)))
    keep = out["masks"][-1][:, T:] > 0.5                                   # final decision
    x = out["final_tokens"][:, T:]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    feats = (x - mu) / np.sqrt(var + 1e-6) * params["norm.weight"] + params["norm.bias"]
    assert L["token"] == pytest.approx(np.mean((feats - teacher["features"][:, T:])[keep] ** 2))
    assert L["total"] == pytest.approx(L["cls"] + L["ratio"] + 0.7 * L["kl"] + 0.4 * L["token"], rel=1e-12)


def test_dynamicvit_masks_are_cumulative_and_train_agrees_with_predict():
    params, images, labels, tcfg, teacher, noise, _ = _setup("dynamicvit", seed=5, B=4, dvit_rho=0.7)
    out, _ = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    masks = out["masks"]
    assert all(np.all(b <= a) for a, b in zip(masks, masks[1:]))          # a dropped token never returns
    model = _model(params, tcfg)
    for b in range(4):                                  # replay each image's training decisions
        kept = [k[b:b + 1] for k in out["kept"]]
        if min(k.sum() for k in kept) == 0:
            continue
        logits, _ = minitofe.predict(model, images[b:b + 1], kept_masks=kept)
        np.testing.assert_allclose(logits, out["logits"][b:b + 1], rtol=1e-10, atol=1e-12)
    logits, info = minitofe.predict(model, images)
    assert [int(k.sum(axis=1)[0]) for k in info["kept"]] == [int(r * P) for r in dynamicvit_ratios(CFG, tcfg)]
    assert all(not (b & ~a).any() for a, b in zip(info["kept"], info["kept"][1:]))
    with pytest.raises(ValueError, match="already dropped"):
        minitofe.predict(model, images, kept_masks=[info["kept"][0], ~info["kept"][0], info["kept"][2]])


def test_dynamicvit_keep_all_equals_dense():
    params, images, labels, tcfg, teacher, noise, _ = _setup("dynamicvit", dvit_rho=1.0)
    dense, _ = vit_forward(_model(params, tcfg).backbone_params(), images, CFG)
    logits, info = minitofe.predict(_model(params, tcfg), images)
    np.testing.assert_array_equal(logits, dense)
    for g in noise:
        g[..., 0] = 1e6                                                    # every decision "keep"
    out, _ = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
    np.testing.assert_allclose(out["logits"], dense, rtol=1e-12, atol=1e-13)


def test_dynamicvit_macs_equal_the_matmuls_run():
    params, images, _, tcfg, _, _, _ = _setup("dynamicvit", dvit_rho=0.6)
    result = {}
    macs = counted(lambda p, x: result.update(info=tofe_inference(p, x, CFG, tcfg)[1]), params, images)
    assert macs == int(round(float(np.sum(result["info"]["macs"]))))
    k = [1 + int(r * P) for r in (0.6, 0.36, 0.216)]
    C = CFG.embed_dim
    hand = (dense_macs(CFG) - 3 * block_macs(17, C, 4.0) + sum(block_macs(n, C, 4.0) for n in k)
            + predictor_macs(P, C) + predictor_macs(k[0] - 1, C) + predictor_macs(k[1] - 1, C))
    assert result["info"]["macs"][0] == hand



@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["evit", "dynamicvit"]),
       rate=st.floats(0.05, 1.0))
def test_order_is_kept_and_no_token_comes_back(seed, method, rate):
    """Blocks made the identity (zero proj / fc2): each stage's output is the embedded tokens of the kept
    patches in ascending original order (EViT: then the fused token); kept sets only shrink, in training
    (DynamicViT's masks) as in inference."""
    params, images, labels, tcfg, teacher, noise, _ = _setup(method, seed=seed, evit_keep_rate=rate,
                                                             dvit_rho=rate)
    for k in params:
        if k.endswith(("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")):
            params[k] = np.zeros_like(params[k])
    from minitofe.nn.embed import embed_forward
    x0, _ = embed_forward(images, params, CFG)
    _, info = minitofe.predict(_model(params, tcfg), images)
    for s, kept in enumerate(info["kept"]):
        out = info["stage_outputs"][s]
        for b in range(len(images)):
            idx = np.nonzero(kept[b])[0]
            np.testing.assert_array_equal(out[b, T:T + len(idx)], x0[b, T + idx])
        assert s == 0 or not (kept & ~info["kept"][s - 1]).any()
    if method == "dynamicvit":
        out, _ = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
        assert all(np.all(b <= a) for a, b in zip(out["masks"], out["masks"][1:]))

# ---------------------------------------------------------------- fast path, trainer, config, CLI
@pytest.mark.skipif(fast_kernels() is None, reason="Numba is not installed")
@pytest.mark.parametrize("method", ["evit", "dynamicvit"])
def test_fast_path_equals_the_reference(method):
    """The plain / masked blocks on the Numba kernels (the reduction block and predictor stay reference)."""
    params, images, labels, tcfg, teacher, noise, _ = _setup(method, B=4, evit_keep_rate=0.5, dvit_rho=0.7)
    runs = []
    for fast in (True, False):
        out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher,
                                        ops=kernel_ops(fast, like=images))
        assert cache.fast is fast
        logits, info = minitofe.predict(_model(params, tcfg), images, fast=fast)
        runs.append((out, *tofe_train_backward(cache), logits, info))
    (out, dimg, grads, logits, info), (out_r, dimg_r, grads_r, logits_r, info_r) = runs
    close = dict(rtol=1e-10, atol=1e-12)
    for name in out_r["losses"]:
        np.testing.assert_allclose(out["losses"][name], out_r["losses"][name], **close)
    np.testing.assert_allclose(dimg, dimg_r, **close)
    assert grads.keys() == grads_r.keys() == params.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_r[k], **close, err_msg=k)
    np.testing.assert_allclose(logits, logits_r, **close)
    assert all(np.array_equal(a, b) for a, b in zip(info["kept"], info_r["kept"]))
    np.testing.assert_array_equal(info["macs"], info_r["macs"])


@pytest.mark.parametrize("method", ["evit", "dynamicvit"])
def test_training_runs_on_the_fake_device(method):
    """Written against ``get_xp``: on the strict fake GPU array the same numbers come out."""
    from minitofe.backend import to_numpy
    from minitofe.testing.fakedevice import to_device
    params, images, labels, tcfg, teacher, noise, _ = _setup(method, evit_keep_rate=0.5, dvit_rho=0.7)
    runs = []
    for to in (lambda a: a, to_device):
        t = {k: to(v) for k, v in teacher.items() if k != "tokens"}
        out, cache = tofe_train_forward(to(params), to(images), to(labels), CFG, tcfg, to(noise), t)
        runs.append((out, *tofe_train_backward(cache)))
    (out, dimg, grads), (out_d, dimg_d, grads_d) = runs
    assert out_d["losses"] == out["losses"]
    np.testing.assert_array_equal(to_numpy(dimg_d), dimg)
    assert all(np.array_equal(to_numpy(grads_d[k]), grads[k]) for k in grads)

def test_train_step_anneals_the_evit_keep_rate_and_trains_dynamicvit():
    from minitofe.train import TrainConfig, train_step
    for method in ("evit", "dynamicvit"):
        params, images, labels, tcfg, _, _, _ = _setup(method, evit_keep_rate=0.5, dvit_rho=0.7,
                                                       evit_warmup=0.1, evit_anneal=0.5)
        model = _model(params, tcfg)
        teacher_params = model.backbone_params()
        tc = TrainConfig(steps=20, fast=False)
        outs = [train_step(model, teacher_params, images, labels, step, tc) for step in (0, 2, 7, 12, 19)]
        for (out, grads) in outs:
            assert grads.keys() == params.keys() and np.isfinite(out["loss"])
        if method == "evit":
            assert [o["keep_rate"] for o, _ in outs] == [keep_rate_at(s, 20, 0.5, 0.1, 0.5) for s in (0, 2, 7, 12, 19)]
            assert outs[0][0]["keep_rate"] == 1.0 and outs[-1][0]["keep_rate"] == 0.5
        else:
            assert outs[0][0]["losses"]["kl"] > 0 and outs[0][0]["losses"]["token"] > 0



@pytest.mark.parametrize("method", ["evit", "dynamicvit"])
def test_twenty_adamw_steps_lower_the_loss(method):
    from minitofe.train.optim import adamw_init, adamw_step
    params, images, labels, tcfg, teacher, noise, _ = _setup(method, B=8, evit_keep_rate=0.5, dvit_rho=0.5)
    state, first = adamw_init(params), None
    for _ in range(20):
        out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)
        first = out if first is None else first
        adamw_step(params, tofe_train_backward(cache)[1], state, lr=3e-3, weight_decay=0.0)
    last = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher)[0]
    assert last["loss"] < first["loss"]
    if method == "dynamicvit":
        assert last["losses"]["ratio"] < first["losses"]["ratio"]

def test_config_fields_budget_and_the_legacy_names():
    tcfg = ToFeConfig(method="evit", target_ratio=0.6)
    rate = evit_keep_rate(CFG, tcfg)                                   # None: the rate meeting the budget
    assert 0 < rate < 1 and evit_keep_rate(CFG, tcfg.replace(evit_keep_rate=0.4)) == 0.4
    assert dynamicvit_ratios(CFG, ToFeConfig(method="dynamicvit", dvit_rho=0.5)) == (0.5, 0.25, 0.125)
    assert ToFeConfig.from_dict({"method": "dynamicvit"}).method == "tofe-cumulative"   # saved before the rename
    assert ToFeConfig.from_dict({"method": "evit"}).method == "evit-drop"
    assert ToFeConfig.from_dict(ToFeConfig(method="dynamicvit").to_dict()).method == "dynamicvit"
    for bad, err in ((dict(evit_keep_rate=0.0), ValueError), (dict(dvit_rho=1.5), ValueError),
                     (dict(evit_fuse=1), TypeError), (dict(evit_anneal=2.0), ValueError),
                     (dict(dvit_kl_weight=-1.0), ValueError), (dict(dvit_rho="0.5"), TypeError)):
        with pytest.raises(err):
            ToFeConfig(**bad)
    assert ToFeConfig(method="evit").trainable and not ToFeConfig(method="evit-drop").trainable
    assert not ToFeConfig(method="evit").needs_teacher and ToFeConfig(method="dynamicvit").needs_teacher


def test_bad_input_is_refused_with_the_reason():
    params, images, labels, tcfg, teacher, noise, _ = _setup("dynamicvit")
    with pytest.raises(ValueError, match="top-K only"):
        minitofe.predict(_model(params, tcfg), images, inference="threshold")
    with pytest.raises(ValueError, match="teacher"):
        tofe_train_forward(params, images, labels, CFG, tcfg, noise, None)
    with pytest.raises(ValueError, match="noise must be 3 float64 arrays"):
        tofe_train_forward(params, images, labels, CFG, tcfg, noise[:2], teacher)
    with pytest.raises(ValueError, match="noise must be"):
        tofe_train_forward(params, images, labels, CFG, tcfg, None, teacher)
    with pytest.raises(ValueError, match="missing keys"):
        minitofe.predict(_model(_model(params, tcfg).backbone_params(), tcfg), images)
    avg = CFG.replace(class_token=False, global_pool="avg")
    p, x, y, t, *_ = _setup("evit", cfg=avg)
    with pytest.raises(ValueError, match="no class token"):
        evit_train_forward(p, x, y, avg, t)


@pytest.mark.parametrize("method", ["evit", "dynamicvit"])
def test_minitofe_train_cli_on_a_tiny_image_folder(tmp_path, capsys, method):
    from minitofe.cli import main
    from test_cli_train_data import _folder, _weights
    out = tmp_path / "run"
    code = main(["train", "--init", str(_weights(tmp_path)), "--data", str(_folder(tmp_path / "data")),
                 "--method", method, "--steps", "3", "--batch", "4", "--eval-every", "3", "--eval-images", "8",
                 "--warmup-steps", "1", "--target", "0.7", "--out", str(out), "--no-progress", "--no-fast"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "eval" not in r]
    assert [r["step"] for r in steps] == [0, 1, 2] and all(np.isfinite(r["total"]) for r in steps)
    evals = [r["eval"] for r in lines if "eval" in r]
    assert len(evals) == 1 and evals[0]["macs_ratio"] <= 0.7 + 1e-9
    model = minitofe.load_model(out / "final.npz")
    assert model.tofe.method == method
    assert {k.split(".")[1] for k in model.params if k.startswith("tofe.")} == (
        {"predictor"} if method == "dynamicvit" else set())
