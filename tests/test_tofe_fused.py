"""ToFe's fused frozen token (``ToFeConfig.fuse_frozen``, ``minitofe/tofe/fuse.py``): its weights and their
backward against central finite differences in float64, the masked training forward against the gather
inference forward (topk, ragged, an image that froze nothing), the MACs against the matmuls the code runs,
the fast path, and the option saved, read back and trained from the command line. The whole model's
gradient check with the option on is in ``test_tofe_training.py``, its invariants in
``test_tofe_properties.py`` (both draw the option)."""
import json

import numpy as np
import pytest

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.gradcheck import numerical_grad, rel_error
from minitofe.kernels import fast_kernels
from minitofe.methods import inference, ratios_for_budget, topk_macs
from minitofe.tofe.budget_loss import budget_loss_backward, budget_loss_forward
from minitofe.tofe.fuse import append_fused_backward, append_fused_forward, fuse_backward, fuse_forward
from minitofe.tofe.macs import block_macs, dense_macs, tofe_macs
from test_macs import counted
from test_train_trust import _image_folder

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)
T, P, N = 1, 16, 17
TCFG = minitofe.ToFeConfig(stages=(1, 2, 3), keep_ratios=(0.5, 0.25, 0.25), fuse_frozen=True)


def _model(tcfg=TCFG, seed=0):
    rng = np.random.default_rng(seed)
    model = minitofe.new_model(CFG, tcfg, rng)
    for v in model.params.values():                     # off the init: no zero layer, no tie
        v += 0.3 * rng.standard_normal(v.shape)
    return model, rng.standard_normal((3, 1, 8, 8))


# ---------------------------------------------------------------- the weights and their backward
@pytest.mark.parametrize("hard", [False, True])
def test_fuse_backward_equals_finite_differences(hard):
    """f = sum_j w_j x_j with w_j = (1 - m_j) q_j / sum_k (1 - m_k) q_k: the gradient to the patches, to
    the mask (straight-through: the hard value's gradient is that of w in m) and to keep_prob."""
    rng = np.random.default_rng(1)
    x, R = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 1, 4))
    m = (rng.random((2, 6)) > 0.5).astype(float) if hard else rng.uniform(0.05, 0.95, (2, 6))
    m[:, 0] = 0.0                                           # something is frozen in every image
    q = rng.uniform(0.05, 0.95, (2, 6))
    f = lambda: float((fuse_forward(x, m, q)[0] * R).sum())               # noqa: E731
    out, cache = fuse_forward(x, m, q)
    dx, dm, dq = fuse_backward(R, cache)
    for arr, grad in ((x, dx), (m, dm), (q, dq)):
        assert rel_error(numerical_grad(f, arr), grad) < 1e-8
    if hard:                                                # a weighted mean of the frozen patches
        w = (1 - m) * q / ((1 - m) * q).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(out[:, 0], (w[..., None] * x).sum(axis=1), rtol=1e-13)


def test_fused_token_inputs_backward_equals_finite_differences():
    """x_in = [x, f], m_in = [m, froze] from the stage's tokens, mask and selector logits (keep_prob =
    softmax(logits)[..., 0]); the gradient of both outputs back to all three."""
    rng = np.random.default_rng(2)
    x, logits = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    m = np.concatenate([np.ones((2, 1)), rng.uniform(0.05, 0.95, (2, 4))], axis=1)
    Rx, Rm = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6))
    f = lambda: float((append_fused_forward(x, m, logits, 1)[0] * Rx).sum()   # noqa: E731
                      + (append_fused_forward(x, m, logits, 1)[1] * Rm).sum())
    x_in, m_in, cache = append_fused_forward(x, m, logits, 1)
    assert x_in.shape == (2, 6, 4) and np.array_equal(m_in[:, 5], (m[:, 1:] < 0.5).any(axis=1) * 1.0)
    dx, dm, dlogits = append_fused_backward(Rx, Rm, cache)
    assert rel_error(numerical_grad(f, x), dx) < 1e-8
    assert rel_error(numerical_grad(f, m), dm) < 1e-8
    assert rel_error(numerical_grad(f, logits), dlogits) < 1e-8 and not dlogits[:, 0].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nothing_frozen_gives_no_fused_token_and_underflow_a_plain_mean(dtype):
    rng = np.random.default_rng(3)
    x, R = rng.standard_normal((2, 5, 4)).astype(dtype), rng.standard_normal((2, 1, 4)).astype(dtype)
    q = rng.uniform(0.1, 0.9, (2, 5)).astype(dtype)
    f, cache = fuse_forward(x, np.ones((2, 5), dtype), q)            # 0 / 0: weights 0, no NaN
    assert not f.any() and all(not g.any() and np.isfinite(g).all() for g in fuse_backward(R, cache))
    m = np.array([[0, 0, 1, 1, 0]] * 2, dtype)
    f, _ = fuse_forward(x, m, np.zeros((2, 5), dtype))               # every keep_prob underflowed to 0
    np.testing.assert_allclose(f[:, 0], x[:, [0, 1, 4]].mean(axis=1), rtol=1e-6)
    assert f.dtype == dtype


