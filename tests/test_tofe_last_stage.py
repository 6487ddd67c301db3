"""``ToFeConfig(last_stage="drop")``: no approximator at the last stage. Its frozen tokens cannot reach the
class-token head (kept queries attend only kept keys), so the logits are those of the default model with
the same weights, whatever the frozen tokens hold; the approximator's parameters, MACs and L_approx term
at that stage are gone, and the budget buys kept tokens with what it saves. Checked in inference and in
training (finite differences in float64), through saving and loading, and through ``minitofe train``,
``eval`` and ``predict``. With the fused frozen token the last stage's frozen tokens do reach the class
token, through it: ``test_tofe_last_stage_fused.py``."""
import json

import numpy as np
import pytest

import minitofe
import minitofe.tofe.inference as inference
import minitofe.tofe.stage as stage
from minitofe.cli import main
from minitofe.config import ViTConfig, get_config
from minitofe.gradcheck import check_param_grads, numerical_grad, rel_error
from minitofe.tofe.budget import ratios_for_budget, topk_macs
from minitofe.tofe.macs import approximator_macs, dense_macs, tofe_macs
from test_macs import counted
from test_train_trust import _image_folder

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)
STAGES, RATIOS = (1, 2, 3), (0.5, 0.5, 0.25)
LAST = "tofe.approx.2."


def _pair(method="tofe", seed=0, **kw):
    """A default model and its ``last_stage="drop"`` twin with the same weights (but the last
    approximator, which the twin has not), every ToFe module moved off its init."""
    tcfg = minitofe.ToFeConfig(method=method, stages=STAGES, keep_ratios=RATIOS, **kw)
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    model.params.update({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()})
    drop = minitofe.Model({k: v for k, v in model.params.items() if not k.startswith(LAST)}, CFG,
                          tcfg.replace(last_stage="drop"), None)
    return model, drop


def test_the_last_stage_has_no_approximator_parameters_and_a_fresh_model_agrees():
    model, drop = _pair()
    assert set(model.params) - set(drop.params) == {k for k in model.params if k.startswith(LAST)} != set()
    fresh = minitofe.new_model(CFG, drop.tofe, np.random.default_rng(0))
    assert set(fresh.params) == set(drop.params)
    assert drop.tofe.approximated_stages(CFG.depth) == (True, True, False)
    assert minitofe.ToFeConfig(method="tofe-identity", last_stage="drop").approximated_stages(12) == (False,) * 3
    assert model.tofe.approximated_stages(CFG.depth) == (True,) * 3


def test_the_macs_leave_out_the_last_approximator_and_equal_the_matmuls_run():
    model, drop = _pair()
    images = np.random.default_rng(2).standard_normal((3, 1, 8, 8))
    result = {}
    run = lambda p, x: result.update(info=minitofe.predict(minitofe.Model(p, CFG, drop.tofe, None), x)[1])  # noqa
    ran = counted(run, drop.params, images)
    info = result["info"]
    assert ran == int(round(float(np.sum(info["macs"]))))
    _, full = minitofe.predict(model, images)
    kept_last = info["kept_counts"][:, -1] + CFG.num_prefix_tokens
    saved = approximator_macs(CFG.num_tokens - kept_last, CFG.embed_dim, 4)
    assert np.allclose(full["macs"] - info["macs"], saved) and saved.min() > 0
    kept = np.array([5.0, 9.0, 3.0])
    a, da = tofe_macs(CFG, STAGES, kept)
    b, db = tofe_macs(CFG, STAGES, kept, approximator=(True, True, False))
    assert a - b == approximator_macs(CFG.num_tokens - 3.0, 8, 4)
    assert np.array_equal(da[:2], db[:2]) and db[2] - da[2] == approximator_macs(1, 8, 4)
    with pytest.raises(ValueError, match=r"approximator must be a bool or 3 bools .* got 2"):
        tofe_macs(CFG, STAGES, kept, approximator=(True, False))


