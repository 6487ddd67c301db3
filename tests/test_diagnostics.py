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
