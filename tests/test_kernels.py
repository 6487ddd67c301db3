"""Every Numba kernel equals its NumPy reference (docs/contributing.md §5) on random and non-contiguous inputs, and
the fast paths of the ViT and of ToFe inference equal the reference paths end to end."""
import inspect
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minitofe.kernels as kernels                                       # noqa: E402

if not kernels.available():         # Numba not installed, or MINITOFE_NO_NUMBA set: no fast kernels to test
    pytest.skip("the fast kernels need Numba (not installed, or MINITOFE_NO_NUMBA is set)", allow_module_level=True)

from minitofe.config import ViTConfig                                    # noqa: E402
from minitofe.testing.fakedevice import to_device                        # noqa: E402
from minitofe.nn import attention, block, layers                         # noqa: E402
from minitofe.nn.params import init_params                               # noqa: E402
from minitofe.nn.vit import vit_backward, vit_forward                    # noqa: E402
from minitofe import methods                                             # noqa: E402
from minitofe.methods import entries                                     # noqa: E402
from minitofe.methods import init_params as init_tofe_params             # noqa: E402
from minitofe.tofe import ragged, tokens                                 # noqa: E402
from minitofe.tofe.config import METHODS, ToFeConfig                     # noqa: E402

FAITHFUL_BASELINES = tuple(m.name for m in entries() if m.topk_only)

REFERENCES = {"gather_tokens": tokens, "scatter_tokens": tokens, "pack_rows": ragged, "unpack_rows": ragged,
              "layernorm_forward": layers, "layernorm_backward": layers, "gelu_forward": layers,
              "gelu_backward": layers, "linear_forward": layers, "masked_softmax_forward": attention,
              "masked_softmax_backward": attention, "block_forward": block, "block_backward": block,
              "run_blocks": block, "ragged_block_forward": ragged}
K = kernels.fast_kernels()
EXAMPLES = settings(max_examples=40, deadline=None)
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-4, atol=2e-5)}
dtypes = st.sampled_from([np.float64, np.float32])


def _close(a, b, dtype):
    np.testing.assert_allclose(a, b, **TOL[dtype])


def _maybe_strided(draw, a):
    """The same values, as a non-contiguous view, half of the time."""
    if draw(st.booleans()):
        big = np.stack([a, np.full_like(a, np.nan)], axis=-1)          # interleave NaN decoys
        return big[..., 0]
    return a


@st.composite
def arrays(draw, shape, dtype, scale=1.0):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return _maybe_strided(draw, (scale * rng.standard_normal(shape)).astype(dtype))


def test_every_fast_kernel_has_a_reference_with_the_same_signature():
    assert set(REFERENCES) == set(kernels.REGISTRY)
    for name, module in REFERENCES.items():
        ref, fast = getattr(module, name), getattr(K, name)
        assert list(inspect.signature(fast).parameters) == list(inspect.signature(ref).parameters), name


