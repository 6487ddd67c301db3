"""Reduced inference: the public API, float32, every method by name, edge cases and bad input."""
import numpy as np
import pytest

import minitofe
from minitofe.config import ViTConfig
from minitofe.tofe.config import METHODS, ToFeConfig

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2)


def _model(method="tofe", dtype=np.float64, seed=0, **kw):
    rng = np.random.default_rng(seed)
    tcfg = ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.25, 0.25), **kw)
    m = minitofe.new_model(CFG, tcfg, rng, dtype)
    for k, v in m.params.items():                 # move away from init: nothing trivially zero
        v += (0.3 * rng.standard_normal(v.shape)).astype(dtype)
    images = rng.standard_normal((3, 1, 8, 8)).astype(dtype)
    return m, images


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_method_runs_by_name(method, dtype):
    m, images = _model(method, dtype)
    logits, info = minitofe.predict(m, images)
    assert logits.shape == (3, 4) and logits.dtype == dtype and np.all(np.isfinite(logits))
    dense, _ = minitofe.vit_forward(m.backbone_params(), images, CFG)
    if method == "dense":
        assert np.array_equal(logits, dense)
        assert np.allclose(info["macs_ratio"], 1.0)
    else:
        assert np.all(info["macs_ratio"] < 1.0)
        assert len(info["kept"]) == 3 and info["kept"][0].shape == (3, CFG.num_patches)


def test_reuse_happens_and_is_recorded():
    m, images = _model("tofe", seed=1)
    _, info = minitofe.predict(m, images)
    ever_frozen = np.zeros_like(info["kept"][0])
    for s in range(3):
        assert np.array_equal(info["reused"][s], info["kept"][s] & ever_frozen)
        ever_frozen |= info["frozen"][s]
    assert any(r.any() for r in info["reused"][1:])   # a frozen token is kept again later


def test_float32_close_to_float64():
    m64, images = _model("tofe", np.float64)
    m32 = minitofe.Model({k: v.astype(np.float32) for k, v in m64.params.items()}, m64.cfg, m64.tofe)
    l64, i64 = minitofe.predict(m64, images, keep_ratios=(1.0, 1.0, 1.0))
    l32, _ = minitofe.predict(m32, images.astype(np.float32), keep_ratios=(1.0, 1.0, 1.0))
    assert np.max(np.abs(l64 - l32)) < 1e-4


def test_all_patches_frozen_is_legal():
    m, images = _model("tofe")
    masks = [np.zeros((3, CFG.num_patches), bool)] * 3
    logits, info = minitofe.predict(m, images, kept_masks=masks)
    assert np.all(np.isfinite(logits))
    assert all(f.all() for f in info["frozen"])
    logits_t, _ = minitofe.predict(m, images, inference="threshold")
    assert np.all(np.isfinite(logits_t))


def test_learned_ratios_are_used_for_topk():
    m, images = _model("tofe")
    minitofe.update_learned_ratios(m, [0.75, 0.5, 0.25])
    _, info = minitofe.predict(m, images)
    assert info["kept_counts"][0].tolist() == [12, 8, 4]
    _, info = minitofe.predict(m, images, keep_ratios=(0.25, 0.25, 0.25))
    assert info["kept_counts"][0].tolist() == [4, 4, 4]


def test_threshold_mode_gives_ragged_counts():
    m, images = _model("tofe", seed=3, inference="threshold")
    _, info = minitofe.predict(m, images)
    for s in range(3):
        assert np.array_equal(info["kept"][s], info["keep_prob"][s] > 0.5)


def test_weights_without_tofe_modules_are_refused_for_tofe():
    m, images = _model("tofe")
    bare = minitofe.Model(m.backbone_params(), m.cfg, m.tofe)
    with pytest.raises(ValueError, match="no ToFe selector/approximator parameters"):
        minitofe.predict(bare, images)
    minitofe.predict(bare, images, method="idle")           # training-free methods need none


@pytest.mark.parametrize("kw, match", [(dict(keep_ratios=(0.5, 0.0, 0.5)), r"\(0, 1\]"),
                                       (dict(keep_ratios=(0.5, 0.5)), "3 stages but 2 keep ratios"),
                                       (dict(kept_masks=[np.zeros((3, 16))] * 3), "must be bool"),
                                       (dict(method="nope"), "unknown method")])
def test_bad_inference_input(kw, match):
    m, images = _model("tofe")
    with pytest.raises(ValueError, match=match):
        minitofe.predict(m, images, **kw)


def test_bad_images_rejected():
    m, images = _model("tofe")
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        minitofe.predict(m, images[:, :, :4])
    with pytest.raises(TypeError, match="float32"):
        minitofe.predict(m, images.astype(np.float32))


def test_add_tofe_to_a_backbone():
    m, images = _model("dense")
    bare = minitofe.Model(m.backbone_params(), m.cfg, m.tofe)
    minitofe.add_tofe(bare, ToFeConfig(method="tofe", stages=(1, 2, 3), keep_ratios=(1.0, 1.0, 1.0)))
    assert any(k.startswith("tofe.approx.") for k in bare.params)
    logits, _ = minitofe.predict(bare, images)
    assert np.array_equal(logits, minitofe.vit_forward(m.backbone_params(), images, CFG)[0])