# ---------------------------------------------------------------- training == inference, and the option
@pytest.mark.parametrize("method", ["tofe", "tofe-identity", "tofe-uniform"])
@pytest.mark.parametrize("keep_all_in_image_0", [False, True])
@pytest.mark.parametrize("last", ["approximate", "drop"])
def test_masked_training_forward_equals_gather_inference(method, keep_all_in_image_0, last):
    """The hard-mask training forward (all N tokens + the fused token as token N) against inference that
    gathers the kept tokens and appends f; image 0 keeping every patch makes the batch ragged, with no
    fused token for that image. ``last``: ``last_stage`` ("drop": the last stage's frozen tokens, fused
    all the same, are carried unchanged)."""
    model, images = _model(TCFG.replace(method=method, alpha=0.0, beta=0.0, last_stage=last))
    noise = minitofe.draw_noise(np.random.default_rng(4), CFG, model.tofe, 3, np.float64)
    if keep_all_in_image_0:
        for n in noise:
            n[0, :, 0] = 1e6
    out, _ = minitofe.train_forward(model, images, np.zeros(3, int), noise)
    kept = [m[:, T:] > 0.5 for m in out["masks"]]
    assert all(k[1:].sum() < 2 * P for k in kept) and (all(k[0].all() for k in kept) == keep_all_in_image_0)
    logits, info = minitofe.predict(model, images, kept_masks=kept)
    assert np.max(np.abs(logits - out["logits"])) <= 1e-12
    for s in range(3):
        assert np.max(np.abs(info["stage_outputs"][s] - out["stage_outputs"][s])) <= 1e-12
    frozen = ~kept[2]
    carried = np.array_equal(info["stage_outputs"][2][:, T:][frozen], info["stage_outputs"][1][:, T:][frozen])
    assert frozen.any() and carried == (last == "drop" or method == "tofe-identity")
    np.testing.assert_array_equal(info["macs"], out["macs"])           # the same count, both ways
    plain, _ = minitofe.predict(model, images, kept_masks=kept, method=method)
    model.tofe = model.tofe.replace(fuse_frozen=False)
    unfused, _ = minitofe.predict(model, images, kept_masks=kept)
    assert np.array_equal(plain, logits) and np.max(np.abs(unfused - logits)) > 1e-3   # it does something


def test_only_methods_that_freeze_and_reuse_read_the_option():
    assert [minitofe.ToFeConfig(method=m, fuse_frozen=True).fuses_frozen for m in
            ("tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative", "idle", "evit", "dense")] == \
        [True, True, True, False, False, False, False]
    with pytest.raises(TypeError, match="fuse_frozen must be True or False, got 1"):
        minitofe.ToFeConfig(fuse_frozen=1)
    old = TCFG.to_dict()
    del old["fuse_frozen"]                                  # a file saved before the option
    assert minitofe.ToFeConfig.from_dict(json.loads(json.dumps(old))).fuse_frozen is False


