"""The whole model on a strict fake device (docs/contributing.md §4): what CI can check of the CuPy path without a GPU.

``FakeDeviceArray`` refuses every implicit conversion to NumPy as ``cupy.ndarray`` does, so a stray
``np.`` call on a device array anywhere in the forward or backward raises here. Each test runs the same
computation on NumPy and on the fake device and requires identical results.
"""
import numpy as np
import pytest
import scipy.special

import minitofe
from minitofe.backend import erf, get_xp, is_host, scatter_add, to_numpy
from minitofe.config import ViTConfig
from minitofe.testing.fakedevice import FakeDeviceArray, fake_xp, to_device
from minitofe.nn.layers import cross_entropy_backward, cross_entropy_forward
from minitofe.kernels import ops as kernel_ops
from minitofe.nn.vit import vit_backward, vit_forward
from minitofe.train.optim import adamw_init, adamw_step, clip_grad_norm
from minitofe.methods import entries
from minitofe.tofe.config import METHODS, ToFeConfig
from minitofe.methods import inference as tofe_inference
from minitofe.methods import train_backward as tofe_train_backward, train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise, teacher_forward

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2,
                distilled=True, init_values=0.5)
LEARNED = ("tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative")

FAITHFUL_BASELINES = tuple(m.name for m in entries() if m.topk_only)


def _model(method, seed=0, **kw):
    rng = np.random.default_rng(seed)
    tcfg = ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.25, 0.25), **kw)
    m = minitofe.new_model(CFG, tcfg, rng)
    for v in m.params.values():                      # away from init, so that nothing is trivially zero
        v += 0.3 * rng.standard_normal(v.shape)
    return m, rng.standard_normal((3, 1, 8, 8)), rng


def _same(host, device):
    assert isinstance(device, FakeDeviceArray), type(device)
    np.testing.assert_array_equal(to_numpy(device), host)


# ---------------------------------------------------------------- the fake itself is strict
@pytest.mark.parametrize("stray", [
    lambda x, h: np.asarray(x), lambda x, h: np.array(x), lambda x, h: np.exp(x),
    lambda x, h: np.concatenate([x, x]), lambda x, h: np.zeros_like(x), lambda x, h: np.where(x > 0, x, 0),
    lambda x, h: h + x, lambda x, h: x * h, lambda x, h: x @ h, lambda x, h: x.__setitem__(0, h[0]),
    lambda x, h: x[np.array([0, 1])], lambda x, h: scipy.special.erf(x), lambda x, h: np.add.at(x, [0], 1.0),
    lambda x, h: fake_xp.concatenate([x, h]),
], ids=["asarray", "array", "ufunc", "function", "zeros_like", "where", "host+dev", "dev*host",
        "dev@host", "setitem host", "index by host", "scipy", "add.at", "xp mixing"])
def test_fake_device_refuses_implicit_numpy(stray):
    x, h = to_device(np.ones((2, 2))), np.ones((2, 2))
    with pytest.raises(TypeError):
        stray(x, h)


def test_backend_switch_recognises_the_fake_device():
    h = np.linspace(-2, 2, 12).reshape(3, 4)
    x = to_device(h)
    assert get_xp(x) is fake_xp and get_xp(h, x) is fake_xp and get_xp(h) is np
    assert is_host(h, 1.0) and not is_host(h, x)
    _same(h, x)
    _same(scipy.special.erf(h), erf(x))
    _same(np.exp(h).sum(axis=0), get_xp(x).exp(x).sum(axis=0))
    target = to_device(np.zeros(3))
    scatter_add(target, to_device(np.array([0, 0, 2])), to_device(np.array([1.0, 2.0, 3.0])))
    _same(np.array([3.0, 0.0, 3.0]), target)


# ---------------------------------------------------------------- the model on the fake device
@pytest.mark.parametrize("method, inference, fuse", [(m, i, False) for m in METHODS for i in ("topk", "threshold")
                                                    if i == "topk" or m not in FAITHFUL_BASELINES]   # top-K only
                         + [("tofe", "topk", True), ("tofe", "threshold", True)])      # the fused frozen token
def test_tofe_inference_runs_on_the_device(method, inference, fuse):
    m, images, _ = _model(method, seed=3, inference=inference, threshold=0.45, fuse_frozen=fuse)
    logits, info = tofe_inference(m.params, images, CFG, m.tofe)
    dlogits, dinfo = tofe_inference(to_device(m.params), to_device(images), CFG, m.tofe,
                                   ops=kernel_ops(True, like=to_device(images)))
    _same(logits, dlogits)
    for key in ("kept", "frozen", "reused", "dropped", "keep_prob"):
        for a, b in zip(info[key], dinfo[key]):
            np.testing.assert_array_equal(a, b)           # info holds host arrays on either backend
    for a, b in zip(info["stage_outputs"], dinfo["stage_outputs"]):
        _same(a, b)
    np.testing.assert_array_equal(info["macs"], dinfo["macs"])


