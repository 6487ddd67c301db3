"""``stage_errors``: the per-stage distance of a reduced model's tokens to its dense teacher's."""
import numpy as np

import minitofe
from minitofe.config import ViTConfig
from minitofe.train.diagnostics import stage_errors

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)


def _model(method):
    tcfg = minitofe.ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.5, 0.5))
    return minitofe.new_model(CFG, tcfg, np.random.default_rng(0), np.float64)


def test_fresh_approximator_is_the_identity_and_keep_all_is_exact():
    model = _model("tofe")
    images = np.random.default_rng(1).standard_normal((5, 1, 8, 8))
    rows = stage_errors(model, images, model.backbone_params())
    for row in rows:                              # Wb = 0 at init: the approximator returns its input
        assert row["frozen"] == row["identity"] and row["frozen"] > 0
        assert abs(row["frozen_fraction"] - 0.5) < 1e-12
    assert rows[0]["kept"] > 0                     # kept tokens attended to half the patches only
    exact = stage_errors(model, images, model.backbone_params(), keep_ratios=(1.0, 1.0, 1.0))
    for row in exact:
        assert row["kept"] < 1e-28 and np.isnan(row["frozen"]) and row["frozen_fraction"] == 0.0


def test_a_trained_approximator_changes_the_frozen_error_only():
    model = _model("tofe")
    images = np.random.default_rng(2).standard_normal((4, 1, 8, 8))
    before = stage_errors(model, images, model.backbone_params())
    model.params["tofe.approx.1.fc2.bias"] = model.params["tofe.approx.1.fc2.bias"] + 0.3
    after = stage_errors(model, images, model.backbone_params())
    assert after[0] == before[0]
    assert after[1]["frozen"] != before[1]["frozen"] and after[1]["identity"] == before[1]["identity"]


def test_freeze_path_accuracy_as_trained_is_predict_and_the_oracle_is_another_path():
    from minitofe.train.diagnostics import freeze_path_accuracy
    model = _model("tofe")
    rng = np.random.default_rng(3)
    model.params["tofe.approx.0.fc2.bias"] = model.params["tofe.approx.0.fc2.bias"] + 0.5   # not identity
    images = rng.standard_normal((12, 1, 8, 8))
    logits, _ = minitofe.predict(model, images, keep_ratios=(0.5, 0.5, 0.5), fast=False)
    labels = logits.argmax(-1)
    acc = freeze_path_accuracy(model, images, labels, keep_ratios=(0.5, 0.5, 0.5), batch_size=5)
    assert acc["approximator"] == 1.0                        # the same decisions and logits as predict
    ident, _ = minitofe.predict(model, images, method="tofe-identity", keep_ratios=(0.5, 0.5, 0.5))
    assert acc["identity"] == np.mean(ident.argmax(-1) == labels)
    every = freeze_path_accuracy(model, images, labels, keep_ratios=(1.0, 1.0, 1.0))
    assert len(set(every.values())) == 1                     # nothing frozen: one model three times
    one_stage = minitofe.add_tofe(minitofe.Model(model.backbone_params(), CFG, None),
                                  minitofe.ToFeConfig(stages=(3,), keep_ratios=(0.25,)))
    one = freeze_path_accuracy(one_stage, images, labels)
    assert len(set(one.values())) == 1                       # the head reads the class token, always kept


def test_the_oracle_freeze_path_gives_frozen_tokens_the_stage_blocks_own_outputs():
    """Two stages, the second keeping every patch: the oracle's stage-2 input must hold, at the patches
    frozen in stage 1, exactly what stage 1's blocks make of all tokens; checked through the logits."""
    from minitofe.nn.block import run_blocks
    from minitofe.nn.embed import embed_forward, head_forward
    from minitofe.train.diagnostics import freeze_path_accuracy, freeze_path_logits
    tcfg = minitofe.ToFeConfig(stages=(1, 3), keep_ratios=(0.25, 1.0))
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(4), np.float64)
    images = np.random.default_rng(5).standard_normal((6, 1, 8, 8))
    _, info = minitofe.predict(model, images, fast=False)
    x, _ = embed_forward(images, model.params, CFG)
    x = run_blocks(x, model.params, CFG, 0, 1)
    every = run_blocks(x, model.params, CFG, 1, 3)
    s1 = info["stage_outputs"][0].copy()
    b, q = np.nonzero(info["frozen"][0])
    s1[b, q + 1] = every[b, q + 1]
    oracle_logits, _ = head_forward(run_blocks(s1, model.params, CFG, 3, 4), model.params, CFG)
    got = freeze_path_logits(model, images)
    np.testing.assert_allclose(got["oracle"], oracle_logits, rtol=1e-12, atol=1e-14)
    assert np.abs(got["identity"] - oracle_logits).max() > 1e-6      # the oracle is a path of its own
    labels = oracle_logits.argmax(-1)
    assert freeze_path_accuracy(model, images, labels, batch_size=4)["oracle"] == 1.0


def test_freeze_paths_refuse_what_they_cannot_measure():
    import pytest
    from minitofe.train.diagnostics import freeze_path_accuracy, freeze_path_logits
    images = np.zeros((2, 1, 8, 8))
    with pytest.raises(ValueError, match="learned selector that freezes and reuses tokens.*'idle'"):
        freeze_path_logits(_model("idle"), images)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\)"):
        freeze_path_logits(_model("tofe"), np.zeros((2, 1, 9, 8)))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        freeze_path_accuracy(_model("tofe"), images, np.zeros(3, int))


def test_errors_relative_to_the_teachers_update_carry_the_stage_length():
    """Against the teacher's own update over the stage: carrying a token unchanged from where the teacher
    had it misses all of that update (1.0 at the first stage, whose input is the teacher's); the numerators
    are those of the errors relative to the token; ``blocks`` is the stage's length."""
    tcfg = minitofe.ToFeConfig(stages=(1, 3), keep_ratios=(0.5, 0.5))
    model = minitofe.new_model(CFG, tcfg, np.random.default_rng(6), np.float64)
    images = np.random.default_rng(7).standard_normal((4, 1, 8, 8))
    rows = stage_errors(model, images, model.backbone_params(), batch_size=3)
    assert [r["blocks"] for r in rows] == [2, 1]
    assert abs(rows[0]["identity_update"] - 1.0) < 1e-12
    model.params["tofe.approx.0.fc2.bias"] = model.params["tofe.approx.0.fc2.bias"] + 0.3
    rows = stage_errors(model, images, model.backbone_params())
    for r in rows:
        assert abs(r["frozen_update"] / r["identity_update"] - r["frozen"] / r["identity"]) < 1e-12
    assert rows[0]["frozen_update"] != rows[0]["identity_update"]
