"""Keep ratios for a MACs budget: they hit the budget, and their MACs are what inference realises."""
import numpy as np
import pytest

import minitofe
from minitofe.config import ViTConfig, get_config
from minitofe.tofe.budget import ratios_for_budget, topk_macs
from minitofe.tofe.macs import dense_macs


@pytest.mark.parametrize("method", ["tofe", "tofe-identity", "idle", "evit", "evit-drop", "dynamicvit",
                                    "tofe-cumulative", "tofe-uniform"])
@pytest.mark.parametrize("budget", [0.7, 0.5, 0.35])
def test_ratios_hit_the_budget_on_deit_small(method, budget):
    cfg = get_config("deit_small_patch16_224")
    tcfg = minitofe.ToFeConfig(method=method)
    ratios = ratios_for_budget(cfg, tcfg, budget)
    got = topk_macs(cfg, tcfg, ratios) / dense_macs(cfg)
    assert got <= budget and budget - got < 0.01


@pytest.mark.parametrize("method", ["tofe", "idle", "evit", "evit-drop", "dynamicvit", "tofe-cumulative"])
def test_topk_macs_equal_the_realised_macs_of_inference(method):
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
    tcfg = minitofe.ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.75, 0.5, 0.25))
    model = minitofe.new_model(cfg, tcfg, np.random.default_rng(0))
    ratios = ratios_for_budget(cfg, tcfg, 0.6)
    images = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    _, info = minitofe.predict(model, images, keep_ratios=ratios)
    assert np.allclose(info["macs"], topk_macs(cfg, tcfg, ratios))


def test_impossible_budgets_are_refused():
    cfg = get_config("deit_tiny_patch16_224")
    with pytest.raises(ValueError, match="below the cheapest"):
        ratios_for_budget(cfg, minitofe.ToFeConfig(), 0.05)
    with pytest.raises(ValueError, match="budget must be"):
        ratios_for_budget(cfg, minitofe.ToFeConfig(), 0.0)
    assert ratios_for_budget(cfg, minitofe.ToFeConfig(method="idle"), 1.2) == (1.0, 1.0, 1.0)
