"""Weight conversion and weight files (minitofe.io): timm layout <-> params, .npz, .safetensors, .pth.
(Which config a timm file or model is, and ToFe models in .safetensors: ``test_io_timm.py``.)

The default run needs no torch: torch's loader is exercised with a stand-in module, and the tests against
real torch / timm skip cleanly when those are not installed.
"""
import json
import os
import sys
import types

import numpy as np
import pytest
import safetensors.numpy as stnp

from minitofe.config import ViTConfig
from minitofe.io import timm as T
from minitofe.io import weights as W
from minitofe.io.timm_model import from_timm_model
from minitofe.nn.params import init_params, param_shapes

CONFIGS = {
    "token": ViTConfig(img_size=8, patch_size=2, in_chans=3, num_classes=5, embed_dim=12, depth=2,
                       num_heads=3),
    "distilled_ls": ViTConfig(img_size=6, patch_size=3, in_chans=2, num_classes=4, embed_dim=8, depth=3,
                              num_heads=2, mlp_ratio=2.0, init_values=0.1, distilled=True),
    "avg_nocls": ViTConfig(img_size=4, patch_size=1, in_chans=1, num_classes=3, embed_dim=8, depth=1,
                           num_heads=2, mlp_ratio=3.0, qkv_bias=False, class_token=False,
                           global_pool="avg"),
}
CFG = CONFIGS["token"]


def stated(cfg=CFG):
    """What a timm file does not record about ``cfg``: the statement its loader needs."""
    return dict(num_heads=cfg.num_heads, img_size=cfg.img_size, global_pool=cfg.global_pool)


def make_params(cfg=CFG, dtype=np.float32, seed=0):
    return init_params(cfg, np.random.default_rng(seed), dtype)


def timm_state(cfg=CFG, dtype=np.float32):
    return T.to_timm_state_dict(make_params(cfg, dtype), cfg)


def write_timm_file(path, state, metadata=None):
    stnp.save_file(state, str(path), metadata={"format": "pt"} if metadata is None else metadata)
    return path


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


# ---- timm layout <-> params ----

@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_timm_layout_round_trip(name, dtype):
    cfg = CONFIGS[name]
    params = make_params(cfg, dtype)
    state = T.to_timm_state_dict(params, cfg)
    assert state["patch_embed.proj.weight"].shape == (cfg.embed_dim, cfg.in_chans, cfg.patch_size,
                                                      cfg.patch_size)
    back = T.from_timm_state_dict(state, cfg)
    assert_same(back, params)
    for k, v in back.items():
        assert v.flags.c_contiguous and not np.shares_memory(v, state[k]), k


def test_patch_reshape_is_c_order():
    state = timm_state()
    w = state["patch_embed.proj.weight"]
    flat = T.from_timm_state_dict(state, CFG)["patch_embed.proj.weight"]
    assert flat[5, 7] == w[5].reshape(-1)[7]                     # (Cin, p, p) flattened row-major
    c, i, j = np.unravel_index(7, w.shape[1:])
    assert flat[5, 7] == w[5, c, i, j]


def test_from_timm_never_casts():
    state = timm_state(dtype=np.float32)
    assert {v.dtype for v in T.from_timm_state_dict(state, CFG).values()} == {np.dtype(np.float32)}
    state["head.bias"] = state["head.bias"].astype(np.float64)
    with pytest.raises(TypeError, match="mix dtypes"):
        T.from_timm_state_dict(state, CFG)
    half = {k: v.astype(np.float16) for k, v in timm_state().items()}
    with pytest.raises(TypeError, match="float16"):
        T.from_timm_state_dict(half, CFG)
    cast = T.from_timm_state_dict(half, CFG, dtype=np.float32)   # only when asked
    assert cast["head.weight"].dtype == np.float32


def test_tofe_keys_are_not_exported_to_timm():
    params = make_params()
    params["tofe.approx.0.fc1.weight"] = np.zeros((3, 12), np.float32)
    assert set(T.to_timm_state_dict(params, CFG)) == set(param_shapes(CFG))


