"""Determinism of ``minitofe.train.train``: the same seed gives bitwise-identical weights and optimizer
state on the NumPy reference path, and the Numba fast path agrees with the reference within a stated
tolerance. (The bitwise test on the default fast path is ``test_numerics.py``; resume == uninterrupted is
``test_train.py``.)

Tolerance, fast vs reference after 4 AdamW steps (docs/bad-input.md says the same):
    float64: |fast - reference| <= 1e-12 + 1e-10 |reference|     (measured: 2e-17)
    float32: |fast - reference| <= 1e-6  + 1e-5  |reference|     (measured: 1e-8)
plus identical hard Gumbel decisions (the learned keep ratios are equal exactly). The tolerance is
absolute first because Adam divides by sqrt(v): a rounding difference in a near-zero gradient moves a
near-zero weight by a relatively large, absolutely tiny amount.
"""
import numpy as np
import pytest

import minitofe
from minitofe.train.checkpoint import load_checkpoint
from minitofe.config import ViTConfig
from minitofe.train import TrainConfig, train

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2)
TCFG = minitofe.ToFeConfig(stages=(1, 2, 3), keep_ratios=(0.5, 0.5, 0.5))
STEPS = 4
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def _run(out_dir, dtype, fast, seed=0):
    """Train a fresh tiny ToFe model for STEPS steps -> (model, every array of the final checkpoint)."""
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((16, 1, 8, 8)).astype(dtype), rng.integers(0, 4, 16))
    model = minitofe.new_model(CFG, TCFG, np.random.default_rng(seed), dtype)
    cfg = TrainConfig(steps=STEPS, batch_size=4, checkpoint_every=STEPS, seed=seed, out_dir=str(out_dir), fast=fast)
    train(model, model.backbone_params(), data, None, cfg, progress=False)
    params, opt, _ = load_checkpoint(str(out_dir / "checkpoint.npz"))
    arrays = {**{f"param/{k}": v for k, v in params.items()}, **{f"m/{k}": v for k, v in opt["m"].items()},
              **{f"v/{k}": v for k, v in opt["v"].items()}}
    return model, arrays


def test_same_seed_is_bitwise_identical_on_the_reference_path(tmp_path):
    """Two runs in one process: bit for bit, as they make the same NumPy / BLAS calls on the same arrays.
    A claim for one machine only: another CPU's BLAS kernel may add in another order (see
    ``minitofe.testing.provenance``)."""
    (m1, a1), (m2, a2) = (_run(tmp_path / name, np.float32, fast=False) for name in ("a", "b"))
    assert set(a1) == set(a2) and len(a1) == 3 * len(m1.params)
    assert all(np.array_equal(a1[k], a2[k]) for k in a1)
    assert all(np.array_equal(m1.params[k], m2.params[k]) for k in m1.params)
    start = minitofe.new_model(CFG, TCFG, np.random.default_rng(0), np.float32).params
    assert not all(np.array_equal(start[k], m1.params[k]) for k in start)      # training did move them
    _, other = _run(tmp_path / "c", np.float32, fast=False, seed=1)
    assert not all(np.array_equal(a1[k], other[k]) for k in a1)               # another seed differs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_path_agrees_with_the_reference_after_training(tmp_path, dtype):
    if not minitofe.kernels.available():        # else fast=True runs the reference: a comparison with itself
        pytest.skip("the fast path needs Numba (not installed, or MINITOFE_NO_NUMBA is set)")
    ref, ref_arrays = _run(tmp_path / "ref", dtype, fast=False)
    fast, fast_arrays = _run(tmp_path / "fast", dtype, fast=True)
    assert ref.learned_keep_ratios == fast.learned_keep_ratios                 # same hard decisions
    for k in ref_arrays:
        np.testing.assert_allclose(fast_arrays[k], ref_arrays[k], err_msg=k, **TOL[dtype])
