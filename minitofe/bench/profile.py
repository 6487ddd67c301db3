"""Where the fast forward's time goes, next to what the machine's sgemm can do (``minitofe bench``'s
``profile`` section, also ``python -m minitofe.bench --profile``).

- ``sgemm``: NumPy's float32 matmul alone, GFLOP/s: a large square product (the BLAS's practical peak on
  this machine and thread count) and the linear layers of one block at the profiled batch sizes;
- ``ops``: one fast dense forward under ``cProfile``, its time grouped by kind of operation (the fast
  path's functions are named for what they do: ``_linear_`` is one linear layer's matmul, ``_run_unit``
  one batch of attention products, ...), with the GFLOP/s of the two matmul kinds from their exact
  multiply-add counts. ``cProfile`` adds ~1 us a Python call, a few hundred calls a forward.
"""
import cProfile
import pstats
import time

import numpy as np

from .. import kernels
from ..kernels.packed import freeze
from ..config import get_config
from ..nn.params import init_params
from ..tofe.config import ToFeConfig
from ..methods import inference as tofe_inference
from .contenders import dense_model, images

KINDS = {"_linear_": "linear layers (BLAS sgemm)", "_run_unit": "attention products (BLAS sgemm)",
         "softmax_rows_": "softmax", "layernorm_": "layer norm",
         "residual_layernorm_": "residual + layer norm",
         "residual_": "residual", "bias_gelu_": "bias + GELU", "add_bias_": "bias",
         "embed_forward": "embedding (reference NumPy)", "head_forward": "head (reference NumPy)"}
WHOLE = ("embed_forward", "head_forward")        # counted with what they call (cumulative time)


def _best_seconds(f, reps):
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(cfg, batch_sizes, square=2048, reps=3):
    """GFLOP/s of NumPy's float32 matmul: a square product and one block's linear layers."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((square, square)).astype(np.float32)
    out = {f"square {square}": 2 * square ** 3 / _best_seconds(lambda: a @ a, reps) / 1e9}
    C, hidden, N = cfg.embed_dim, cfg.mlp_hidden, cfg.num_tokens
    for B in batch_sizes:
        shapes = {"qkv": (C, 3 * C), "proj": (C, C), "fc1": (C, hidden), "fc2": (hidden, C)}
        for name, (k, n) in shapes.items():
            x = rng.standard_normal((B * N, k)).astype(np.float32)
            w = rng.standard_normal((n, k)).astype(np.float32)
            y = np.empty((B * N, n), np.float32)
            seconds = _best_seconds(lambda: np.matmul(x, w.T, out=y), reps)
            out[f"{name} batch {B}"] = 2 * B * N * k * n / seconds / 1e9
    return out


def _macs(cfg, B):
    C, N, L, hidden = cfg.embed_dim, cfg.num_tokens, cfg.depth, cfg.mlp_hidden
    return {"linear layers (BLAS sgemm)": L * B * N * (4 * C * C + 2 * C * hidden),
            "attention products (BLAS sgemm)": L * B * 2 * N * N * C}


def op_times(params, cfg, B, reps):
    """Seconds per forward by kind of operation, and the matmul kinds' GFLOP/s."""
    x = images(B)
    ops, dense = kernels.ops(True, like=x), ToFeConfig(method="dense")

    def run():
        with kernels.thread_scope(True, like=x):
            tofe_inference(params, x, cfg, dense, ops=ops, check=False)
    run()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(reps):
        run()
    prof.disable()
    total = (time.perf_counter() - t0) / reps
    kinds = {}
    for (_, _, func), row in pstats.Stats(prof).stats.items():
        if func in KINDS:
            kinds[KINDS[func]] = kinds.get(KINDS[func], 0.0) + (row[3] if func in WHOLE else row[2]) / reps
    kinds["other (Python, ToFe bookkeeping, copies)"] = max(0.0, total - sum(kinds.values()))
    gflops = {k: 2 * m / kinds[k] / 1e9 for k, m in _macs(cfg, B).items() if kinds.get(k)}
    return {"batch": B, "forward_s": total, "seconds": kinds, "gflops": gflops}


def profile_forward(quick=False, threads=None):
    """The profile section: sgemm GFLOP/s, the fast forward's time by kind of operation, and (when it is
    installed) onnxruntime's on the same model in the same kinds (``bench.runtime_profile``)."""
    from .runtime_profile import ort_profile
    cfg = get_config(dense_model(quick))
    params = freeze(init_params(cfg, np.random.default_rng(0), np.float32))      # as the dense contender
    sizes = (1, 2) if quick else (1, 32)
    return {"model": dense_model(quick), "sgemm_gflops": sgemm_gflops(cfg, sizes, 256 if quick else 2048),
            "ops": [op_times(params, cfg, B, 1 if quick or B > 8 else 3) for B in sizes],
            "onnxruntime": ort_profile(quick, threads, sizes)}
