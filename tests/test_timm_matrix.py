"""Every timm ViT either runs exactly or is refused (skipped when torch or timm is not installed).

``scripts/timm_matrix.py`` runs timm's registered ViT architectures (``vit_*``, ``deit*``, ``deit3_*``,
``*_dinov2``, ``*_reg4_*``, ``*_clip_*``, ``*_gap_*``, ``flexivit_*``, ...) and the ``VisionTransformer``
constructor options at reduced depth, float64, random weights, through the live module and a saved
``.safetensors`` file: each must give timm's output and ``forward_features`` within 1e-12, or be
refused with an error; none may load and differ. A curated subset runs by default, the whole matrix with
``-m slow``. Then the DINOv2-style backbone at full depth: ViT-S/14, LayerScale, 4 register tokens, no
classifier, against timm's ``forward_features`` and its autograd gradients.
"""
import importlib.util
import pathlib
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from minitofe.gradcheck import rel_error  # noqa: E402
from minitofe.io import from_timm_model, from_timm_state_dict, load_weights  # noqa: E402
from minitofe.nn.vit import vit_features_backward, vit_forward, vit_forward_features  # noqa: E402

pytestmark = pytest.mark.torch

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "timm_matrix.py"
_spec = importlib.util.spec_from_file_location("timm_matrix", _SCRIPT)
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

# case -> None (must be equal) or the regex its refusal must match, through both entry points
CURATED = {
    "deit_tiny_patch16_224": None, "deit_tiny_distilled_patch16_224": None, "deit3_small_patch16_224": None,
    "vit_small_patch14_reg4_dinov2": None, "flexivit_small": None, "vit_medium_patch16_reg4_gap_256": None,
    "vit_base_patch16_clip_quickgelu_224": None, "vit_little_patch16_reg1_gap_256": None,
    "vit_base_patch16_rpn_224": r"block class ResPostBlock", "vit_base_patch16_siglip_224": r"'map'|attn_pool",
    "opt:reg_tokens=4 + no_embed_class (DINOv2-reg)": None, "opt:CLIP: pre_norm, eps 1e-5, quick_gelu": None,
    "opt:avg, fc_norm=False (gap)": None, "opt:token, fc_norm=True": None, "opt:avg, pool_include_prefix": None,
    "opt:num_classes=0, avg": None, "opt:act_layer=gelu_tanh": None,
    "opt:block_fn=ResPostBlock (post-norm)": r"block class ResPostBlock", "opt:global_pool=max": r"'max'",
    "opt:qk_norm": r"qk_norm", "opt:norm_layer=RmsNorm": r"RmsNorm",
}


def _check(case, folder, expect="any"):
    results = matrix.run_case(case, folder)
    if "build" in results:
        pytest.skip(results["build"][1])
    for entry, (result, detail) in results.items():
        assert result != "WRONG", f"{case} ({entry}): loaded and differs from timm: {detail}"
        if expect is None:
            assert result == "equal", f"{case} ({entry}): {detail}"
        elif expect != "any":
            assert result == "refused" and re.search(expect, detail), f"{case} ({entry}): {result} {detail}"
    assert results["live"][0] == results["file"][0], f"{case}: live {results['live']}, file {results['file']}"


@pytest.mark.parametrize("case", sorted(CURATED))
def test_curated_cases(case, tmp_path):
    _check(case, tmp_path, CURATED[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", matrix.registered() + [f"opt:{o}" for o in matrix.OPTIONS])
def test_whole_matrix(case, tmp_path):
    _check(case, tmp_path)


def _dinov2(img_size, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=img_size)
    return matrix.make_fixtures.randomise_(model.double().eval(), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("img_size", [224, pytest.param(518, marks=pytest.mark.slow)])
def test_dinov2_style_vit_s14_reg4_headless_forward_features(img_size, tmp_path):
    """DINOv2-style ViT-S/14: LayerScale, 4 register tokens (prefix tokens), pos_embed on the patches only,
    no classifier. Live module and a saved file give timm's forward_features and pooled output within
    1e-12 (float64), and forward_features' hand-written backward matches torch autograd."""
    from safetensors.torch import save_file
    model = _dinov2(img_size)
    params, cfg = from_timm_model(model)
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == (14, 384, 12, 6)
    assert cfg.reg_tokens == 4 and cfg.no_embed_class and cfg.init_values is not None and cfg.num_classes == 0
    assert cfg.num_prefix_tokens == 5 and cfg.num_tokens == 5 + (img_size // 14) ** 2
    save_file(model.state_dict(), str(tmp_path / "dinov2.safetensors"), metadata={"format": "pt"})
    from_file, file_cfg, _ = load_weights(tmp_path / "dinov2.safetensors", model="vit_small_patch14_reg4_dinov2",
                                          img_size=img_size)
    assert file_cfg == cfg
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        t_features, t_pooled = model.forward_features(x).numpy(), model(x).numpy()
    for p in (params, from_file):
        features, cache = vit_forward_features(p, x.numpy(), cfg)
        assert np.max(np.abs(features - t_features)) <= 1e-12
        assert np.max(np.abs(vit_forward(p, x.numpy(), cfg)[0] - t_pooled)) <= 1e-12
    if img_size != 224:
        return
    R = torch.randn(t_features.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (model.forward_features(xg) * R).sum().backward()
    dimages, grads = vit_features_backward(R.numpy(), cache)
    t_grads = from_timm_state_dict({k: p.grad for k, p in model.named_parameters()}, cfg)
    errors = {k: rel_error(grads[k], t_grads[k]) for k in params}
    errors["images"] = rel_error(dimages, xg.grad.numpy())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, f"{worst}: {errors[worst]:.1e}"
