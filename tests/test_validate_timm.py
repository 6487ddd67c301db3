"""A ToFe built on timm's ``VisionTransformer``, written here as a validator would write theirs (from
docs/method.md and the bundle's conventions, nothing of minitofe's code), checked against a golden bundle
through ``minitofe.validate.torch.capture`` with the 6-line ``adapter`` below: it passes in float64, a
planted bug is localised to the tensor it touches first, the bundle's parameters have the shapes of
timm's state dict, and ``tests/fixtures/validate/timm_*.safetensors`` are what it writes today.
Skipped without torch and timm; the default run checks those saved files (tests/test_golden.py)."""
import pathlib
from types import SimpleNamespace

import pytest

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer
except ImportError:                                # classes still defined, the tests skipped
    torch = VisionTransformer = None
    Attention, nn = object, SimpleNamespace(Module=object)

from minitofe.validate import example_golden, read_bundle, record

pytestmark = [pytest.mark.torch, pytest.mark.skipif(VisionTransformer is None, reason="needs torch and timm")]
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "validate"
BUGS = {"approx_on_output": "the approximator applied to the stage's block output, not to its input"}


# ---------------------------------------------------------------- the validator's ToFe on timm
class KeepMaskAttention(Attention):
    """timm's attention with ToFe's mask: a query attends to the kept keys and to itself."""
    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = torch.softmax(q @ k.transpose(-2, -1) * self.scale, -1)             # (B, H, N, N)
        if attn_mask is not None:                                                 # (B, N), 1 keep
            eye = torch.eye(N, dtype=x.dtype)
            allowed = attn_mask[:, None, None, :] * (1 - eye) + eye
            p = allowed * p / (allowed * p).sum(-1, keepdim=True)
        return self.proj((p @ v).transpose(1, 2).reshape(B, N, C))