@pytest.mark.parametrize("user_layer", [None, "omp"])
def test_numba_runs_on_the_workqueue_layer_unless_the_user_chose_one(user_layer):
    """OpenMP stalls beside torch's OpenMP threads (4x slower at batch 1), so ``kernels`` picks
    workqueue; a layer the user set in NUMBA_THREADING_LAYER is left alone."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, numba; from minitofe.kernels import ops\n"
            "x = np.ones((2, 3, 4), np.float32)\n"
            "k = ops(True, like=x); k.gelu_backward(x, k.gelu_forward(x)[1])  # a parallel kernel\n"
            "print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if user_layer == "omp":
        try:                                            # Numba's OpenMP layer needs an OpenMP runtime
            from numba.np.ufunc import omppool          # noqa: F401
        except ImportError as e:
            pytest.skip(f"Numba's OpenMP threading layer cannot load here ({e})")
    if user_layer:
        env["NUMBA_THREADING_LAYER"] = user_layer
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (user_layer or "workqueue")


def test_kernels_called_from_several_threads_give_the_reference_results():
    """Numba's workqueue layer (chosen by ``kernels``) aborts the process on concurrent launches; the
    launch lock serialises them, so threads calling fast kernels at once get exact results."""
    import threading
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 197, 64)).astype(np.float32)
    idx = np.sort(rng.permuted(np.tile(np.arange(1, 197), (8, 1)), axis=1)[:, :98], axis=1)
    want_g, want_ln = tokens.gather_tokens(x, idx), layers.layernorm_forward(x, np.ones(64, np.float32),
                                                                             np.zeros(64, np.float32))[0]
    errors = []

    def work():
        for _ in range(50):
            got_g = K.gather_tokens(x, idx)
            got_ln = K.layernorm_forward(x, np.ones(64, np.float32), np.zeros(64, np.float32))[0]
            if not (np.array_equal(got_g, want_g) and np.allclose(got_ln, want_ln, rtol=1e-5, atol=1e-5)):
                errors.append("mismatch")
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_ops_falls_back_to_the_reference(monkeypatch):
    """Without ``fast``, on a GPU array, or without Numba, ``kernels.ops`` hands down None: the model code
    then runs its own reference functions (``tofe.ops.resolve``)."""
    from minitofe.tofe.ops import resolve
    x = np.zeros((1, 2, 3))
    assert resolve(kernels.ops(False, like=x)).gather_tokens is tokens.gather_tokens
    assert resolve(kernels.ops(True, like=x)).gather_tokens is K.gather_tokens
    assert resolve(kernels.ops(True, like=to_device(x))).gather_tokens is tokens.gather_tokens  # on a GPU
    monkeypatch.setenv("MINITOFE_NO_NUMBA", "1")                          # as if Numba were absent
    ref = resolve(kernels.ops(True, like=x))
    assert (ref.gather_tokens, ref.scatter_tokens) == (tokens.gather_tokens, tokens.scatter_tokens)


def test_ops_hands_down_the_twins_or_none_for_the_reference(monkeypatch):
    """``kernels.ops``: the choice the top layer makes once and hands to ``nn/`` / ``tofe/`` as ``ops``."""
    from minitofe.tofe.ops import REFERENCE, resolve
    x = np.zeros((1, 2, 3))
    assert kernels.ops(True, like=x).gather_tokens is K.gather_tokens and kernels.ops(True, like=x).fast
    assert kernels.ops(False, like=x) is None and kernels.ops(True, like=to_device(x)) is None  # GPU
    assert resolve(None) is REFERENCE and resolve(kernels.ops(True, like=x)) is kernels.ops(True, like=x)
    assert set(kernels.REGISTRY) <= set(vars(REFERENCE))
    for name in kernels.REGISTRY:                                 # same names, same signatures
        ref, fast = getattr(REFERENCE, name), getattr(kernels.ops(True, like=x), name)
        assert list(inspect.signature(fast).parameters) == list(inspect.signature(ref).parameters), name
    monkeypatch.setenv("MINITOFE_NO_NUMBA", "1")                          # as if Numba were absent
    assert kernels.ops(True, like=x) is None


def test_compiled_kernels_are_cached_on_disk():
    from minitofe.kernels import (attention as katt, block as kblock, layers as klayers, softmax as ksm,
                                  tokens as ktok)
    jitted = [f for m in (katt, klayers, ksm, ktok) for f in vars(m).values() if hasattr(f, "py_func")]
    assert len(jitted) >= 15 and kblock
    assert all(type(f._cache).__name__ == "FunctionCache" for f in jitted)


@EXAMPLES
@given(st.data(), dtypes, st.integers(1, 3), st.integers(1, 9), st.integers(1, 5))
def test_gather_scatter_pack_unpack_equal_the_reference(data, dtype, B, N, C):
    x = data.draw(arrays((B, N, C), dtype))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    K_ = data.draw(st.integers(0, N))
    idx = np.sort(np.stack([rng.permutation(N)[:K_] for _ in range(B)]), axis=1).astype(
        data.draw(st.sampled_from([np.int64, np.int32])))
    rows = data.draw(arrays((B, K_, C), dtype))
    np.testing.assert_array_equal(K.gather_tokens(x, idx), tokens.gather_tokens(x, idx))
    np.testing.assert_array_equal(K.scatter_tokens(x, rows, idx), tokens.scatter_tokens(x, rows, idx))
    idx_list = [np.flatnonzero(rng.random(N) < 0.5) for _ in range(B)]
    packed, offsets = K.pack_rows(x, idx_list)
    ref_packed, ref_offsets = ragged.pack_rows(x, idx_list)
    np.testing.assert_array_equal(packed, ref_packed)
    assert offsets == ref_offsets
    new = data.draw(arrays(packed.shape, dtype))
    np.testing.assert_array_equal(K.unpack_rows(x, new, idx_list, offsets),
                                  ragged.unpack_rows(x, new, idx_list, offsets))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merges_of_strided_inputs_equal_the_reference(dtype):
    """Gather, scatter and unpack of inputs that are not C-contiguous (the kernels make a contiguous copy
    of those only), broadcast rows, negative and repeated indices, an empty image: as the reference."""
    rng = np.random.default_rng(0)
    idx, idx_list = np.array([[0, -1, 3], [2, 2, -9], [8, 1, 0]]), [np.array([0, 3]), np.array([], int),
                                                                      np.arange(9)]
    for C in (32, 20):
        x = rng.standard_normal((3, 9, 2 * C)).astype(dtype)
        for base in (x[..., :C], x[..., ::2], np.ascontiguousarray(x[:, ::-1, :C])):
            for rows in (rng.standard_normal((3, 3, C)), rng.standard_normal(C)):
                got = K.scatter_tokens(base, rows, idx)
                np.testing.assert_array_equal(got, tokens.scatter_tokens(base, rows, idx))
                assert got.dtype == dtype and got.flags.c_contiguous
            packed = rng.standard_normal((sum(map(len, idx_list)), C))
            offsets = [0, 2, 2, 11]
            np.testing.assert_array_equal(K.unpack_rows(base, packed, idx_list, offsets),
                                          ragged.unpack_rows(base, packed, idx_list, offsets))
            np.testing.assert_array_equal(K.gather_tokens(base, idx), tokens.gather_tokens(base, idx))


def test_token_kernels_check_their_indices():
    x = np.zeros((1, 4, 2))
    with pytest.raises(IndexError):
        K.gather_tokens(x, np.array([[0, 4]]))
    with pytest.raises(IndexError):
        K.scatter_tokens(x, np.zeros((1, 1, 2)), np.array([[-5]]))
    with pytest.raises(ValueError, match="offsets"):
        K.unpack_rows(x, np.zeros((2, 2)), [np.array([0, 1])], [0, 1])


@EXAMPLES
@given(st.data(), dtypes, st.integers(1, 40), st.integers(2, 24))   # C = 1: var 0, rstd 1e3 amplifies rounding
def test_layernorm_and_gelu_equal_the_reference(data, dtype, M, C):
    x = data.draw(arrays((M, C), dtype, scale=3.0))
    w, b, dy = (data.draw(arrays(s, dtype)) for s in ((C,), (C,), (M, C)))
    y, cache = K.layernorm_forward(x, w, b)
    y_ref, cache_ref = layers.layernorm_forward(x, w, b)
    _close(y, y_ref, dtype)
    for got, want in zip(K.layernorm_backward(dy, cache_ref), layers.layernorm_backward(dy, cache_ref)):
        _close(got, want, dtype)
    for got, want in zip(layers.layernorm_backward(dy, cache), layers.layernorm_backward(dy, cache_ref)):
        _close(got, want, dtype)                                  # the fast cache is the reference's
    g, cache = K.gelu_forward(x)
    g_ref, cache_ref = layers.gelu_forward(x)
    _close(g, g_ref, dtype)
    _close(K.gelu_backward(dy, cache_ref), layers.gelu_backward(dy, cache_ref), dtype)


@EXAMPLES
@given(st.data(), dtypes, st.lists(st.integers(0, 5), min_size=0, max_size=2), st.integers(1, 9),
       st.integers(1, 9), st.booleans())
def test_linear_equals_the_reference_and_keeps_its_cache(data, dtype, lead, C, K_out, bias):
    """One BLAS product over the flattened rows (any leading shape, empty ones too), the bias fused."""
    x = data.draw(arrays(tuple(lead) + (C,), dtype))
    w = data.draw(arrays((K_out, C), dtype))
    b = data.draw(arrays((K_out,), dtype)) if bias else None
    y, cache = K.linear_forward(x, w, b)
    y_ref, cache_ref = layers.linear_forward(x, w, b)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    _close(y, y_ref, dtype)
    assert cache[0] is x and cache[1] is w and cache[2] == cache_ref[2]          # the reference backward's
    dy = data.draw(arrays(y.shape, dtype))
    for got, want in zip(layers.linear_backward(dy, cache), layers.linear_backward(dy, cache_ref)):
        assert (got is None and want is None) or np.array_equal(got, want)


def test_linear_runs_inside_the_sized_blas_scope_and_outside_it():
    from minitofe.kernels.threads import sized_blas
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((4, 197, 64), (32, 64), (32,)))
    want, _ = layers.linear_forward(x, w, b)
    with sized_blas():
        got, _ = K.linear_forward(x, w, b)
    _close(got, want, np.float32)
    _close(K.linear_forward(x, w, b)[0], want, np.float32)


@EXAMPLES
@given(st.data(), dtypes, st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.booleans())
def test_masked_softmax_equals_the_reference(data, dtype, B, H, N, masked):
    s = data.draw(arrays((B, H, N, N), dtype, scale=4.0))
    dA = data.draw(arrays((B, H, N, N), dtype))
    mask = None
    if masked:
        rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
        mask = np.where(rng.random((B, N)) < 0.3, 0.0, rng.random((B, N))).astype(dtype)
    A, _ = K.masked_softmax_forward(s, mask)
    A_ref, cache_ref = attention.masked_softmax_forward(s, mask)
    _close(A, A_ref, dtype)
    got, want = K.masked_softmax_backward(dA, cache_ref), attention.masked_softmax_backward(dA, cache_ref)
    _close(got[0], want[0], dtype)
    if masked:
        _close(got[1], want[1], dtype)
    else:
        assert got[1] is None and want[1] is None


def _block_params(rng, C, dtype, layer_scale, qkv_bias, prefix="blocks.0."):
    shapes = {"norm1.weight": (C,), "norm1.bias": (C,), "attn.qkv.weight": (3 * C, C),
              "attn.proj.weight": (C, C), "attn.proj.bias": (C,), "norm2.weight": (C,), "norm2.bias": (C,),
              "mlp.fc1.weight": (2 * C, C), "mlp.fc1.bias": (2 * C,), "mlp.fc2.weight": (C, 2 * C),
              "mlp.fc2.bias": (C,)}
    if qkv_bias:
        shapes["attn.qkv.bias"] = (3 * C,)
    if layer_scale:
        shapes.update({"ls1.gamma": (C,), "ls2.gamma": (C,)})
    return {prefix + k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


@EXAMPLES
@given(st.data(), dtypes, st.integers(1, 3), st.integers(1, 9), st.sampled_from([(4, 1), (8, 2), (12, 3)]),
       st.booleans(), st.booleans(), st.booleans())
def test_block_forward_backward_and_runners_equal_the_reference(data, dtype, B, N, CH, masked, ls, qkv_bias):
    C, H = CH
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    params = _block_params(rng, C, dtype, ls, qkv_bias)
    x, dout = data.draw(arrays((B, N, C), dtype)), data.draw(arrays((B, N, C), dtype))
    mask = (rng.random((B, N)) < 0.6).astype(dtype) if masked else None
    out, cache = K.block_forward(x, params, "blocks.0.", H, mask)
    out_ref, cache_ref = block.block_forward(x, params, "blocks.0.", H, mask)
    _close(out, out_ref, dtype)
    dx, grads, dmask = K.block_backward(dout, cache)
    dx_ref, grads_ref, dmask_ref = block.block_backward(dout, cache_ref)
    _close(dx, dx_ref, dtype)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        assert grads[k].dtype == dtype
        _close(grads[k], grads_ref[k], dtype)
    if masked:
        _close(dmask, dmask_ref, dtype)
    cfg = ViTConfig(img_size=4, patch_size=1, embed_dim=C, num_heads=H, depth=1)
    _close(K.run_blocks(x, params, cfg, 0, 1), block.run_blocks(x, params, cfg, 0, 1), dtype)
    idx_list = [np.flatnonzero((rng.random(N) < 0.6) | (np.arange(N) == 0)) for _ in range(B)]  # prefix kept
    packed, offsets = ragged.pack_rows(x, idx_list)
    _close(K.ragged_block_forward(packed, offsets, params, "blocks.0.", H),
           ragged.ragged_block_forward(packed, offsets, params, "blocks.0.", H), dtype)


CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=8, depth=4, num_heads=2,
                distilled=True, init_values=0.5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_vit_forward_backward_equal_the_reference(dtype):
    rng = np.random.default_rng(0)
    params = {k: v + (0.3 * rng.standard_normal(v.shape)).astype(dtype)
              for k, v in init_params(CFG, rng, dtype).items()}
    images = rng.standard_normal((3, 1, 8, 8)).astype(dtype)
    dlogits = rng.standard_normal((3, 4)).astype(dtype)
    logits, cache = vit_forward(params, images, CFG, ops=kernels.ops(True, like=images))
    logits_ref, cache_ref = vit_forward(params, images, CFG)
    _close(logits, logits_ref, dtype)
    (dimg, grads), (dimg_ref, grads_ref) = vit_backward(dlogits, cache), vit_backward(dlogits, cache_ref)
    _close(dimg, dimg_ref, dtype)
    assert grads.keys() == grads_ref.keys() == params.keys()
    for k in grads:
        _close(grads[k], grads_ref[k], dtype)


@pytest.mark.parametrize("method, inference_mode", [(m, i) for m in METHODS for i in ("topk", "threshold")
                                                    if i == "topk" or m not in FAITHFUL_BASELINES])
def test_fast_tofe_inference_equals_the_reference(method, inference_mode):
    rng = np.random.default_rng(5)
    tcfg = ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.25, 0.25),
                      inference=inference_mode, threshold=0.45)
    params = init_params(CFG, rng)
    params.update(init_tofe_params(CFG, tcfg, rng))
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    images = rng.standard_normal((4, 1, 8, 8))
    logits, info = methods.inference(params, images, CFG, tcfg, ops=kernels.ops(True, like=images))
    logits_ref, info_ref = methods.inference(params, images, CFG, tcfg)
    _close(logits, logits_ref, np.float64)
    for key in ("kept", "frozen", "reused"):
        for a, b in zip(info[key], info_ref[key]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(info["stage_outputs"], info_ref["stage_outputs"]):
        _close(a, b, np.float64)


@pytest.mark.parametrize("method", ["tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative"])
def test_fast_tofe_training_forward_backward_equal_the_reference(method):
    """The trainer's default (``TrainConfig.fast``): same losses, masks, teacher tokens and gradients."""
    from minitofe.methods import train_backward as tofe_train_backward, train_forward as tofe_train_forward
    from minitofe.tofe.training import draw_noise, teacher_forward
    rng = np.random.default_rng(7)
    tcfg = ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.25, 0.25))
    backbone = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(CFG, rng).items()}
    params = dict(backbone, **init_tofe_params(CFG, tcfg, rng))
    images, labels = rng.standard_normal((4, 1, 8, 8)), np.array([0, 1, 2, 3])
    noise = draw_noise(rng, CFG, tcfg, 4, np.float64)
    stages = tcfg.resolved_stages(CFG.depth)
    runs = []
    for fast in (True, False):
        teacher = teacher_forward(backbone, images, CFG, stages, ops=kernels.ops(fast, like=images))
        out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher,
                                        ops=kernels.ops(fast, like=images))
        assert cache[-1] is fast                                        # the fast path really ran
        runs.append((teacher, out, *tofe_train_backward(cache)))
    (t, out, dimg, grads), (t_ref, out_ref, dimg_ref, grads_ref) = runs
    for a, b in zip(t["tokens"] + [t["logits"]], t_ref["tokens"] + [t_ref["logits"]]):
        _close(a, b, np.float64)
    for name in out_ref["losses"]:
        np.testing.assert_allclose(out["losses"][name], out_ref["losses"][name], rtol=1e-10, atol=1e-12)
    for a, b in zip(out["masks"], out_ref["masks"]):
        np.testing.assert_array_equal(a, b)
    _close(dimg, dimg_ref, np.float64)
    assert grads.keys() == grads_ref.keys() == params.keys()
    for k in grads:
        _close(grads[k], grads_ref[k], np.float64)


