"""minitofe against timm without torch: the golden fixtures written by ``scripts/make_fixtures.py``.

Each ``tests/fixtures/<config>_<dtype>.npz`` holds a random-weight timm ViT (state dict in timm's layout),
its inputs, logits, intermediate activations and, in float64, the torch-autograd gradient of
``sum(logits * R)`` for every parameter and the images. Tolerances: logits within 1e-10 (float64) /
1e-4 (float32) absolute; every gradient within a norm-wise relative error of 1e-6 (float64).
"""
import json
import pathlib

import numpy as np
import pytest

from minitofe.config import ViTConfig
from minitofe.gradcheck import rel_error
from minitofe.io.weights import from_timm_state_dict
from minitofe.nn.block import block_forward
from minitofe.nn.embed import embed_forward
from minitofe.nn.layers import layernorm_forward
from minitofe.nn.params import param_shapes
from minitofe.nn.vit import vit_backward, vit_forward

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.npz"))
NAMES = sorted({p.stem.rsplit("_", 1)[0] for p in FILES})
ATOL = {"float64": 1e-10, "float32": 1e-4}
GRAD_RTOL = 1e-6
MAX_TOTAL_BYTES = 2 * 1024 * 1024


def load(name, dtype):
    """-> cfg, minitofe params, the raw fixture arrays (dict). The timm state dict is converted by the
    package's converter: the only layout change is the patch-embedding conv weight (C, Cin, p, p) ->
    (C, Cin * p * p), DESIGN.md "Backbone"."""
    with np.load(FIXTURES / f"{name}_{dtype}.npz", allow_pickle=False) as f:
        fx = {k: f[k] for k in f.files}
    cfg = ViTConfig.from_dict(json.loads(str(fx["config"])))
    state = {k[len("param/"):]: v for k, v in fx.items() if k.startswith("param/")}
    return cfg, from_timm_state_dict(state, cfg), fx


def test_fixtures_present_and_small():
    assert NAMES, f"no fixtures in {FIXTURES}; run scripts/make_fixtures.py"
    for name in NAMES:
        for dtype in ATOL:
            assert (FIXTURES / f"{name}_{dtype}.npz").exists()
    assert sum(p.stat().st_size for p in FILES) < MAX_TOTAL_BYTES


@pytest.mark.parametrize("dtype", list(ATOL))
@pytest.mark.parametrize("name", NAMES)
def test_fixture_layout(name, dtype):
    cfg, params, fx = load(name, dtype)
    assert str(fx["dtype"]) == dtype and int(fx["fixture_version"]) == 1
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
    # intermediates: tokens after embedding + pos_embed, block 0, final norm / pooled features
    x, _ = embed_forward(images, params, cfg)
    assert np.max(np.abs(x - fx["act/embed"])) <= atol
    x, _ = block_forward(x, params, "blocks.0.", cfg.num_heads)
    assert np.max(np.abs(x - fx["act/block0"])) <= atol
    for i in range(1, cfg.depth):
        x, _ = block_forward(x, params, f"blocks.{i}.", cfg.num_heads)
    if cfg.global_pool == "avg":                       # timm: no `norm`; mean of patches, then fc_norm
        features = x
        pooled, _ = layernorm_forward(x[:, cfg.num_prefix_tokens:].mean(axis=1),
                                      params["fc_norm.weight"], params["fc_norm.bias"])
    else:
        features, _ = layernorm_forward(x, params["norm.weight"], params["norm.bias"])
        pooled = features[:, :1 + cfg.distilled].mean(axis=1)    # distilled: (cls + dist) / 2, timm's
    assert np.max(np.abs(features - fx["act/features"])) <= atol
    assert np.max(np.abs(pooled - fx["act/pre_logits"])) <= atol


@pytest.mark.parametrize("name", NAMES)
def test_grads_match_torch_autograd(name):
    cfg, params, fx = load(name, "float64")
    logits, cache = vit_forward(params, fx["images"], cfg)
    dimages, grads = vit_backward(fx["R"], cache)
    assert grads.keys() == params.keys()
    for k in params:
        assert grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype, k
        assert np.all(np.isfinite(grads[k])), k
    torch_grads = from_timm_state_dict({k[len("grad/"):]: v for k, v in fx.items()
                             if k.startswith("grad/") and k != "grad/images"}, cfg)
    assert torch_grads.keys() == params.keys()
    errors = {k: rel_error(grads[k], torch_grads[k]) for k in params}
    errors["images"] = rel_error(dimages, fx["grad/images"])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_RTOL, f"{worst}: rel_error {errors[worst]:.2e}"
