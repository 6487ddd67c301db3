"""``reuse_analysis``: the traced re-run of ToFe inference, attention shares, reuse maps, interventions."""
import numpy as np
import pytest

import minitofe
from minitofe.config import ViTConfig
from minitofe.train import reuse_analysis as R

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def model():
    tcfg = minitofe.ToFeConfig(method="tofe", stages=(1, 2, 3), keep_ratios=(0.5, 0.5, 0.25))
    m = minitofe.new_model(CFG, tcfg, np.random.default_rng(0), np.float64)
    rng = np.random.default_rng(3)
    for k in list(m.params):                  # a fresh approximator is the identity: make it another map
        if k.startswith("tofe.approx."):
            m.params[k] = m.params[k] + 0.3 * rng.standard_normal(m.params[k].shape)
    return m


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((6, 1, 8, 8))


def test_the_traced_run_is_predict_exactly(model, images):
    for ratios in (None, (0.75, 0.25, 0.5)):
        z, info = minitofe.predict(model, images, keep_ratios=ratios)
        zt, tr = R.traced_forward(model, images, keep_ratios=ratios)
        assert np.array_equal(z, zt)
        for key in ("kept", "frozen", "reused"):
            assert all(np.array_equal(a, b) for a, b in zip(info[key], tr[key]))
    assert sum(int(r.sum()) for r in tr["reused"]) > 0
    zi, info = minitofe.predict(model, images, method="tofe-identity")
    zt, tr = R.traced_forward(model, images, freeze="identity")
    assert np.array_equal(zi, zt) and not np.array_equal(zi, minitofe.predict(model, images)[0])
    assert all(np.array_equal(a, b) for a, b in zip(info["reused"], tr["reused"]))
    with pytest.raises(ValueError):
        R.traced_forward(model, images, freeze="oracle")


def test_attention_is_recorded_over_the_gathered_tokens(model, images):
    _, tr = R.traced_forward(model, images)
    for s, probs in enumerate(tr["attention"]):
        n = tr["idx"][s].shape[1]
        assert len(probs) == 1 and probs[0].shape == (6, CFG.num_heads, n, n)
        assert np.allclose(probs[0].sum(-1), 1.0)
        assert n == 1 + int(tr["kept"][s][0].sum())


def test_attention_shares_sum_to_one_and_uniform_attention_is_uniform(model, images):
    _, tr = R.traced_forward(model, images)
    s = next(s for s, r in enumerate(tr["reused"]) if r.any())
    res = R.attention_shares(tr["attention"][s], tr["idx"][s], tr["reused"][s], 1)
    assert res["cls"]["n"] > 0 and res["reused"]["n"] > 0
    for g in R.GROUPS:
        if res[g]["n"]:
            assert abs(res[g]["mass"].sum() - 1.0) < 1e-12 and abs(res[g]["uniform"].sum() - 1.0) < 1e-12
    assert res["cls"]["mass"][0] == 0.0                        # self excluded: CLS gives nothing to CLS
    n = tr["idx"][s].shape[1]
    flat = [np.full((6, 2, n, n), 1.0 / n)]
    uni = R.attention_shares(flat, tr["idx"][s], tr["reused"][s], 1)
    for g in R.GROUPS:
        assert np.allclose(uni[g]["mass"], uni[g]["uniform"], atol=1e-12)
    assert not np.allclose(res["cls"]["mass"], res["cls"]["uniform"], atol=1e-6)


def test_attention_shares_on_a_hand_made_case():
    idx = np.array([[0, 1, 3]])                              # CLS, patch 0, patch 2 gathered (T = 1)
    reused = np.array([[False, False, True]])                # patch 2 is reused
    A = np.array([[[[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]]])   # (1, 1, 3, 3)
    res = R.attention_shares([A], idx, reused, 1)
    assert np.allclose(res["cls"]["mass"], [0.0, 0.6, 0.4])              # 0.3 / 0.5 to reused
    assert np.allclose(res["other"]["mass"], [0.25, 0.75, 0.0])
    assert np.allclose(res["reused"]["mass"], [0.5, 0.0, 0.5])
    assert np.allclose(res["cls"]["uniform"], [0.0, 0.5, 0.5])


def test_replacing_reused_tokens_by_their_own_values_changes_nothing_and_zeros_do(model, images):
    z, tr = R.traced_forward(model, images)
    assert np.array_equal(R.intervention_logits(model, images, tr, tr["reused"], tr["inputs"]), z)
    zeros = [np.zeros_like(v) for v in tr["inputs"]]
    z0 = R.intervention_logits(model, images, tr, tr["reused"], zeros)
    has = np.any([r.any(axis=1) for r in tr["reused"]], axis=0)            # images with a reused token
    assert has.any() and (np.abs(z0 - z).max(axis=1)[has] > 1e-6).all()
    none = [np.zeros_like(r) for r in tr["reused"]]
    assert np.array_equal(R.intervention_logits(model, images, tr, none, zeros), z)
    dense = R.dense_stage_inputs(model, images)
    assert len(dense) == 3 and dense[0].shape == tr["inputs"][0].shape
    assert np.array_equal(dense[0], tr["inputs"][0])           # before the first stage, ToFe is dense


def test_logit_change():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    same = R.logit_change(a, a)
    assert same == {"agree": 1.0, "abs": 0.0, "kl": 0.0}
    b = a[:, [1, 0, 2]]
    moved = R.logit_change(a, b)
    assert moved["agree"] == 0.0 and abs(moved["abs"] - 1.0) < 1e-12 and moved["kl"] > 0


def test_maps_and_background_count_what_they_should():
    reused = [np.zeros((3, 4), bool), np.zeros((3, 4), bool)]
    reused[0][0, 1] = reused[1][0, 1] = True                # image 0 (class 1): patch 1 twice
    reused[1][1, 3] = True                                  # image 1 (class 0): patch 3
    reused[1][2, 3] = True                                  # image 2 (class 1): patch 3
    counts, n = R.reuse_maps(reused, np.array([1, 0, 1]), 2, 2)
    assert counts.shape == (3, 2, 2) and n.tolist() == [1, 2, 3]
    assert counts[0].ravel().tolist() == [0, 0, 0, 1]
    assert counts[1].ravel().tolist() == [0, 2, 0, 1]
    assert counts[2].ravel().tolist() == [0, 2, 0, 2]
    raw = np.zeros((1, 1, 4, 4))
    raw[0, 0, :2, 2:] = 1.0                                 # top-right patch bright
    raw[0, 0, 2, 0] = 0.3                                   # bottom-left patch: mean 0.075
    assert R.background_patches(raw, 2, 0.1).tolist() == [[True, False, True, True]]
    assert R.background_patches(raw, 2, 0.05).tolist() == [[True, False, False, True]]


def test_matched_masks_draw_equal_counts_from_the_right_pools():
    kept = np.array([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], bool)
    reused = np.array([[1, 0, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    sub, ctrl = R.matched_masks(kept, reused, np.random.default_rng(0))
    assert sub.sum(1).tolist() == [2, 0, 0] and ctrl.sum(1).tolist() == [2, 0, 0]
    assert not (sub & ~reused).any() and not (ctrl & (reused | ~kept)).any()
