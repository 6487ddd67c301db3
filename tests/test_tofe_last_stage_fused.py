"""Both ToFe options together: ``last_stage="drop"`` with ``fuse_frozen=True``. At the last stage the
frozen patches are fused into the token the kept ones attend to, so what they hold when the stage begins
reaches the class token; then they get no approximator, and what the freeze path makes of them reaches
nothing. Checked: the parameters, the MACs (against the matmuls the code runs and against either option
alone), the logits against those of the fused default model with the same weights, which values of the
last stage's frozen tokens reach the logits, and the command line. The hard-mask training forward against
the gather inference forward with both options is in ``test_tofe_fused.py``, the whole step's gradient
(soft and hard mask) against finite differences in float64 in ``test_tofe_training.py``, their
invariants in ``test_tofe_properties.py`` (which draws both options)."""
import json

import numpy as np
import pytest

import minitofe
import minitofe.tofe.inference as inference
import minitofe.tofe.stage as stage
from minitofe.cli import main
from minitofe.config import get_config
from minitofe.tofe.budget import ratios_for_budget, topk_macs
from minitofe.tofe.macs import approximator_macs, block_macs, dense_macs, tofe_macs
from test_macs import counted
from test_tofe_last_stage import CFG, LAST, RATIOS, STAGES, _pair
from test_train_trust import _image_folder

T, P = CFG.num_prefix_tokens, CFG.num_patches


def _both(seed=0, **kw):
    """(the fused default model, its ``last_stage="drop"`` twin with the same weights)."""
    return _pair(seed=seed, fuse_frozen=True, **kw)


def _images(seed, B=3):
    return np.random.default_rng(seed).standard_normal((B, 1, 8, 8))


def test_the_options_compose():
    _, both = _both()
    assert both.tofe.fuses_frozen and both.tofe.approximated_stages(CFG.depth) == (True, True, False)
    assert not any(k.startswith(LAST) for k in both.params)
    assert set(minitofe.new_model(CFG, both.tofe, np.random.default_rng(0)).params) == set(both.params)


@pytest.mark.parametrize("how", ["topk", "ragged masks"])
def test_the_macs_equal_the_matmuls_run_and_either_option_alone(how):
    """Each stage's blocks on the kept tokens + 1 where the image froze a patch, no approximator at the
    last stage; the difference to the fused default model is that approximator, to the unfused drop model
    the fused token's rows in the blocks."""
    fused, both = _both()
    images, masks = _images(2), None
    if how == "ragged masks":
        rng = np.random.default_rng(3)
        masks = [rng.random((3, P)) > 0.5 for _ in STAGES]
        masks[2][0] = True                  # image 0 freezes nothing at the last stage: no fused token
        masks[2][1] = False                 # image 1 freezes every patch there
    result = {}
    ran = counted(lambda p, x: result.update(info=minitofe.predict(minitofe.Model(p, CFG, both.tofe, None), x,
                                                                   kept_masks=masks)[1]), both.params, images)
    info = result["info"]
    assert ran == int(round(float(np.sum(info["macs"]))))
    n, froze = info["kept_counts"] + T, info["kept_counts"] < P                  # (B, S)
    want, _ = tofe_macs(CFG, STAGES, n, approximator=(True, True, False), fused=froze)
    np.testing.assert_array_equal(info["macs"], want)
    _, alone = minitofe.predict(fused, images, kept_masks=masks)
    np.testing.assert_allclose(alone["macs"] - info["macs"], approximator_macs(CFG.num_tokens - n[:, -1], 8, 4))
    unfused = minitofe.Model(both.params, CFG, both.tofe.replace(fuse_frozen=False), None)
    _, plain = minitofe.predict(unfused, images, kept_masks=masks)
    one_more = sum(froze[:, s] * (block_macs(n[:, s] + 1, 8, 2.0) - block_macs(n[:, s], 8, 2.0)) for s in range(3))
    np.testing.assert_allclose(info["macs"] - plain["macs"], one_more)
    assert froze.all() == (how == "topk") and froze[:, -1].any()
    if masks is None:
        assert np.allclose(info["macs"], topk_macs(CFG, both.tofe, RATIOS))


def test_the_budget_buys_kept_tokens_with_the_saved_approximator():
    cfg, kept = get_config("vit_fmnist_patch4_28"), {}
    for last in ("approximate", "drop"):
        tcfg = minitofe.ToFeConfig(last_stage=last, fuse_frozen=True)
        ratios = ratios_for_budget(cfg, tcfg, 0.35)
        kept[last] = sum(round(r * cfg.num_patches) for r in ratios)
        assert 0.34 < topk_macs(cfg, tcfg, ratios) / dense_macs(cfg) <= 0.35
    assert kept["drop"] > kept["approximate"]


def _noisy_run_stage(original, rng, where):
    """``inference.run_stage`` with 100-sized noise written into the last stage's frozen tokens ``where``:
    "input" before the stage (what f is made from), "output" after its freeze path."""
    def run(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob=None):
        b, p = np.nonzero(frozen)
        last = s == len(STAGES) - 1
        if last and where == "input":
            x = x.copy()
            x[b, p + T] = 100 * rng.standard_normal((len(b), x.shape[-1]))
        out = original(x, kept, frozen, params, cfg, tcfg, s, blocks, ops, keep_prob)
        if last and where == "output":
            out[b, p + T] = 100 * rng.standard_normal((len(b), x.shape[-1]))
        return out
    return run


