"""How fast the sgemm libraries that can be had from PyPI run a model's linear layers on this machine.

    python scripts/gemm_libraries.py [--rows 197 98] [--threads 2] [--rounds 5] [--json]

The fast path's linear layers are NumPy matmuls, so their speed is the BLAS NumPy was built with
(OpenBLAS in the PyPI wheels). At batch 1 they are short products: DeiT-S's 197 token rows against its
384-wide weights (qkv, proj, fc1, fc2), and fewer rows in ToFe's later stages. This script times those
shapes, C = A (rows, K) @ W (K, N), on every candidate installed here, each in a process of its own, the
processes taking turns in interleaved rounds (medians and ranges of GFLOP/s, 2 * rows * K * N a product):

    numpy          NumPy's own matmul (its bundled OpenBLAS, with the core type it picked or
                   ``OPENBLAS_CORETYPE``)
    openblas-new   ``scipy-openblas32``: the newest OpenBLAS on PyPI, called through its CBLAS (ctypes)
    mkl            Intel oneMKL (``mkl``), ``cblas_sgemm`` (on AMD CPUs set ``MKL_ENABLE_INSTRUCTIONS=AVX512``
                   to let it use AVX-512)
    mkl-packed     oneMKL with the weight packed once (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``), as
                   an inference runtime does with constant weights
    onnxruntime    a one-MatMul ONNX graph with the weight as a constant (MLAS; the weight pre-packed by
                   the session), ``intra_op_num_threads = --threads``

A candidate that is not installed is listed as skipped with the reason. Every product is checked against
NumPy's before it is timed. Run it on a quiet machine: other processes on the cores move every figure.
"""
import argparse
import ctypes
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

CANDIDATES = ("numpy", "openblas-new", "mkl", "mkl-packed", "onnxruntime")
LAYERS = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}   # DeiT-S (K, N)
ROW_MAJOR, NO_TRANS, B_MATRIX, PACKED = 101, 111, 162, 151                                 # CBLAS enums
_SGEMM = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                               ctypes.c_float, ctypes.c_void_p, ctypes.c_int]


def _mkl():
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not paths:
        raise ImportError("no libmkl_rt in this environment (pip install mkl)")
    lib = ctypes.CDLL(paths[0])
    lib.MKL_Set_Num_Threads(int(os.environ["GEMM_THREADS"]))
    return lib


def _cblas(sgemm):
    """A row-major C = A @ B through a CBLAS ``sgemm`` function (ctypes)."""
    sgemm.argtypes, sgemm.restype = _SGEMM, None

    def gemm(a, b, c):
        (m, k), n = a.shape, b.shape[1]
        sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n, 0.0,
              c.ctypes.data, n)
    return gemm


def product(name, a, b):
    """A function computing ``a @ b`` into a preallocated output with candidate ``name``, on
    ``GEMM_THREADS`` threads (raises ImportError when the candidate is not installed)."""
    threads, c = int(os.environ["GEMM_THREADS"]), np.empty((a.shape[0], b.shape[1]), np.float32)
    if name == "numpy":
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads, user_api="blas")
        return lambda: np.matmul(a, b, out=c)
    if name == "openblas-new":
        import scipy_openblas32
        lib = ctypes.CDLL(scipy_openblas32.get_lib_dir() + "/libscipy_openblas.so")
        lib.scipy_openblas_set_num_threads(threads)
        gemm = _cblas(lib.scipy_cblas_sgemm)
        return lambda: gemm(a, b, c) or c
    if name == "mkl":
        gemm = _cblas(_mkl().cblas_sgemm)
        return lambda: gemm(a, b, c) or c
    if name == "mkl-packed":
        lib, (m, k), n = _mkl(), a.shape, b.shape[1]
        lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
        size = lib.cblas_sgemm_pack_get_size(B_MATRIX, m, n, k)
        packed = np.empty(size, np.uint8)
        lib.cblas_sgemm_pack.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                                              ctypes.c_void_p]
        lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, NO_TRANS, m, n, k, 1.0, b.ctypes.data, n,
                             packed.ctypes.data)
        lib.cblas_sgemm_compute.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_int] * 2 + [
            ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        lib.cblas_sgemm_compute.restype = None
        return lambda: lib.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, m, n, k, a.ctypes.data, k,
                                               packed.ctypes.data, n, 0.0, c.ctypes.data, n) or c
    if name == "onnxruntime":
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "linear",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, list(c.shape))],
                                  [numpy_helper.from_array(b, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = onnxruntime.InferenceSession(model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, {"a": a})[0]
    raise ValueError(f"unknown candidate {name!r}; one of {', '.join(CANDIDATES)}")


def worker(name, rows, reps):
    """One round of one candidate: for each row count and layer, the median seconds of ``reps`` products."""
    rng, out = np.random.default_rng(0), {}
    for m in rows:
        for layer, (k, n) in LAYERS.items():
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            f = product(name, a, b)
            err = float(np.abs(f() - a @ b).max())
            if err > 1e-3 * np.sqrt(k):
                raise AssertionError(f"{name} {m}x{k}x{n}: max error {err:.3g} against NumPy")
            for _ in range(5):
                f()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            out[f"{m}x{k}x{n}"] = float(np.median(ts))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[197, 98], help="token rows (197: DeiT-S batch 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, each candidate once a round")
    p.add_argument("--reps", type=int, default=50, help="products timed in one round (their median)")
    p.add_argument("--only", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.reps)))
        return 0
    env = dict(os.environ, GEMM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    times, skipped = {}, {}
    for _ in range(args.rounds):
        for name in args.only:
            if name in skipped:
                continue
            cmd = [sys.executable, __file__, "--worker", name, "--reps", str(args.reps), "--rows",
                   *map(str, args.rows)]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if run.returncode:
                skipped[name] = run.stderr.strip().splitlines()[-1]
                continue
            for shape, t in json.loads(run.stdout).items():
                times.setdefault(name, {}).setdefault(shape, []).append(t)
    rates = {name: {shape: [2 * np.prod([int(d) for d in shape.split("x")]) / t / 1e9 for t in ts]
                    for shape, ts in by.items()} for name, by in times.items()}
    result = {"threads": args.threads, "rounds": args.rounds, "reps": args.reps, "dtype": "float32",
              "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "skipped": skipped,
              "gflops": {n: {s: {"median": float(np.median(r)), "min": min(r), "max": max(r)}
                             for s, r in by.items()} for n, by in rates.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    shapes = [f"{m}x{k}x{n}" for m in args.rows for k, n in LAYERS.values()]
    print(f"sgemm GFLOP/s, median [min-max] of {args.rounds} interleaved rounds, float32, "
          f"{args.threads} thread(s)\n")
    print("| rows x K x N | " + " | ".join(rates) + " |\n|---|" + "---|" * len(rates))
    for s in shapes:
        cells = [f"{np.median(r[s]):.0f} [{min(r[s]):.0f}-{max(r[s]):.0f}]" for r in rates.values()]
        print(f"| {s} | " + " | ".join(cells) + " |")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
