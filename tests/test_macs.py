"""The MACs function (docs/method.md "MACs"): published DeiT figures, a hand-computed example, the exact
derivative, and an independent count of the matmuls the code actually runs."""
import numpy as np
import pytest

from minitofe.config import ViTConfig, get_config
from minitofe.gradcheck import numerical_grad, rel_error
from minitofe.nn.block import block_forward
from minitofe.nn.params import init_params
from minitofe.nn.vit import vit_forward
from minitofe.tofe.approximator import approximator_forward
from minitofe.tofe.config import ToFeConfig
from minitofe.tofe.macs import (approximator_macs, block_macs, cls_attention_macs, dense_macs, selector_macs,
                                tofe_macs)
from minitofe.methods import init_params as init_tofe_params
from minitofe.methods.cls_attention import cls_attention_scores
from minitofe.tofe.selector import selector_forward

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=3, num_classes=5, embed_dim=8, depth=6, num_heads=2)


class MacCounter(np.ndarray):
    """An ndarray that counts the multiply-accumulates of every matmul it takes part in."""
    macs = 0

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        plain = lambda a: a.view(np.ndarray) if isinstance(a, MacCounter) else a
        args = [plain(a) for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(plain(o) for o in out)
        if ufunc is np.matmul and method == "__call__":
            a, b = (np.asarray(v) for v in args[:2])
            a2 = a if a.ndim > 1 else a[None]
            b2 = b if b.ndim > 1 else b[:, None]
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
            MacCounter.macs += int(np.prod(batch)) * a2.shape[-2] * a2.shape[-1] * b2.shape[-1]
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return result.view(MacCounter) if isinstance(result, np.ndarray) else result


def counted(fn, *arrays_and_params):
    MacCounter.macs = 0
    fn(*[{k: v.view(MacCounter) for k, v in a.items()} if isinstance(a, dict) else a.view(MacCounter)
         for a in arrays_and_params])
    return MacCounter.macs


def test_published_deit_figures():
    # DeiT reports these as "FLOPs"; they are multiply-accumulates.
    assert round(dense_macs(get_config("deit_tiny_patch16_224")) / 1e9, 1) == 1.3
    assert round(dense_macs(get_config("deit_small_patch16_224")) / 1e9, 1) == 4.6
    assert round(dense_macs(get_config("deit_base_patch16_224")) / 1e9, 1) == 17.6


@pytest.mark.parametrize("distilled", [False, True])
def test_counts_match_the_matmuls_the_code_runs(distilled):
    cfg = CFG.replace(distilled=distilled)
    rng = np.random.default_rng(0)
    B, C, N = 2, cfg.embed_dim, cfg.num_tokens
    params = init_params(cfg, rng)
    images = rng.standard_normal((B, 3, 8, 8))
    assert counted(lambda p, x: vit_forward(p, x, cfg), params, images) == B * dense_macs(cfg)
    x = rng.standard_normal((B, 3, C))                  # a block on n = 3 gathered tokens
    assert counted(lambda p, x: block_forward(x, p, "blocks.0.", 2), params, x) == B * block_macs(3, C, 4.0)
    tparams = init_tofe_params(cfg, ToFeConfig(), rng)
    x = rng.standard_normal((B, N, C))
    assert counted(lambda p, x: selector_forward(x, p, "tofe.selector.0.", 1), tparams, x) == \
        B * selector_macs(N, C)
    rows = rng.standard_normal((7, C))                  # approximator on M = 7 gathered frozen rows
    assert counted(lambda p, x: approximator_forward(x, p, "tofe.approx.0."), tparams, rows) == \
        approximator_macs(7, C, 4)
    assert selector_macs(N, C) == pytest.approx(0.75 * N * C * C, rel=0.1)
    x = rng.standard_normal((B, N, C))                  # evit / idle scorer, every token a candidate
    assert counted(lambda p, x: cls_attention_scores(x, p, "blocks.0.", cfg), params, x) == \
        B * cls_attention_macs(N, C)


def test_keep_all_equals_dense():
    N = CFG.num_tokens
    macs, _ = tofe_macs(CFG, (1, 3, 5), np.full((3, 3), float(N)), selector=False, approximator=False)
    np.testing.assert_array_equal(macs, np.full(3, dense_macs(CFG)))
    macs, d = tofe_macs(CFG, (2, 4), np.full(2, float(N)), selector=False, approximator=False)
    assert macs.shape == () and d.shape == (2,) and macs == dense_macs(CFG)


def test_hand_computed_example():
    # C = 8, mlp_ratio 4, depth 6, N = 17, stages (1, 4): 1 dense block, 3 on kept[0], 2 on kept[1].
    C, N = 8, 17
    blk = lambda n: 12 * n * C * C + 2 * n * n * C
    sel = N * (8 * 4 + 8 * 2 + 2 * 2)                   # fc1 C->4, fc2 8->2, fc3 2->2
    apx = lambda n: n * (8 * 2 + 2 * 8)                 # r = 4
    patch, head = 16 * 8 * 12, 8 * 5
    want = patch + head + blk(N) + 3 * blk(9) + 2 * blk(5) + 2 * sel + apx(N - 9) + apx(N - 5)
    macs, d = tofe_macs(CFG, (1, 4), np.array([9.0, 5.0]))
    assert macs == want
    np.testing.assert_allclose(d, [3 * (12 * C * C + 4 * 9 * C) - 32, 2 * (12 * C * C + 4 * 5 * C) - 32])
    # DynamicViT-style: stage 1's selector only scores the 9 tokens still alive, no approximator.
    macs, d = tofe_macs(CFG, (1, 4), np.array([9.0, 5.0]), approximator=False, drop=True)
    assert macs == patch + head + blk(N) + 3 * blk(9) + 2 * blk(5) + sel + sel * 9 // N


@pytest.mark.parametrize("drop", [False, True])
def test_derivative_matches_finite_differences(drop):
    rng = np.random.default_rng(1)
    kept = rng.uniform(3.0, CFG.num_tokens, size=(4, 3))
    R = rng.standard_normal(4)
    f = lambda: (tofe_macs(CFG, (1, 3, 5), kept, drop=drop)[0] * R).sum()
    _, d = tofe_macs(CFG, (1, 3, 5), kept, drop=drop)
    assert d.shape == (4, 3)
    assert rel_error(numerical_grad(f, kept, h=1e-3), d * R[:, None]) <= 1e-6


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"kept must be \(B, 2\) or \(2,\)"):
        tofe_macs(CFG, (1, 4), np.ones((2, 3)))
    with pytest.raises(ValueError, match="strictly increasing"):
        tofe_macs(CFG, (4, 1), np.ones(2))
    with pytest.raises(ValueError, match="strictly increasing"):
        tofe_macs(CFG, (1, 6), np.ones(2))