# ---------------------------------------------------------------- MACs
@pytest.mark.parametrize("how", ["topk", "threshold", "ragged masks"])
def test_realised_macs_equal_the_matmuls_run(how):
    """Each stage's blocks run on the kept tokens + 1 where the image froze a patch (none where it froze
    nothing); the fused token's weighted sum is not a matmul and is not counted."""
    model, images = _model(TCFG.replace(inference="threshold" if how == "threshold" else "topk"), seed=3)
    masks = None
    if how == "ragged masks":
        rng = np.random.default_rng(6)
        masks = [rng.random((3, P)) > 0.5 for _ in range(3)]
        masks[1][0] = True                                  # image 0 freezes nothing at stage 1
        masks[2][1] = False                                 # image 1 freezes everything at stage 2
    result = {}
    macs = counted(lambda p, x: result.update(info=inference(p, x, CFG, model.tofe, kept_masks=masks)[1]),
                   model.params, images)
    info = result["info"]
    assert macs == int(round(float(np.sum(info["macs"]))))
    n = info["kept_counts"] + 1.0                           # kept tokens per stage, class token included
    froze = info["kept_counts"] < P                         # one block per stage of CFG's stages (1, 2, 3)
    want = tofe_macs(CFG, (1, 2, 3), n)[0] + sum(froze[:, s] * (block_macs(n[:, s] + 1, 8, 2.0)
                                                                - block_macs(n[:, s], 8, 2.0)) for s in range(3))
    np.testing.assert_array_equal(info["macs"], want)
    assert froze.all() == (how == "topk") and froze.any()  # threshold: image 1 keeps all 16 at stage 0


def test_tofe_macs_with_the_fused_token_and_its_exact_derivative():
    rng = np.random.default_rng(7)
    kept, R = rng.uniform(3.0, N, size=(4, 3)), rng.standard_normal(4)
    fused = rng.random((4, 3)) > 0.3
    f = lambda: (tofe_macs(CFG, (1, 2, 3), kept, fused=fused)[0] * R).sum()      # noqa: E731
    macs, d = tofe_macs(CFG, (1, 2, 3), kept, fused=fused)
    assert rel_error(numerical_grad(f, kept, h=1e-3), d * R[:, None]) <= 1e-6
    plain, _ = tofe_macs(CFG, (1, 2, 3), kept)
    np.testing.assert_allclose(macs - plain, sum(fused[:, s] * (block_macs(kept[:, s] + 1, 8, 2.0)
                                                               - block_macs(kept[:, s], 8, 2.0)) for s in range(3)))
    with pytest.raises(ValueError, match=r"fused must have the shape of kept \(4, 3\), got \(4, 2\)"):
        tofe_macs(CFG, (1, 2, 3), kept, fused=fused[:, :2])
    with pytest.raises(ValueError, match="do not go together"):
        tofe_macs(CFG, (1, 2, 3), kept, fused=fused, reduce_in_block=True)


def test_budget_loss_gradient_per_kept_patch_with_the_fused_token():
    """The fused token's presence is a constant of the decision; d L / d m[b, p] is still dkept[s][b]."""
    rng = np.random.default_rng(8)
    patches = [rng.random((3, P)) for _ in range(3)]
    f = lambda: budget_loss_forward([np.concatenate([np.ones((3, T)), m], axis=1) for m in patches], CFG,  # noqa
                                    TCFG, TCFG.stages)
    loss, macs, *_, cache = f()
    assert macs[0] > budget_loss_forward([np.concatenate([np.ones((3, T)), m], axis=1) for m in patches], CFG,
                                         TCFG.replace(fuse_frozen=False), TCFG.stages)[1][0]
    dkept = budget_loss_backward(cache)
    for s, m in enumerate(patches):
        assert rel_error(numerical_grad(lambda: f()[0], m), np.broadcast_to(dkept[s][:, None], (3, P))) <= 1e-6