@pytest.mark.parametrize("change, pattern", [
    (lambda s: s.pop("blocks.1.mlp.fc2.bias"), r"missing keys \['blocks.1.mlp.fc2.bias'\]"),
    (lambda s: s.update(extra=np.zeros(2, np.float32)), r"unexpected keys \['extra'\]"),
    (lambda s: s.update({"head.bias": np.zeros(6, np.float32)}), r"head.bias: expected \(5,\), got \(6,\)"),
    (lambda s: s.update({"pos_embed": np.zeros((17, 12), np.float32)}), r"pos_embed: expected \(1, 17, 12\)"),
    (lambda s: s.update({"patch_embed.proj.weight": np.zeros((12, 12), np.float32)}),
     r"patch_embed.proj.weight: expected timm's conv shape \(12, 3, 2, 2\), got \(12, 12\)"),
])
def test_bad_state_dicts_name_the_key(change, pattern):
    state = timm_state()
    change(state)
    with pytest.raises(ValueError, match=pattern):
        T.from_timm_state_dict(state, CFG)


def test_bad_values_raise_type_error():
    with pytest.raises(TypeError, match="head.bias"):
        T.from_timm_state_dict({**timm_state(), "head.bias": [0.0] * 5}, CFG)
    with pytest.raises(TypeError, match="mapping"):
        T.from_timm_state_dict([1, 2], CFG)


# ---- minitofe .npz ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npz_round_trip(tmp_path, dtype):
    cfg = CONFIGS["distilled_ls"]
    params = make_params(cfg, dtype)
    params["tofe.selector.0.fc3.bias"] = np.arange(2, dtype=dtype)
    meta = {"step": 3, "keep_ratios": [0.5, 0.25], "note": "ü"}
    W.save_npz(tmp_path / "w.npz", params, cfg, meta)
    got, got_cfg, got_meta = W.load_npz(tmp_path / "w.npz")
    assert_same(got, params)
    assert got_cfg == cfg and got_meta == meta
    W.save_npz(tmp_path / "again.npz", got, got_cfg, got_meta)
    assert (tmp_path / "w.npz").read_bytes() == (tmp_path / "again.npz").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["again.npz", "w.npz"]            # no temp files left


def test_npz_cast_only_when_asked(tmp_path):
    W.save_npz(tmp_path / "w.npz", make_params(dtype=np.float32), CFG)
    assert W.load_npz(tmp_path / "w.npz")[0]["head.weight"].dtype == np.float32
    assert W.load_npz(tmp_path / "w.npz", dtype="float64")[0]["head.weight"].dtype == np.float64
    with pytest.raises(ValueError, match="float16"):
        W.load_npz(tmp_path / "w.npz", dtype="float16")


def test_npz_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"head.bias": np.array([{"a": 1}], dtype=object)}, __config__=np.array("{}"))
    with pytest.raises(ValueError, match="evil.npz"):
        W.load_npz(path)


def test_npz_config_must_match_weights(tmp_path):
    path = tmp_path / "w.npz"
    W.save_npz(path, make_params(), CFG)
    arrays = dict(np.load(path))
    arrays["__config__"] = np.array(arrays["__config__"].item().replace('"num_classes": 5', '"num_classes": 6'))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"w.npz: .*head.weight: expected \(6, 12\), got \(5, 12\)"):
        W.load_npz(path)


@pytest.mark.parametrize("edit, pattern", [
    (lambda a: a.pop("__config__"), "no '__config__' entry"),
    (lambda a: a.update(__config__=np.array("{not json")), "'__config__' is not valid JSON"),
    (lambda a: a.update(__config__=np.array('{"depth": 2, "wings": 3}')), r"unknown field\(s\) \['wings'\]"),
    (lambda a: a.update(__meta__=np.array([1, 2])), "'__meta__' must be a 0-d unicode array"),
    (lambda a: a.update({"blocks.0.ls1.gamma": np.ones(12, np.float32)}), "unexpected keys"),
])
def test_npz_bad_entries(tmp_path, edit, pattern):
    path = tmp_path / "w.npz"
    W.save_npz(path, make_params(), CFG)
    arrays = dict(np.load(path))
    edit(arrays)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=pattern) as info:
        W.load_npz(path)
    assert str(path) in str(info.value)


