"""minitofe against timm without torch: the golden fixtures written by ``scripts/make_fixtures.py``.

Each ``tests/fixtures/<config>_<dtype>.npz`` holds a random-weight timm ViT (state dict in timm's layout),
its inputs, logits (pooled features for a head-less model), intermediate activations, timm's
``forward_features`` and, in float64, the torch-autograd gradients of ``sum(logits * R)`` and of
``sum(forward_features * R_features)`` for every parameter and the images. The configs include the
options beyond DeiT (register tokens, no_embed_class, pre_norm, head-less, non-square images, LayerNorm
eps 1e-5, quick_gelu / gelu_tanh, avg pooling without fc_norm). Tolerances: logits and activations within
1e-12 (float64) / 1e-4 (float32) absolute; every gradient within a norm-wise relative error of 1e-6.
"""
import json
import pathlib

import numpy as np
import pytest

from minitofe.config import ViTConfig
from minitofe.gradcheck import rel_error
from minitofe.io.weights import from_timm_state_dict
from minitofe.nn.block import block_forward, block_options
from minitofe.nn.embed import embed_forward
from minitofe.nn.head import final_norm_forward, forward_head
from minitofe.nn.params import param_shapes
from minitofe.nn.vit import vit_backward, vit_features_backward, vit_forward, vit_forward_features

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.npz"))
NAMES = sorted({p.stem.rsplit("_", 1)[0] for p in FILES})
ATOL = {"float64": 1e-12, "float32": 1e-4}
NEW_OPTIONS = {"dinov2_reg_headless", "clip_prenorm", "gap_reg_nofcnorm"}
GRAD_RTOL = 1e-6
MAX_TOTAL_BYTES = 2 * 1024 * 1024


def load(name, dtype):
    """-> cfg, minitofe params, the raw fixture arrays (dict). The timm state dict is converted by the
    package's converter: the only layout change is the patch-embedding conv weight (C, Cin, p, p) ->
    (C, Cin * p * p), docs/method.md "The backbone"."""
    with np.load(FIXTURES / f"{name}_{dtype}.npz", allow_pickle=False) as f:
        fx = {k: f[k] for k in f.files}
    cfg = ViTConfig.from_dict(json.loads(str(fx["config"])))
    state = {k[len("param/"):]: v for k, v in fx.items() if k.startswith("param/")}
    return cfg, from_timm_state_dict(state, cfg), fx


def test_fixtures_present_and_small():
    assert NAMES, f"no fixtures in {FIXTURES}; run scripts/make_fixtures.py"
    assert NEW_OPTIONS <= set(NAMES)
    for name in NAMES:
        for dtype in ATOL:
            assert (FIXTURES / f"{name}_{dtype}.npz").exists()
    assert sum(p.stat().st_size for p in FILES) < MAX_TOTAL_BYTES


@pytest.mark.parametrize("dtype", list(ATOL))
@pytest.mark.parametrize("name", NAMES)
def test_fixture_layout(name, dtype):
    cfg, params, fx = load(name, dtype)
    assert str(fx["dtype"]) == dtype and int(fx["fixture_version"]) == 2
    assert set(params) == set(param_shapes(cfg))                       # same keys, none missing or extra
    for k, v in params.items():
        assert v.dtype == np.dtype(dtype) and v.shape == param_shapes(cfg)[k], k
    # randomised weights: nothing trivially 0 or 1 (LayerNorm weights/biases, LayerScale, tokens)
    for k, v in params.items():
        assert np.all(v != 0) and np.all(v != 1), k
        if k.endswith(".gamma"):
            assert np.ptp(v) > 0, k


@pytest.mark.parametrize("dtype", list(ATOL))
@pytest.mark.parametrize("name", NAMES)
def test_logits_and_activations(name, dtype):
    cfg, params, fx = load(name, dtype)
    atol = ATOL[dtype]
    images = fx["images"]
    logits, _ = vit_forward(params, images, cfg)
    assert logits.dtype == np.dtype(dtype)
    assert np.max(np.abs(logits - fx["logits"])) <= atol
    # intermediates: tokens entering block 0 (after norm_pre), block 0, final norm, pooled features
    x, _ = embed_forward(images, params, cfg)
    assert np.max(np.abs(x - fx["act/embed"])) <= atol
    x, _ = block_forward(x, params, "blocks.0.", cfg.num_heads, **block_options(cfg))
    assert np.max(np.abs(x - fx["act/block0"])) <= atol
    for i in range(1, cfg.depth):
        x, _ = block_forward(x, params, f"blocks.{i}.", cfg.num_heads, **block_options(cfg))
    features, _ = final_norm_forward(x, params, cfg)
    assert np.max(np.abs(features - fx["act/features"])) <= atol
    assert np.max(np.abs(vit_forward_features(params, images, cfg)[0] - fx["act/features"])) <= atol
    pooled, _ = forward_head(features, params, cfg, pre_logits=True)
    assert np.max(np.abs(pooled - fx["act/pre_logits"])) <= atol
    assert np.max(np.abs(vit_forward(params, images, cfg, pre_logits=True)[0] - fx["act/pre_logits"])) <= atol


def _check_grads(params, cfg, fx, dimages, grads, prefix):
    assert grads.keys() == params.keys()
    for k in params:
        assert grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype, k
        assert np.all(np.isfinite(grads[k])), k
    torch_grads = from_timm_state_dict({k[len(prefix):]: v for k, v in fx.items()
                                        if k.startswith(prefix) and k != prefix + "images"}, cfg)
    assert torch_grads.keys() == params.keys()
    errors = {k: rel_error(grads[k], torch_grads[k]) for k in params}
    errors["images"] = rel_error(dimages, fx[prefix + "images"])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_RTOL, f"{worst}: rel_error {errors[worst]:.2e}"


@pytest.mark.parametrize("output", ["logits", "features"])
@pytest.mark.parametrize("name", NAMES)
def test_grads_match_torch_autograd(name, output):
    """vit_backward for sum(logits * R), vit_features_backward for sum(forward_features * R_features)."""
    cfg, params, fx = load(name, "float64")
    if output == "logits":
        _, cache = vit_forward(params, fx["images"], cfg)
        dimages, grads = vit_backward(fx["R"], cache)
    else:
        _, cache = vit_forward_features(params, fx["images"], cfg)
        dimages, grads = vit_features_backward(fx["R_features"], cache)
    _check_grads(params, cfg, fx, dimages, grads, "grad/" if output == "logits" else "grad_features/")