def test_the_budget_buys_kept_tokens_with_the_saved_macs():
    """On the Fashion-MNIST model at 35 % MACs the drop model keeps more patches, and both meet the budget
    (``ratios_for_budget``, as ``eval --budget`` sets them)."""
    cfg, kept = get_config("vit_fmnist_patch4_28"), {}
    for last in ("approximate", "drop"):
        tcfg = minitofe.ToFeConfig(last_stage=last)
        ratios = ratios_for_budget(cfg, tcfg, 0.35)
        kept[last] = sum(round(r * cfg.num_patches) for r in ratios)
        assert 0.34 < topk_macs(cfg, tcfg, ratios) / dense_macs(cfg) <= 0.35
    assert kept["drop"] > kept["approximate"]


def test_the_logits_do_not_depend_on_what_the_last_stages_frozen_tokens_hold(monkeypatch):
    """Inference: the same logits as the default model with the same weights; and with the frozen tokens
    of the last stage overwritten by noise before and after its blocks, still the same."""
    model, drop = _pair()
    images = np.random.default_rng(3).standard_normal((4, 1, 8, 8))
    want, info = minitofe.predict(model, images)
    logits, ours = minitofe.predict(drop, images)
    assert np.array_equal(logits, want)
    assert all(np.array_equal(a, b) for a, b in zip(info["kept"], ours["kept"]))
    assert ours["frozen"][-1].any()
    original, rng = inference.run_stage, np.random.default_rng(4)

    def noisy(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob=None):
        if s < len(STAGES) - 1:
            return original(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob)
        b, p = np.nonzero(frozen)
        x = x.copy()
        x[b, p + 1] = 100 * rng.standard_normal((len(b), x.shape[-1]))
        out = original(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob)
        out[b, p + 1] = 100 * rng.standard_normal((len(b), x.shape[-1]))
        return out
    monkeypatch.setattr(inference, "run_stage", noisy)
    assert np.array_equal(minitofe.predict(drop, images)[0], want)


def _train(model, images, labels, noise, teacher, hard=True):
    return minitofe.train_forward(model, images, labels, noise, teacher, hard=hard)


def test_training_gives_the_default_logits_without_the_last_approximation_term(monkeypatch):
    """Training (masked attention): the same logits and classification / distillation losses as the
    default model, L_approx without its last term, fewer MACs; and noise in the last stage's frozen tokens,
    before its blocks and in their freeze path, changes nothing of the logits."""
    model, drop = _pair(seed=5)
    rng = np.random.default_rng(6)
    images, labels = rng.standard_normal((4, 1, 8, 8)), np.array([0, 1, 2, 1])
    noise = minitofe.draw_noise(rng, CFG, model.tofe, 4, np.float64)
    teacher = minitofe.teacher_forward(model.backbone_params(), images, CFG, STAGES)
    full, _ = _train(model, images, labels, noise, teacher)
    ours, _ = _train(drop, images, labels, noise, teacher)
    assert np.array_equal(ours["logits"], full["logits"])
    assert all(np.array_equal(a, b) for a, b in zip(ours["masks"], full["masks"]))
    assert (ours["losses"]["cls"], ours["losses"]["kd"]) == (full["losses"]["cls"], full["losses"]["kd"])
    assert 0 < ours["losses"]["approx"] < full["losses"]["approx"]
    assert np.all(ours["macs"] < full["macs"]) and (ours["masks"][-1] == 0).any()
    keep_path, freeze_path = stage.keep_path_forward, stage.freeze_path_forward

    def noisy_keep(x, m, params, blocks, num_heads, block_fwd):
        if blocks[0] == STAGES[-1]:
            x = np.where(m[..., None] < 0.5, 100 * rng.standard_normal(x.shape), x)
        return keep_path(x, m, params, blocks, num_heads, block_fwd)

    def noisy_freeze(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T):
        a, term, cache = freeze_path(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T)
        return (a + 100 * rng.standard_normal(a.shape) if s == len(STAGES) - 1 else a), term, cache
    monkeypatch.setattr(stage, "keep_path_forward", noisy_keep)
    monkeypatch.setattr(stage, "freeze_path_forward", noisy_freeze)
    assert np.array_equal(_train(drop, images, labels, noise, teacher)[0]["logits"], full["logits"])