def test_save_npz_checks_its_inputs(tmp_path):
    params = make_params()
    with pytest.raises(TypeError, match="JSON"):
        W.save_npz(tmp_path / "w.npz", params, CFG, meta={"bad": object()})
    params.pop("head.bias")
    with pytest.raises(ValueError, match="head.bias"):
        W.save_npz(tmp_path / "w.npz", params, CFG)
    with pytest.raises(ValueError, match="does not exist"):
        W.save_npz(tmp_path / "no" / "w.npz", make_params(), CFG)
    assert os.listdir(tmp_path) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        W.atomic_write(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.npz"]


# ---- timm safetensors ----

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_safetensors_round_trip(tmp_path, name):
    """timm file -> minitofe (with the statement) -> .safetensors: the same tensors, bytes for bytes,
    plus minitofe's config in the metadata, so the file reads back with nothing to state."""
    cfg = CONFIGS[name]
    src = write_timm_file(tmp_path / "model.safetensors", timm_state(cfg))
    params, got_cfg, metadata = W.load_safetensors(src, **stated(cfg))
    assert metadata == {"format": "pt"}
    assert_same(params, make_params(cfg))
    written = W.save_safetensors(tmp_path / "back.safetensors", params, got_cfg, metadata)
    assert written == list(timm_state(cfg))
    again, theirs = stnp.load_file(str(tmp_path / "back.safetensors")), stnp.load_file(str(src))
    assert list(again) == list(theirs) or set(again) == set(theirs)
    assert_same({k: again[k] for k in theirs}, theirs)
    params2, cfg2, meta2 = W.load_weights(tmp_path / "back.safetensors")
    assert cfg2 == got_cfg and meta2 == {"format": "pt"}
    assert_same(params2, params)


def test_round_trip_through_npz(tmp_path):
    src = write_timm_file(tmp_path / "model.safetensors", timm_state(CFG, np.float64))
    W.convert(src, tmp_path / "w.npz", **stated())
    assert W.load_npz(tmp_path / "w.npz")[2] == {"format": "pt"}
    W.convert(tmp_path / "w.npz", tmp_path / "back.safetensors")
    assert_same(stnp.load_file(str(tmp_path / "back.safetensors")), stnp.load_file(str(src)))


def test_save_safetensors_metadata_and_checks(tmp_path):
    from safetensors import safe_open
    params = make_params()
    W.save_safetensors(tmp_path / "m.safetensors", params, CFG)
    with safe_open(str(tmp_path / "m.safetensors"), framework="np") as f:
        metadata = f.metadata()
        assert set(f.keys()) == set(param_shapes(CFG))
    assert metadata["format"] == "pt" and metadata["minitofe.num_heads"] == str(CFG.num_heads)
    assert ViTConfig.from_dict(json.loads(metadata["minitofe.config"])) == CFG
    params2, cfg2, _ = W.load_weights(tmp_path / "m.safetensors")      # nothing to state: config stored
    assert cfg2 == CFG
    with pytest.raises(TypeError, match="str -> str"):
        W.save_safetensors(tmp_path / "m.safetensors", params, CFG, metadata={"epoch": 3})
    with pytest.raises(ValueError, match=r"m.safetensors: the file's config has num_heads=3, asked for 4"):
        W.load_weights(tmp_path / "m.safetensors", num_heads=4)
    with pytest.raises(ValueError, match=r"the file's config has global_pool='token', asked for 'avg'"):
        W.load_weights(tmp_path / "m.safetensors", global_pool="avg")


def test_files_minitofe_wrote_before_configs_were_stored(tmp_path):
    """Older minitofe .safetensors carry the head count only; minitofe could then write square images
    and 'token'+norm or 'avg'+fc_norm only, so the keys settle the rest."""
    for cfg in CONFIGS.values():
        path = write_timm_file(tmp_path / "old.safetensors", timm_state(cfg),
                               {"format": "pt", "minitofe.num_heads": str(cfg.num_heads)})
        got = W.load_weights(path)[1]
        assert got == (cfg if cfg.init_values is None else cfg.replace(init_values=got.init_values))


def test_meta_round_trips_through_safetensors(tmp_path):
    W.save_weights(tmp_path / "m.safetensors", make_params(), CFG, meta={"format": "pt", "epoch": 3})
    assert W.load_weights(tmp_path / "m.safetensors")[2] == {"format": "pt", "epoch": 3}


@pytest.mark.parametrize("change, pattern", [
    (lambda s: s.pop("blocks.0.attn.proj.weight"), r"missing keys \['blocks.0.attn.proj.weight'\]"),
    (lambda s: s.update({"reg_token": np.zeros((1, 4, 12), np.float32)}), r"pos_embed has 17 positions, but "
     r"img_size 8 with patch size 2 has 16 patches \(5 prefix tokens\)"),
    (lambda s: s.update({"head_extra.weight": np.zeros((1, 12), np.float32)}), r"unexpected keys \['head_extra.weight'\]"),
    (lambda s: s.update({"blocks.1.mlp.fc1.weight": np.zeros((40, 12), np.float32)}),
     r"blocks.1.mlp.fc1.weight: expected \(48, 12\), got \(40, 12\)"),
])
def test_bad_safetensors_name_file_and_key(tmp_path, change, pattern):
    state = timm_state()
    change(state)
    path = write_timm_file(tmp_path / "model.safetensors", state)
    with pytest.raises(ValueError, match=pattern) as info:
        W.load_weights(path, **stated())
    assert str(path) in str(info.value)


def test_safetensors_config_mismatch(tmp_path):
    path = write_timm_file(tmp_path / "model.safetensors", timm_state())
    with pytest.raises(ValueError, match=r"model.safetensors: .*embed_dim: preset 96, weights 12"):
        W.load_weights(path, model="vit_fmnist_patch2_28")
    with pytest.raises(ValueError, match=r"head.weight: expected \(9, 12\)"):
        W.load_safetensors(path, cfg=CFG.replace(num_classes=9))
    with pytest.raises(ValueError, match="embed_dim 12 is not divisible by num_heads 5"):
        W.load_weights(path, **dict(stated(), num_heads=5))


# ---- broken files of every kind ----

def _files(tmp_path):
    st = write_timm_file(tmp_path / "model.safetensors", timm_state())
    npz = tmp_path / "w.npz"
    W.save_npz(npz, make_params(), CFG)
    return [st, npz]


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_files_raise_value_error(tmp_path, fraction):
    for path in _files(tmp_path):
        data = path.read_bytes()
        cut = tmp_path / ("cut" + path.suffix)
        cut.write_bytes(data[:int(len(data) * fraction)])
        with pytest.raises(ValueError, match="cut" + path.suffix):
            W.load_weights(cut, num_heads=3)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("seed", range(3))
def test_garbage_files_raise_value_error(tmp_path, suffix, seed):
    path = tmp_path / ("garbage" + suffix)
    path.write_bytes(np.random.default_rng(seed).bytes(1000 * (seed + 1)))
    with pytest.raises(ValueError, match="garbage"):
        W.load_weights(path, num_heads=3)


def test_corrupted_npz_member(tmp_path):
    path = _files(tmp_path)[1]
    data = bytearray(path.read_bytes())
    at = data.index(b"head.weight.npy") + 200                    # inside that member's array bytes
    data[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="w.npz"):
        W.load_npz(path)


def test_npy_is_not_npz(tmp_path):
    path = tmp_path / "a.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        W.load_npz(path)


def test_paths(tmp_path):
    with pytest.raises(ValueError, match=r"nothere.npz: no such file"):
        W.load_weights(tmp_path / "nothere.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match=r"dir.npz: is a directory"):
        W.load_weights(tmp_path / "dir.npz")
    with pytest.raises(ValueError, match=r"w.h5: unknown weight file extension '.h5'"):
        W.load_weights(tmp_path / "w.h5")
    with pytest.raises(ValueError, match=r"w.pth: minitofe writes .npz or .safetensors"):
        W.save_weights(tmp_path / "w.pth", make_params(), CFG)


# ---- convert ----

def test_convert_refuses_to_overwrite(tmp_path):
    src = write_timm_file(tmp_path / "model.safetensors", timm_state())
    dst = tmp_path / "w.npz"
    W.convert(src, dst, **stated())
    with pytest.raises(ValueError, match="exists already"):
        W.convert(src, dst, **stated())
    W.convert(src, dst, **stated(), overwrite=True)
    with pytest.raises(ValueError, match="refusing to write over the source"):
        W.convert(src, src, **stated(), overwrite=True)
    os.symlink(src, tmp_path / "link.safetensors")
    with pytest.raises(ValueError, match="refusing to write over the source"):
        W.convert(src, tmp_path / "link.safetensors", **stated(), overwrite=True)
    assert src.read_bytes() == (tmp_path / "link.safetensors").read_bytes()


def test_convert_casts_only_when_asked(tmp_path):
    src = write_timm_file(tmp_path / "model.safetensors", timm_state())
    W.convert(src, tmp_path / "a.npz", **stated())
    W.convert(src, tmp_path / "b.npz", **stated(), dtype="float64")
    assert W.load_npz(tmp_path / "a.npz")[0]["head.weight"].dtype == np.float32
    assert W.load_npz(tmp_path / "b.npz")[0]["head.weight"].dtype == np.float64


def test_npz_with_model_or_heads_must_agree(tmp_path):
    W.save_npz(tmp_path / "w.npz", make_params(), CFG)
    assert W.load_weights(tmp_path / "w.npz", num_heads=3)[1] == CFG
    with pytest.raises(ValueError, match="num_heads=3, asked for 4"):
        W.load_weights(tmp_path / "w.npz", num_heads=4)
    with pytest.raises(ValueError, match="w.npz: the weights do not match preset"):
        W.load_weights(tmp_path / "w.npz", model="deit_tiny_patch16_224")


# ---- torch state-dict files: with a stand-in torch module, then with the real one ----

def test_torch_missing_gives_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)              # makes `import torch` fail
    with pytest.raises(ImportError, match=r'pip install "minitofe\[torch\]"'):
        W.load_weights(path, num_heads=3)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3},
                                  lambda s: {"model": s, "optimizer": {}}])