def test_inference_logits_and_what_of_the_last_frozen_tokens_reaches_them(monkeypatch):
    """The logits of the fused default model with the same weights. Noise in the last stage's frozen tokens
    after its freeze path changes nothing; noise in what they hold when the stage begins changes the
    logits (through f), unlike without the fused token, where it changes nothing either."""
    fused, both = _both(seed=7)
    images = _images(8, B=4)
    want, info = minitofe.predict(fused, images)
    logits, ours = minitofe.predict(both, images)
    assert np.array_equal(logits, want) and ours["frozen"][-1].any()
    unfused = minitofe.Model(both.params, CFG, both.tofe.replace(fuse_frozen=False), None)
    plain, _ = minitofe.predict(unfused, images)
    original, rng = inference.run_stage, np.random.default_rng(9)
    monkeypatch.setattr(inference, "run_stage", _noisy_run_stage(original, rng, "output"))
    assert np.array_equal(minitofe.predict(both, images)[0], want)
    monkeypatch.setattr(inference, "run_stage", _noisy_run_stage(original, rng, "input"))
    assert np.max(np.abs(minitofe.predict(both, images)[0] - want)) > 1e-3
    assert np.array_equal(minitofe.predict(unfused, images)[0], plain)


def test_training_logits_and_what_of_the_last_frozen_tokens_reaches_them(monkeypatch):
    """Training (masked attention): the fused default model's logits and classification loss, L_approx
    without its last term, fewer MACs; noise in the last freeze path changes no logit, noise in the last
    stage's frozen tokens before they are fused does."""
    fused, both = _both(seed=10)
    rng = np.random.default_rng(11)
    images, labels = _images(12, B=4), np.array([0, 1, 2, 1])
    noise = minitofe.draw_noise(rng, CFG, fused.tofe, 4, np.float64)
    teacher = minitofe.teacher_forward(fused.backbone_params(), images, CFG, STAGES)
    full, _ = minitofe.train_forward(fused, images, labels, noise, teacher)
    ours, _ = minitofe.train_forward(both, images, labels, noise, teacher)
    assert np.array_equal(ours["logits"], full["logits"]) and ours["losses"]["cls"] == full["losses"]["cls"]
    assert 0 < ours["losses"]["approx"] < full["losses"]["approx"]
    assert np.all(ours["macs"] < full["macs"]) and (ours["masks"][-1][:, T:] == 0).any()
    freeze_path, append = stage.freeze_path_forward, stage.append_fused_forward

    def noisy_freeze(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T):
        a, term, cache = freeze_path(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T)
        return (a + 100 * rng.standard_normal(a.shape) if s == len(STAGES) - 1 else a), term, cache
    monkeypatch.setattr(stage, "freeze_path_forward", noisy_freeze)
    assert np.array_equal(minitofe.train_forward(both, images, labels, noise, teacher)[0]["logits"],
                          full["logits"])
    calls = []

    def noisy_fuse(x, m, sel_logits, T):
        calls.append(1)
        if len(calls) == len(STAGES):                   # the last stage's: its frozen rows, before f
            x = np.where(m[..., None] < 0.5, 100 * rng.standard_normal(x.shape), x)
        return append(x, m, sel_logits, T)
    monkeypatch.setattr(stage, "append_fused_forward", noisy_fuse)
    moved = minitofe.train_forward(both, images, labels, noise, teacher)[0]["logits"]
    assert len(calls) == len(STAGES) and np.max(np.abs(moved - full["logits"])) > 1e-3


def test_minitofe_train_with_both_options_and_init_from_it(tmp_path, capsys):
    init, data = tmp_path / "init.npz", _image_folder(tmp_path / "data")
    minitofe.save_model(init, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(0), np.float32))
    common = ["--data", str(data), "--steps", "2", "--batch", "4", "--warmup-steps", "1", "--stages", "1", "2",
              "3", "--keep-ratios", "0.5", "0.5", "0.5", "--budget", "0.8", "--no-progress", "--no-fast"]
    both = ["--last-stage", "drop", "--fuse-frozen"]
    assert main(["train", "--init", str(init), *common, "--out", str(tmp_path / "run"), *both]) == 0
    final = tmp_path / "run" / "final.npz"
    model = minitofe.load_model(final)
    assert model.tofe.last_stage == "drop" and model.tofe.fuses_frozen
    assert not any(k.startswith(LAST) for k in model.params)
    capsys.readouterr()
    assert main(["eval", "--weights", str(final), "--data", str(data / "val"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fuse_frozen"] is True
    _, info = minitofe.predict(model, np.zeros((1, 1, 8, 8), np.float32))
    assert info["macs"][0] == pytest.approx(topk_macs(CFG, model.tofe, model.learned_keep_ratios))
    for given, missing in ((both[:2], "pass --fuse-frozen"), (both[2:], "pass --last-stage drop")):
        assert main(["train", "--init", str(final), *common, "--out", str(tmp_path / "again"), *given]) == 2
        assert missing in capsys.readouterr().err
    assert main(["train", "--init", str(final), *common, "--out", str(tmp_path / "more"), *both]) == 0