def test_float32_exp_and_erf_are_accurate_and_keep_nan():
    """The vectorisable float32 exp / erf of ``kernels.mathf`` against float64 NumPy / math."""
    import math

    from minitofe.kernels.mathf import erf, exp, jit

    @jit
    def both(x, e, f):
        for i in range(x.shape[0]):
            e[i] = exp(x[i])
            f[i] = erf(x[i])
    x = np.concatenate([np.linspace(-87, 88, 200001), [np.nan, 0.0, -1e-30]]).astype(np.float32)
    e, f = np.empty_like(x), np.empty_like(x)
    both(x, e, f)
    ok = ~np.isnan(x)
    want_e = np.exp(x[ok].astype(np.float64))
    assert np.max(np.abs(e[ok] - want_e) / want_e) < 1e-6
    want_f = np.array([math.erf(v) for v in x[ok].astype(np.float64)])
    assert np.max(np.abs(f[ok] - want_f)) < 1e-6
    assert np.isnan(e[~ok]).all() and np.isnan(f[~ok]).all()


def test_blas_threads_are_sized_per_call_and_restored(monkeypatch):
    from threadpoolctl import threadpool_limits

    from minitofe.kernels import threads
    assert 1 <= threads.free_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(threads, "free_cores", lambda: 2)                  # as on a quiet 2-core machine
    with threadpool_limits(2, user_api="blas"):
        assert threads.gemm_threads(10 ** 4, 10 ** 4, 10 ** 4) == 1          # outside a forward: one
        with threads.sized_blas() as ceiling:
            assert ceiling == threads.blas_threads() == 2
            assert threads.gemm_threads(8, 8, 8) == 1                      # a small product: one thread
            assert threads.gemm_threads(6304, 1152, 384) == 2              # a linear layer at batch 32
            threads.use_threads(1)
            assert threads.blas_threads() == 1
        assert threads.blas_threads() == 2                                 # restored on the way out
        monkeypatch.setattr(threads, "free_cores", lambda: 1)              # another job holds a core
        with threads.sized_blas() as ceiling:
            assert ceiling == 1 and threads.gemm_threads(6304, 1152, 384) == 1
        assert threads.blas_threads() == 2