@pytest.mark.parametrize("method", ["tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative", "idle", "evit-drop",
                                    "dense"])
@pytest.mark.parametrize("inference", ["topk", "threshold"])
def test_realised_macs_equal_the_matmuls_reduced_inference_runs(method, inference):
    """The MACs that ``tofe_inference`` reports per image add up to the matmuls it actually executes,
    for every method, with equal counts (topk) and ragged batches (threshold)."""
    from minitofe.methods import inference as tofe_inference
    rng = np.random.default_rng(5)
    tcfg = ToFeConfig(method=method, stages=(1, 3, 4), keep_ratios=(0.75, 0.5, 0.25), inference=inference,
                      threshold=0.5)
    params = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in init_params(CFG, rng).items()}
    if tcfg.learned_selector:
        params.update({k: v + rng.standard_normal(v.shape) for k, v in init_tofe_params(CFG, tcfg, rng).items()})
    images = rng.standard_normal((3, 3, 8, 8))
    result = {}
    macs = counted(lambda p, x: result.update(info=tofe_inference(p, x, CFG, tcfg)[1]), params, images)
    assert macs == int(round(float(np.sum(result["info"]["macs"]))))
    if inference == "threshold" and tcfg.learned_selector:   # the batch really was ragged
        assert any(len(set(k.sum(axis=1).tolist())) > 1 for k in result["info"]["kept"])
