"""Numerical edge cases: huge scores, float32 overflow, extreme Gumbel noise, tiny temperatures, and
bitwise determinism of training."""
import numpy as np
import pytest

import minitofe
from minitofe.config import ViTConfig
from minitofe.gradcheck import numerical_grad, rel_error
from minitofe.nn.attention import masked_softmax_backward, masked_softmax_forward
from minitofe.tofe.gumbel import gumbel_noise, gumbel_softmax_backward, gumbel_softmax_forward
from minitofe.train import TrainConfig, train


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, -1e4, 1e30])
def test_masked_softmax_extreme_scores_stay_finite(dtype, scale):
    rng = np.random.default_rng(0)
    s = (rng.standard_normal((2, 2, 5, 5)) * scale).astype(dtype)
    for mask in (np.zeros((2, 5)), np.eye(5)[[0, 3]], rng.uniform(0, 1, (2, 5)).round()):
        A, cache = masked_softmax_forward(s, mask.astype(dtype))
        ds, dm = masked_softmax_backward(rng.standard_normal(A.shape).astype(dtype), cache)
        assert A.dtype == dtype and np.all(np.isfinite(A)) and np.allclose(A.sum(-1), 1, atol=1e-5)
        assert np.all(np.isfinite(ds)) and np.all(np.isfinite(dm))


def test_gumbel_extreme_noise_and_tiny_tau():
    rng = np.random.default_rng(1)
    g = gumbel_noise(rng, (1000, 2), np.float32)
    assert np.all(np.isfinite(g))
    logits = rng.standard_normal((4, 6, 2))
    noise = gumbel_noise(rng, logits.shape)
    for tau in (1e-4, 1e-2):
        y, cache = gumbel_softmax_forward(logits, noise, tau, hard=True)
        d = gumbel_softmax_backward(rng.standard_normal(y.shape), cache)
        assert set(np.unique(y)) <= {0.0, 1.0} and np.all(np.isfinite(d))
    tau = 0.05                                        # small but finite-difference-able
    R = rng.standard_normal(logits.shape)
    _, cache = gumbel_softmax_forward(logits, noise, tau, hard=False)
    num = numerical_grad(lambda: np.sum(gumbel_softmax_forward(logits, noise, tau, hard=False)[0] * R), logits,
                         h=1e-7)
    assert rel_error(num, gumbel_softmax_backward(R, cache)) < 1e-5


def test_same_seed_gives_bitwise_identical_weights(tmp_path):
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=3, num_heads=2,
                    mlp_ratio=2.0)
    tcfg = minitofe.ToFeConfig(stages=(1, 2), keep_ratios=(0.5, 0.5))
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((16, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 16))
    runs = []
    for name in ("a", "b"):
        model = minitofe.new_model(cfg, tcfg, np.random.default_rng(0), np.float32)
        train(model, model.backbone_params(), data, None,
              TrainConfig(steps=5, batch_size=4, checkpoint_every=5, out_dir=str(tmp_path / name)), progress=False)
        runs.append(model.params)
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
