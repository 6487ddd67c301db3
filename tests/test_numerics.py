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
    """Two trainings in one process, on the default (fast where Numba is installed) path: bit for bit, as
    they make the same calls on the same arrays with the same kernels; this tiny model stays below every
    size at which the fast path would split work over threads (``kernels.threads``), so the machine's load
    changes nothing. A claim for one machine: another CPU's BLAS kernel may round differently."""
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


def test_masked_softmax_with_only_the_diagonal_allowed():
    """Every key but the query itself masked: A is the identity, and the selector's gradient dm matches
    central differences (m enters as a factor, so f is smooth through m = 0)."""
    rng = np.random.default_rng(4)
    s = rng.standard_normal((2, 2, 5, 5))
    mask = np.zeros((2, 5))
    A, cache = masked_softmax_forward(s, mask)
    assert np.array_equal(A, np.broadcast_to(np.eye(5), A.shape))
    R = rng.standard_normal(A.shape)
    ds, dm = masked_softmax_backward(R, cache)
    f = lambda: np.sum(masked_softmax_forward(s, mask)[0] * R)          # noqa: E731
    assert np.array_equal(ds, np.zeros_like(ds)) and np.abs(numerical_grad(f, s)).max() < 1e-9
    assert np.abs(dm).max() > 1e-3 and rel_error(numerical_grad(f, mask), dm) < 1e-7
    for big in (1e4, -1e4):                                              # +-1e4 logits: still the identity
        s_big = np.where(rng.uniform(size=s.shape) < 0.5, big, -big)
        A, cache = masked_softmax_forward(s_big, mask)
        ds, dm = masked_softmax_backward(R, cache)
        assert np.array_equal(A, np.broadcast_to(np.eye(5), A.shape))
        assert np.all(np.isfinite(ds)) and np.all(np.isfinite(dm))


@pytest.mark.parametrize("keep", [None, np.array([[1.0, 0.0, 1.0, 1.0, 0.0]])])
def test_float32_softmax_where_a_naive_exp_overflows(keep):
    """Scores of 100..200 (exp overflows float32 above ~88.7): the float32 result equals float64's."""
    s32 = np.random.default_rng(5).uniform(100.0, 200.0, (1, 2, 5, 5)).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(s32)).any()                              # the naive formula would fail
    A32, _ = masked_softmax_forward(s32, None if keep is None else keep.astype(np.float32))
    A64, _ = masked_softmax_forward(s32.astype(np.float64), keep)       # the same scores, in float64
    assert A32.dtype == np.float32 and np.all(np.isfinite(A32))
    np.testing.assert_allclose(A32, A64, rtol=0, atol=1e-6)


class _EdgeDraws(np.random.Generator):
    """A Generator whose uniform draws are the extremes: 0 and the largest float64 below 1."""
    def random(self, size=None, dtype=np.float64, out=None):
        u = np.zeros(size)
        u.reshape(-1)[1::2] = np.nextafter(1.0, 0.0)
        return u


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gumbel_noise_at_the_ends_of_the_uniform_draw(dtype):
    """u = 0 and u = 1 - eps give finite noise: u is clipped to [tiny, 1 - eps] of the dtype."""
    fi = np.finfo(dtype)
    g = gumbel_noise(_EdgeDraws(np.random.PCG64(0)), (4, 6, 2), dtype)
    assert g.dtype == dtype and np.all(np.isfinite(g))
    lo, hi = -np.log(-np.log(fi.tiny)), -np.log(-np.log(dtype(1) - fi.eps))
    np.testing.assert_allclose(g.reshape(-1)[0::2], lo, rtol=1e-6)
    np.testing.assert_allclose(g.reshape(-1)[1::2], hi, rtol=1e-6)
    logits = np.where(np.arange(g.size).reshape(g.shape) % 3 == 0, 1e4, -1e4).astype(dtype)
    R = np.random.default_rng(6).standard_normal(g.shape).astype(dtype)
    for hard in (True, False):                                           # logits +-1e4, tau 1e-4
        y, cache = gumbel_softmax_forward(logits, g, 1e-4, hard=hard)
        d = gumbel_softmax_backward(R, cache)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(d)) and np.allclose(y.sum(-1), 1)


def test_gumbel_small_tau_gradient_near_a_tie():
    """tau = 1e-3 with logits 1e-3 apart (the only place a tiny tau has a non-zero gradient): the soft
    relaxation's backward matches central differences."""
    rng = np.random.default_rng(7)
    logits = rng.uniform(-1e-3, 1e-3, (3, 4, 2))
    noise = np.zeros_like(logits)
    R = rng.standard_normal(logits.shape)
    _, cache = gumbel_softmax_forward(logits, noise, 1e-3, hard=False)
    d = gumbel_softmax_backward(R, cache)
    num = numerical_grad(lambda: np.sum(gumbel_softmax_forward(logits, noise, 1e-3, hard=False)[0] * R), logits,
                         h=1e-9)
    assert np.abs(d).max() > 10 and rel_error(num, d) < 1e-5