class Selector(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.norm, self.fc1 = nn.LayerNorm(C, eps=1e-6), nn.Linear(C, C // 2)
        self.fc2, self.fc3 = nn.Linear(2 * (C // 2), C // 4), nn.Linear(C // 4, 2)

    def forward(self, x, T=1):
        u = F.gelu(self.fc1(self.norm(x)))
        g = u[:, T:].mean(1, keepdim=True).expand_as(u)
        return self.fc3(F.gelu(self.fc2(torch.cat([u, g], -1))))[:, T:]


class Approximator(nn.Module):
    def __init__(self, C, r):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(C, eps=1e-6), nn.Linear(C, C // r), nn.Linear(C // r, C)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TimmToFe(VisionTransformer if VisionTransformer else object):
    def __init__(self, cfg, hp, bug=None):
        super().__init__(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                         num_classes=cfg["num_classes"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                         num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], attn_layer=KeepMaskAttention)
        C, S = cfg["embed_dim"], len(hp["stages"])
        self.cfg, self.hp, self.bug = cfg, hp, bug
        self.tofe = nn.ModuleDict({"selector": nn.ModuleList(Selector(C) for _ in range(S)),
                                   "approx": nn.ModuleList(Approximator(C, hp["approx_reduction"]) for _ in range(S))})


def tofe_loss(model, images, labels, noise, teacher_tokens, teacher_logits, **_):
    hp, blocks = model.hp, model.blocks
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    ends = hp["stages"][1:] + [len(blocks)]
    for blk in blocks[:hp["stages"][0]]:
        x = blk(x)
    kept, err = [], 0.0
    for s, (lo, hi) in enumerate(zip(hp["stages"], ends)):
        y = torch.softmax((model.tofe["selector"][s](x) + noise[s]) / hp["tau"], -1)
        keep = (F.one_hot(y.argmax(-1), 2).to(x.dtype) + y - y.detach())[..., 0]
        m = record(f"stage.{s}.mask", torch.cat([torch.ones_like(keep[:, :1]), keep], 1))
        h = x
        for blk in blocks[lo:hi]:
            h = blk(h, attn_mask=m)
        a = model.tofe["approx"][s](h if model.bug == "approx_on_output" else x)
        frozen = (1 - keep).detach()[..., None]
        err = err + (frozen * (a - teacher_tokens[s])[:, 1:] ** 2).sum() / (x.shape[-1] * frozen.sum().clamp(min=1))
        x = record(f"stage.{s}.out", m[..., None] * h + (1 - m[..., None]) * a)
        kept.append(m.sum(1))
    z = record("logits", model.forward_head(model.norm(x)))
    return _losses(model, z, labels, teacher_logits, err, torch.stack(kept, 1))


def _macs(cfg, hp, kept):
    C, N, mr, r, P = cfg["embed_dim"], cfg["num_tokens"], cfg["mlp_ratio"], hp["approx_reduction"], cfg["num_patches"]
    block = lambda n: (4 + 2 * mr) * n * C * C + 2 * n * n * C                # noqa: E731
    fixed = P * C * cfg["in_chans"] * cfg["patch_size"] ** 2 + C * cfg["num_classes"]
    if kept is None:
        return fixed + cfg["depth"] * block(N)
    ends = hp["stages"][1:] + [cfg["depth"]]
    return fixed + hp["stages"][0] * block(N) + sum(
        (e - s0) * block(kept[:, s]) + N * C * (C // 2) + N * C * (C // 4) + N * (C // 4) * 2
        + 2 * (N - kept[:, s]) * C * (C // r) for s, (s0, e) in enumerate(zip(hp["stages"], ends)))


def _losses(model, z, labels, t_logits, err, kept):
    hp, cfg = model.hp, model.cfg
    cls = record("loss.cls", F.cross_entropy(z, labels))
    kd = record("loss.kd", F.kl_div(F.log_softmax(z, -1), F.log_softmax(t_logits, -1), log_target=True,
                                    reduction="batchmean"))
    record("loss.approx", err)
    ratio = record("macs_ratio", _macs(cfg, hp, kept) / _macs(cfg, hp, None))
    flops = record("loss.flops", hp["lam"] * (ratio.mean() - hp["target_ratio"]) ** 2)
    return cls + hp["alpha"] * kd + hp["beta"] * err + flops


# ---------------------------------------------------------------- the adapter: 6 lines
def adapter(bundle, out=None, bug=None):
    from minitofe.validate.torch import capture
    b = read_bundle(bundle)
    model = TimmToFe(b.meta["config"], b.meta["tofe"], bug)
    names = {"tofe.selector.{s}": "stage.{s}.selector_logits", "tofe.approx.{s}": "stage.{s}.approx"}
    return capture(b, model, lambda x: tofe_loss(model, **x), names, out=out)
# ---------------------------------------------------------------- end of the adapter


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return example_golden(tmp_path_factory.mktemp("golden") / "golden.safetensors")


def test_the_timm_tofe_passes_on_every_tensor(golden):
    from minitofe.validate import compare
    report = compare(golden, adapter(golden))
    assert report["passed"] and report["class"] == "float64" and not report["not_given"], report["first_divergence"]


def test_a_planted_bug_is_localised(golden):
    from minitofe.validate import compare
    report = compare(golden, adapter(golden, bug="approx_on_output"))
    assert not report["passed"] and report["first_divergence"]["name"] == "stage.0.approx"


def test_every_bundle_parameter_has_the_shape_of_timms_state_dict(golden):
    b = read_bundle(golden)
    model = TimmToFe(b.meta["config"], b.meta["tofe"])
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = {e.name[len("param."):]: b.arrays[e.name].shape for e in b.of_role("param")}
    assert params == state


def test_the_adapter_is_at_most_fifteen_lines():
    import inspect
    assert len(inspect.getsource(adapter).rstrip().splitlines()) <= 15


@pytest.mark.parametrize("variant", ["ok", *BUGS])
def test_saved_outputs_are_current(golden, variant):
    from safetensors.numpy import load_file
    import numpy as np
    saved = load_file(str(FIXTURES / f"timm_{variant}.safetensors"))
    live = adapter(golden, bug=None if variant == "ok" else variant)
    assert saved.keys() == live.keys()
    stale = [k for k in live if not np.allclose(saved[k], live[k], rtol=1e-12, atol=1e-15)]
    assert not stale, f"run scripts/make_validate_fixtures.py: {stale[:3]}"