def test_free_cores_leave_out_other_processes_runnable_threads(monkeypatch):
    from minitofe.kernels import threads
    cores = os.cpu_count() or 1
    for busy, want in ((0, cores), (cores - 1, 1), (5 * cores, 1), (None, cores)):
        monkeypatch.setattr(threads, "_runnable_elsewhere", lambda busy=busy: busy)
        monkeypatch.setattr(threads, "_free", (-1.0, None))                # not cached
        assert threads.free_cores() == want, busy


def test_the_bench_workers_do_not_read_each_other_as_load(monkeypatch):
    """The bench runs its contenders' processes one at a time; their idle pools must not lower the fast
    path's thread ceiling: the workers' environment turns the free-cores check off."""
    from minitofe.bench.rounds import worker_env
    from minitofe.kernels import threads
    cores = os.cpu_count() or 1
    monkeypatch.setattr(threads, "_runnable_elsewhere", lambda: 5 * cores)    # a machine that looks full
    monkeypatch.setattr(threads, "_free", (-1.0, None))
    monkeypatch.delenv(threads.IGNORE_LOAD, raising=False)
    assert threads.free_cores() == 1
    monkeypatch.setenv(threads.IGNORE_LOAD, worker_env(2)[threads.IGNORE_LOAD])
    assert threads.free_cores() == cores


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attention_split_over_lanes_equals_the_reference(monkeypatch, dtype):
    """Attention and the element-wise kernels dealt to two lanes (forced: every product counts as large),
    dense and ragged batches: the reference's results, float64 within 1e-12 and float32 within 1e-5
    relative error (norm-wise, ``gradcheck.rel_error``); the BLAS's thread count is left as it was."""
    from threadpoolctl import threadpool_limits

    from minitofe.gradcheck import rel_error
    from minitofe.kernels import threads
    monkeypatch.setattr(threads, "MIN_MACS_PER_THREAD", 1)
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    rng = np.random.default_rng(3)
    C, H, N = 24, 3, 11
    params = _block_params(rng, C, dtype, True, True)
    cfg = ViTConfig(img_size=4, patch_size=1, embed_dim=C, num_heads=H, depth=1)
    x = rng.standard_normal((5, N, C)).astype(dtype)
    idx_list = [np.flatnonzero((rng.random(N) < 0.5) | (np.arange(N) == 0)) for _ in range(5)]
    packed, offsets = ragged.pack_rows(x, idx_list)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    with threadpool_limits(2, user_api="blas"):
        got = K.run_blocks(x, params, cfg, 0, 1)
        got_ragged = K.ragged_block_forward(packed, offsets, params, "blocks.0.", H)
        assert threads.blas_threads() == 2
    assert got.dtype == dtype and got_ragged.dtype == dtype
    assert rel_error(got, block.run_blocks(x, params, cfg, 0, 1)) < tol
    assert rel_error(got_ragged, ragged.ragged_block_forward(packed, offsets, params, "blocks.0.", H)) < tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_inference_is_within_the_stated_relative_error(dtype):
    """The whole fast ToFe forward (DeiT-like sizes scaled down, ragged threshold stages) against the
    reference: float64 within 1e-12, float32 within 1e-5 relative error (norm-wise)."""
    from minitofe.gradcheck import rel_error
    cfg = ViTConfig(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=48, depth=4, num_heads=3)
    rng = np.random.default_rng(11)
    for tcfg in (ToFeConfig(method="dense"),
                 ToFeConfig(method="tofe", stages=(1, 2, 3), keep_ratios=(0.5, 0.3, 0.2)),
                 ToFeConfig(method="tofe", stages=(1, 2, 3), inference="threshold", threshold=0.5)):
        params = init_params(cfg, rng, dtype)
        if tcfg.method != "dense":
            params.update(init_tofe_params(cfg, tcfg, rng, dtype))
        images = rng.standard_normal((3, 3, 32, 32)).astype(dtype)
        logits, info = methods.inference(params, images, cfg, tcfg, ops=kernels.ops(True, like=images))
        want, info_ref = methods.inference(params, images, cfg, tcfg)
        assert logits.dtype == dtype
        assert rel_error(logits, want) < (1e-12 if dtype == np.float64 else 1e-5), tcfg
        for a, b in zip(info["stage_outputs"], info_ref["stage_outputs"]):
            assert rel_error(a, b) < (1e-12 if dtype == np.float64 else 1e-5), tcfg