def test_threshold_inference_on_the_device_exercises_the_ragged_path():
    m, images, _ = _model("tofe", seed=3, inference="threshold", threshold=0.45)
    _, info = tofe_inference(to_device(m.params), to_device(images), CFG, m.tofe)
    counts = info["kept_counts"]                          # (B, S) patches kept per image and stage
    assert any(len(set(counts[:, s])) > 1 for s in range(counts.shape[1]))


@pytest.mark.parametrize("method, fuse", [(m, False) for m in LEARNED] + [("tofe", True)])
def test_tofe_training_forward_and_backward_run_on_the_device(method, fuse):
    m, images, rng = _model(method, seed=1, fuse_frozen=fuse)
    labels = np.array([0, 3, 1])
    stages = m.tofe.resolved_stages(CFG.depth)
    noise = draw_noise(rng, CFG, m.tofe, 3, np.float64)
    teacher = teacher_forward(m.backbone_params(), images, CFG, stages)
    out, cache = tofe_train_forward(m.params, images, labels, CFG, m.tofe, noise, teacher)
    dimages, grads = tofe_train_backward(cache)

    params_d, images_d = to_device(m.params), to_device(images)
    teacher_d = teacher_forward({k: v for k, v in params_d.items() if not k.startswith("tofe.")},
                                images_d, CFG, stages)
    out_d, cache_d = tofe_train_forward(params_d, images_d, to_device(labels), CFG, m.tofe,
                                        to_device(noise), teacher_d)
    dimages_d, grads_d = tofe_train_backward(cache_d)
    assert out_d["losses"] == out["losses"]
    _same(out["logits"], out_d["logits"])
    for a, b in zip(out["masks"], out_d["masks"]):
        _same(a, b)
    _same(dimages, dimages_d)
    assert grads_d.keys() == grads.keys() == m.params.keys()
    for k in grads:
        _same(grads[k], grads_d[k])


def test_dense_training_step_runs_on_the_device():
    m, images, _ = _model("dense")
    labels = np.array([0, 3, 1])
    results = []
    for to, fast in ((lambda a: a, False), (to_device, True)):      # fast falls back on a device
        params = to({k: v.copy() for k, v in m.backbone_params().items()})
        logits, cache = vit_forward(params, to(images), CFG, ops=kernel_ops(fast, like=to(images)))
        loss, c_ce = cross_entropy_forward(logits, to(labels), label_smoothing=0.1)
        dimages, grads = vit_backward(cross_entropy_backward(1.0, c_ce), cache)
        norm = clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, adamw_init(params), lr=1e-3)
        results.append((float(loss), norm, to_numpy(dimages), {k: to_numpy(v) for k, v in params.items()}))
    (l0, n0, d0, p0), (l1, n1, d1, p1) = results
    assert l0 == l1 and n0 == n1
    np.testing.assert_array_equal(d0, d1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])


def test_learned_keep_ratios_update_from_device_statistics():
    m, images, rng = _model("tofe", seed=2, alpha=0.0, beta=0.0)
    noise = to_device(draw_noise(rng, CFG, m.tofe, 3, np.float64))
    out, _ = tofe_train_forward(to_device(m.params), to_device(images), to_device(np.array([0, 1, 2])),
                                CFG, m.tofe, noise)
    ratios = minitofe.update_learned_ratios(m, out["keep_ratios"])     # a device array in, floats out
    assert ratios == tuple(float(r) for r in to_numpy(out["keep_ratios"]))


def test_gpu_check_script_runs_against_the_fake_device(monkeypatch, capsys):
    """scripts/gpu_check.py (run by hand on a GPU machine) with the fake device standing in for CuPy."""
    import importlib.util
    import pathlib
    import sys
    from types import SimpleNamespace
    fake_cupy = SimpleNamespace(
        asarray=to_device,
        cuda=SimpleNamespace(Device=lambda: SimpleNamespace(synchronize=lambda: None),
                             runtime=SimpleNamespace(getDeviceProperties=lambda i: {"name": "fake device"})))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--model", "vit_fmnist_patch2_28", "--batch", "1", "--reps", "1", "--dtype", "float64"])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("OK"), out
    assert "train step" in out and "tofe threshold" in out
