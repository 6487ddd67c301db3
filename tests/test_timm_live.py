"""minitofe against live timm/torch on more configs (skipped when torch or timm is not installed).

- hypothesis-drawn small configs (class token / distilled / avg pooling with and without class token,
  LayerScale or not, qkv bias or not, 1-3 channels, 1-3 heads of size 2-5, patch size 1-3, depth 1-3,
  and the timm options: register tokens, no_embed_class, pre_norm, fc_norm on/off, no final norm,
  head-less, non-square images, LayerNorm eps, gelu_tanh / quick_gelu): logits within 1e-12 and every
  gradient (parameters and images, against torch autograd) within relative error 1e-6, in float64;
- the real-size ``deit_tiny_patch16_224`` forward in float32 on one image, within 1e-4 (its distilled
  twin too, marked slow);
- weights converted by minitofe to a ``.safetensors`` file and loaded by timm's strict
  ``load_state_dict`` unchanged, and a file written by torch read back by minitofe.

The timm models are built and randomised by the same code that wrote the golden fixtures
(``scripts/make_fixtures.py``).
"""
import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from hypothesis import assume, given, settings, strategies as st  # noqa: E402

from minitofe.config import ViTConfig, get_config  # noqa: E402
from minitofe.gradcheck import rel_error  # noqa: E402
from minitofe.io.timm_model import from_timm_model  # noqa: E402
from minitofe.io.weights import (from_timm_state_dict, load_safetensors, save_safetensors,  # noqa: E402
                                 to_timm_state_dict)
from minitofe.nn.vit import vit_backward, vit_forward  # noqa: E402

pytestmark = pytest.mark.torch

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "make_fixtures.py"
_spec = importlib.util.spec_from_file_location("make_fixtures", _SCRIPT)
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)


@st.composite
def small_configs(draw):
    variant = draw(st.sampled_from(["token", "distilled", "avg_cls", "avg_nocls"]))
    num_heads = draw(st.integers(1, 3))
    patch_size = draw(st.sampled_from([1, 2, 3]))
    embed_dim = num_heads * draw(st.sampled_from([2, 3, 4, 5]))
    # LayerNorm over C <= 2 features is degenerate (its output does not depend on its input, so the
    # true gradients are 0 and both sides hold only rounding noise): keep C >= 3.
    assume(embed_dim >= 3)
    extra = {}
    if variant != "distilled":
        extra = dict(reg_tokens=draw(st.integers(0, 2)), no_embed_class=draw(st.booleans()),
                     pre_norm=draw(st.booleans()), fc_norm=draw(st.sampled_from([None, True, False])),
                     final_norm=draw(st.booleans()), pool_include_prefix=draw(st.booleans()))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return ViTConfig(
        img_size=(patch_size * gh, patch_size * gw), patch_size=patch_size,
        in_chans=draw(st.integers(1, 3)), num_classes=draw(st.integers(0, 6)),
        embed_dim=embed_dim, depth=draw(st.integers(1, 3)),
        num_heads=num_heads, mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
        qkv_bias=draw(st.booleans()), init_values=draw(st.sampled_from([None, 0.1, 1.0])),
        class_token=variant != "avg_nocls", global_pool="avg" if variant.startswith("avg") else "token",
        distilled=variant == "distilled", norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
        act_layer=draw(st.sampled_from(["gelu", "gelu_tanh", "quick_gelu"])), **extra)


def timm_model(cfg, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    model = make_fixtures.build_model(cfg.to_dict()).to(dtype)
    return make_fixtures.randomise_(model, gen), gen


@settings(max_examples=25, deadline=None, database=None)
@given(cfg=small_configs(), batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_small_configs_forward_and_grads(cfg, batch, seed):
    model, gen = timm_model(cfg, seed)
    images = torch.randn(batch, cfg.in_chans, *cfg.img_hw, generator=gen, dtype=torch.float64)
    x = images.clone().requires_grad_(True)
    t_logits = model(x)
    R = torch.randn(t_logits.shape, generator=gen, dtype=torch.float64)
    (t_logits * R).sum().backward()

    params, got_cfg = from_timm_model(model)
    assert got_cfg == cfg.replace(init_values=got_cfg.init_values)
    logits, cache = vit_forward(params, images.numpy(), cfg)
    assert np.max(np.abs(logits - t_logits.detach().numpy())) <= 1e-12
    dimages, grads = vit_backward(R.numpy(), cache)
    t_grads = from_timm_state_dict({k: p.grad if p.grad is not None else torch.zeros_like(p)
                                    for k, p in model.named_parameters()}, cfg)
    assert grads.keys() == params.keys() == t_grads.keys()
    errors = {k: rel_error(grads[k], t_grads[k]) for k in params}
    errors["images"] = rel_error(dimages, x.grad.numpy())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{cfg}: {worst} rel_error {errors[worst]:.2e}"


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224",
                                  pytest.param("deit_tiny_distilled_patch16_224", marks=pytest.mark.slow)])
def test_real_size_float32_forward(name):
    cfg = get_config(name)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    make_fixtures.randomise_(model, torch.Generator().manual_seed(0))
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t_logits = model(images).numpy()
    params = from_timm_state_dict(model.state_dict(), cfg)
    assert all(v.dtype == np.float32 for v in params.values())
    logits, _ = vit_forward(params, images.numpy(), cfg)
    assert logits.dtype == np.float32
    assert np.max(np.abs(logits - t_logits)) <= 1e-4


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_distilled_ls", "avg_nocls"])
def test_safetensors_round_trip_loads_into_timm(name, tmp_path):
    """timm -> minitofe -> .safetensors -> timm's own strict ``load_state_dict``, file unchanged; and a
    safetensors file written by torch reads into minitofe with the same logits."""
    from safetensors.torch import load_file, save_file
    if name in make_fixtures.CONFIGS:
        cfg = ViTConfig.from_dict(make_fixtures.CONFIGS[name])
        make = lambda: make_fixtures.build_model(cfg.to_dict())  # noqa: E731
    else:
        cfg = get_config(name)
        make = lambda: timm.create_model(name, pretrained=False).eval()  # noqa: E731
    torch.manual_seed(0)
    source = make_fixtures.randomise_(make(), torch.Generator().manual_seed(2))
    params = from_timm_state_dict(source.state_dict(), cfg)
    path = tmp_path / "minitofe.safetensors"
    save_safetensors(path, params, cfg)

    target = make()                                      # a fresh timm model with other (timm-init) weights
    target.load_state_dict(load_file(path), strict=True)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    assert set(to_timm_state_dict(params, cfg)) == set(source.state_dict())

    images = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(target(images), source(images))
    # the other direction: a file torch wrote, read by minitofe (the forward only on the small configs)
    save_file(source.state_dict(), tmp_path / "timm.safetensors", metadata={"format": "pt"})
    params2, cfg2, _ = load_safetensors(tmp_path / "timm.safetensors", cfg=cfg)
    assert params2.keys() == params.keys() and all(np.array_equal(params2[k], params[k]) for k in params)
    if cfg.img_size > 32:
        return
    logits, _ = vit_forward(params2, images.numpy(), cfg2)
    with torch.no_grad():
        assert np.max(np.abs(logits - source(images).numpy())) <= 1e-4