def test_a_training_step_with_the_option_has_the_gradient_of_its_loss():
    """The whole step in float64 (soft mask: smooth) against central finite differences, every parameter
    and the images."""
    _, drop = _pair(seed=7, tau=1.5)
    rng = np.random.default_rng(8)
    images, labels = rng.standard_normal((2, 1, 8, 8)), np.array([0, 2])
    noise = minitofe.draw_noise(rng, CFG, drop.tofe, 2, np.float64)
    teacher = minitofe.teacher_forward(drop.backbone_params(), images, CFG, STAGES)
    out, cache = _train(drop, images, labels, noise, teacher, hard=False)
    dimages, grads = minitofe.train_backward(cache)
    assert grads.keys() == drop.params.keys()
    f = lambda: _train(drop, images, labels, noise, teacher, hard=False)[0]["loss"]  # noqa: E731
    errs = check_param_grads(f, drop.params, grads, h=1e-5)     # h=1e-6: ~2e-6 of rounding, as the default's
    assert max(errs.values()) < 1e-6, sorted(errs.items(), key=lambda t: -t[1])[:3]
    assert rel_error(numerical_grad(f, images, h=1e-5), dimages) < 1e-6


def test_saving_and_loading_keeps_the_option(tmp_path):
    _, drop = _pair()
    minitofe.save_model(tmp_path / "m.npz", drop)
    back = minitofe.load_model(tmp_path / "m.npz")
    assert back.tofe == drop.tofe and back.tofe.last_stage == "drop" and set(back.params) == set(drop.params)
    images = np.random.default_rng(9).standard_normal((2, 1, 8, 8))
    assert np.array_equal(minitofe.predict(back, images)[0], minitofe.predict(drop, images)[0])
    old = drop.tofe.to_dict()
    del old["last_stage"]                                   # a file saved before the option existed
    assert minitofe.ToFeConfig.from_dict(json.loads(json.dumps(old))).last_stage == "approximate"


def test_bad_uses_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="unknown last_stage 'skip'; choose one of"):
        minitofe.ToFeConfig(last_stage="skip")
    avg = CFG.replace(class_token=False, global_pool="avg", fc_norm=True)
    model = minitofe.new_model(avg, minitofe.ToFeConfig(stages=STAGES, keep_ratios=RATIOS, last_stage="drop"))
    with pytest.raises(ValueError, match="last_stage='drop' needs a head that reads the class token"):
        minitofe.predict(model, np.zeros((1, 1, 8, 8)))


def test_minitofe_train_eval_and_predict_with_the_option(tmp_path, capsys):
    init, data = tmp_path / "init.npz", _image_folder(tmp_path / "data")
    minitofe.save_model(init, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(0), np.float32))
    out = tmp_path / "run"
    common = ["--data", str(data), "--steps", "2", "--batch", "4", "--warmup-steps", "1", "--stages", "1", "2",
              "3", "--keep-ratios", "0.5", "0.5", "0.5", "--budget", "0.8", "--no-progress", "--no-fast"]
    assert main(["train", "--init", str(init), *common, "--out", str(out), "--last-stage", "drop"]) == 0
    final = minitofe.load_model(out / "final.npz")
    assert final.tofe.last_stage == "drop" and not any(k.startswith(LAST) for k in final.params)
    assert any(k.startswith("tofe.approx.1.") for k in final.params)
    capsys.readouterr()
    assert main(["eval", "--weights", str(out / "final.npz"), "--data", str(data / "val"), "--budget", "0.7",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 18 and abs(res["macs_ratio"] - 0.7) < 0.05
    assert main(["predict", str(data / "val" / "a" / "0.png"), "--weights", str(out / "final.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # its modules continue only under the same option
    args = ["train", "--init", str(out / "final.npz"), *common, "--out", str(tmp_path / "again")]
    assert main(args) == 2
    assert "trained with --last-stage drop" in capsys.readouterr().err
    assert dense_macs(CFG) > 0