def test_topk_macs_and_budgets_count_the_fused_token():
    model, images = _model()
    ratios = ratios_for_budget(CFG, TCFG, 0.6)
    _, info = minitofe.predict(model, images, keep_ratios=ratios)
    assert np.allclose(info["macs"], topk_macs(CFG, TCFG, ratios))
    assert topk_macs(CFG, TCFG, ratios) <= 0.6 * dense_macs(CFG)          # to within a token per stage
    plain = TCFG.replace(fuse_frozen=False)
    assert topk_macs(CFG, TCFG, ratios) > topk_macs(CFG, plain, ratios)
    assert topk_macs(CFG, TCFG, (1.0, 1.0, 1.0)) == topk_macs(CFG, plain, (1.0, 1.0, 1.0))   # keep-all: none


# ---------------------------------------------------------------- fast path
@pytest.mark.skipif(fast_kernels() is None, reason="the fast kernels need Numba (not installed, or "
                                                   "MINITOFE_NO_NUMBA set)")
def test_fast_path_equals_the_reference():
    model, images = _model(TCFG.replace(alpha=0.0, beta=0.0))
    for mode in ("topk", "threshold"):
        ref, _ = minitofe.predict(model, images, inference=mode)
        fast, _ = minitofe.predict(model, images, inference=mode, fast=True)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-12)
    noise = minitofe.draw_noise(np.random.default_rng(9), CFG, model.tofe, 3, np.float64)
    labels = np.array([0, 1, 2])
    grads = [minitofe.train_backward(minitofe.train_forward(model, images, labels, noise, fast=fast)[1])[1]
             for fast in (False, True)]
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- saved, read back, trained
def test_saved_read_back_evaluated_and_refused_where_it_is_not_followed(tmp_path, capsys):
    model, images = _model()
    minitofe.save_model(tmp_path / "fused.npz", model)
    back = minitofe.load_model(tmp_path / "fused.npz")
    assert back.tofe.fuse_frozen and np.array_equal(minitofe.predict(back, images)[0],
                                                    minitofe.predict(model, images)[0])
    folder = _image_folder(tmp_path / "data")
    assert main(["eval", "--weights", str(tmp_path / "fused.npz"), "--data", str(folder / "val"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fuse_frozen"] is True and res["macs"] == pytest.approx(topk_macs(CFG, TCFG, TCFG.keep_ratios))
    from minitofe.train.reuse_analysis import traced_forward
    from minitofe.validate.golden import make_golden
    with pytest.raises(ValueError, match="fuses its frozen tokens"):
        traced_forward(back, images)
    with pytest.raises(ValueError, match="fuse_frozen=True"):
        make_golden(tmp_path / "g.safetensors", back, images, np.zeros(3, int), mode="topk")


def test_minitofe_train_fuse_frozen_end_to_end_and_init_from_it(tmp_path, capsys):
    init = tmp_path / "init.npz"
    minitofe.save_model(init, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(0), np.float32))
    folder = _image_folder(tmp_path / "data")
    args = ["train", "--data", str(folder), "--steps", "2", "--batch", "4", "--warmup-steps", "1", "--stages",
            "1", "2", "--keep-ratios", "0.5", "0.5", "--budget", "0.8", "--no-progress", "--no-fast"]
    assert main(args + ["--init", str(init), "--out", str(tmp_path / "run"), "--fuse-frozen"]) == 0
    final = minitofe.load_model(tmp_path / "run" / "final.npz")
    assert final.tofe.fuse_frozen and final.tofe.fuses_frozen
    logits, info = minitofe.predict(final, np.zeros((1, 1, 8, 8), np.float32))
    assert info["macs"][0] == pytest.approx(topk_macs(CFG, final.tofe, final.learned_keep_ratios))
    capsys.readouterr()
    fused = str(tmp_path / "run" / "final.npz")
    assert main(args + ["--init", fused, "--out", str(tmp_path / "plain")]) == 2         # a misfit
    assert "pass --fuse-frozen to continue them, or --fresh-modules" in capsys.readouterr().err
    assert main(args + ["--init", fused, "--out", str(tmp_path / "more"), "--fuse-frozen"]) == 0
    assert main(args + ["--init", str(init), "--out", str(tmp_path / "evit"), "--fuse-frozen", "--method",
                        "evit"]) == 2
    assert "--fuse-frozen fuses the tokens a learned selector freezes and can reuse (" in capsys.readouterr().err