def test_load_torch_unwraps_checkpoints(tmp_path, monkeypatch, wrap):
    state = {k: types.SimpleNamespace(shape=v.shape, dtype=v.dtype, detach=None, array=v) for k, v in
             timm_state().items()}
    for t in state.values():
        t.detach = t.cpu = (lambda t=t: t)
        t.numpy = (lambda t=t: t.array)
    calls = []

    def fake_load(path, map_location=None, weights_only=None):
        calls.append((path, map_location, weights_only))
        return wrap(state)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=fake_load))
    path = tmp_path / "model.pth"
    path.write_bytes(b"x")
    params, cfg, meta = W.load_weights(path, **stated())
    assert calls == [(str(path), "cpu", True)] and cfg == CFG and meta == {}
    assert_same(params, make_params())


def test_load_torch_bad_content(tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")

    def broken(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=broken))
    with pytest.raises(ValueError, match="model.bin: not a readable torch checkpoint"):
        W.load_weights(path, num_heads=3)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=lambda *a, **k: [1, 2]))
    with pytest.raises(TypeError, match="model.bin: expected a state dict"):
        W.load_weights(path, num_heads=3)


@pytest.mark.torch
def test_real_torch_files(tmp_path):
    torch = pytest.importorskip("torch")
    state = timm_state(CFG, np.float64)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    for i, obj in enumerate([tensors, {"model": tensors}, {"state_dict": tensors, "epoch": 1}]):
        torch.save(obj, tmp_path / f"m{i}.pth")
        params, cfg, _ = W.load_weights(tmp_path / f"m{i}.pth", **stated())
        assert cfg == CFG
        assert_same(params, make_params(CFG, np.float64))
    data = (tmp_path / "m0.pth").read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:n])
        with pytest.raises(ValueError, match="cut.pt"):
            W.load_weights(tmp_path / "cut.pt", num_heads=3)


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_timm_loads_our_safetensors_unchanged(tmp_path, name):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from safetensors.torch import load_file
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    cfg = CONFIGS[name]
    kw = {k: v for k, v in cfg.to_dict().items() if k not in ("distilled", "norm_eps")}
    model = (VisionTransformerDistilled if cfg.distilled else VisionTransformer)(**kw).eval()
    params, got_cfg = from_timm_model(model)
    assert got_cfg == cfg.replace(init_values=got_cfg.init_values)
    W.save_safetensors(tmp_path / "m.safetensors", params, got_cfg)
    fresh = (VisionTransformerDistilled if cfg.distilled else VisionTransformer)(**kw).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    images = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))
