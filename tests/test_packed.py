"""The fast path's weights transposed once (``kernels.packed``): only for weights that cannot change."""
import gc

import numpy as np
import pytest

from minitofe.kernels import packed
from minitofe.kernels.packed import freeze, weight_t


def _weight(seed=0, shape=(6, 4)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_writeable_weight_is_read_where_it_is():
    w = _weight()
    wt = weight_t(w)
    assert np.shares_memory(wt, w) and np.array_equal(wt, w.T)
    assert id(w) not in packed._cache


def test_a_frozen_weight_is_transposed_once_into_a_contiguous_read_only_copy():
    w = freeze({"w": _weight()})["w"]
    wt = weight_t(w)
    assert wt.flags.c_contiguous and not wt.flags.writeable and not np.shares_memory(wt, w)
    assert np.array_equal(wt, w.T)
    assert weight_t(w) is wt                                  # kept, not made again


def test_a_read_only_view_of_a_writeable_array_is_not_packed():
    base = _weight()
    view = base[:]
    view.flags.writeable = False
    assert np.shares_memory(weight_t(view), base)
    base[0, 0] = 7.0                                           # the base can still change it
    assert weight_t(view)[0, 0] == 7.0


def test_a_weight_made_writeable_again_is_read_afresh():
    w = freeze({"w": _weight()})["w"]
    weight_t(w)
    w.flags.writeable = True
    w[1, 2] = -3.0
    assert weight_t(w)[2, 1] == -3.0 and id(w) not in packed._cache


def test_the_copy_goes_with_its_weight():
    w = freeze({"w": _weight()})["w"]
    weight_t(w)
    key = id(w)
    del w
    gc.collect()
    assert key not in packed._cache


def test_freeze_marks_views_and_what_they_view_and_leaves_other_values_alone():
    base = _weight()
    params = {"own": _weight(1), "view": base[1:], "scalar": 3}
    freeze(params)
    assert not params["own"].flags.writeable
    assert not params["view"].flags.writeable and not base.flags.writeable
    wt = weight_t(params["view"])
    assert not np.shares_memory(wt, base) and np.array_equal(wt, base[1:].T)
    with pytest.raises(ValueError, match="read-only"):
        base[1, 0] = 5.0                                   # the kept copy cannot go stale


def test_a_loaded_model_s_weights_are_frozen_by_the_cli():
    from minitofe.cli.common import load_for_inference
    model, _, _ = load_for_inference(random_fallback=True)
    assert not any(v.flags.writeable for v in model.params.values())


@pytest.mark.parametrize("method", ["dense", "tofe"])
def test_the_fast_forward_on_frozen_weights_equals_it_on_writeable_ones(method):
    from minitofe import kernels
    from minitofe.config import get_config
    from minitofe.methods import inference, init_params as init_method
    from minitofe.nn.params import init_params
    from minitofe.tofe.config import ToFeConfig
    if not kernels.available():
        pytest.skip("the fast path needs Numba")
    cfg = get_config("deit_tiny_patch16_224")
    rng = np.random.default_rng(0)
    tcfg = ToFeConfig(method=method)
    params = init_params(cfg, rng, np.float32)
    params.update(init_method(cfg, tcfg, rng, np.float32))
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    ops = kernels.ops(True, like=x)
    ratios = None if method == "dense" else (0.5, 0.3, 0.2)
    plain = inference(params, x, cfg, tcfg, keep_ratios=ratios, ops=ops)
    frozen = {k: np.array(v) for k, v in params.items()}
    freeze(frozen)
    out = inference(frozen, x, cfg, tcfg, keep_ratios=ratios, ops=ops)
    assert any(id(v) in packed._cache for v in frozen.values())
    logits = lambda r: r[0] if isinstance(r, tuple) else r                # noqa: E731
    np.testing.assert_allclose(logits(out), logits(plain), rtol=1e-4, atol=1e-4)
