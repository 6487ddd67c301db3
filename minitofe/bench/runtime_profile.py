"""Where onnxruntime's time goes, in the kinds ``bench.profile`` sorts minitofe's into, so the two can be
read side by side (``minitofe bench --sections profile`` when onnxruntime is installed).

onnxruntime's own profiler (``SessionOptions.enable_profiling``) times every node of the optimised graph;
``ort_breakdown`` runs the session, reads that file and sums the node times by kind. A MatMul whose second
input is a 2-D constant is a linear layer, one of two activations (q k^T, A v) an attention product;
their GFLOP/s come from the shapes the profiler records. Node times are the kernels' own: the rest of a
call (the runtime's scheduling, copying the inputs in and the logits out) is reported as "other".
"""
import json
import os
import tempfile
import time

import numpy as np

LINEAR, ATTENTION = "linear layers (sgemm)", "attention products (sgemm)"
# onnxruntime's op types (after its graph optimisations) -> the kinds minitofe's profile uses
KINDS = {"Softmax": "softmax", "LayerNormalization": "layer norm",
         "SkipLayerNormalization": "residual + layer norm",
         "BiasGelu": "bias + GELU", "Gelu": "bias + GELU", "FastGelu": "bias + GELU", "Erf": "bias + GELU",
         "Add": "residual, bias", "Conv": "embedding", "Mul": "attention scale", "Div": "attention scale",
         "Sqrt": "attention scale"}
LAYOUT = ("Transpose", "Reshape", "Split", "Squeeze", "Unsqueeze", "Slice", "Concat", "Gather", "Shape",
          "Expand", "Cast", "ReorderOutput", "ReorderInput")


def _shapes(args, key="input_type_shape"):
    """The input (or output) shapes the profiler recorded for one node (a list of lists of ints)."""
    return [next(iter(d.values())) for d in args.get(key, [])]


def _matmul(args):
    """(kind, flops) of one MatMul-like node from its recorded shapes. The profiler lists the activation
    inputs only: a constant weight is missing from them, so one recorded input is a linear layer whose
    output width comes from the output's shape; two are an attention product (q k^T or A v)."""
    shapes, out = _shapes(args), _shapes(args, "output_type_shape")
    if not shapes or not out or len(shapes[0]) < 2:
        return LINEAR, 0.0
    a = shapes[0]
    rows = float(np.prod(a[:-1]))                      # every leading axis: batch (and heads) x rows
    if len(shapes) == 1 or len(shapes[1]) == 1:        # (..., K) x constant (K, N) [+ bias]
        return LINEAR, 2.0 * rows * a[-1] * out[0][-1]
    return ATTENTION, 2.0 * rows * a[-1] * shapes[1][-1]


def kind_of(op):
    if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits"):
        return LINEAR                                  # refined by ``_matmul`` from the shapes
    if op in KINDS:
        return KINDS[op]
    return "layout (transpose, split, reshape)" if op in LAYOUT else "other nodes"


def read_profile(path, runs):
    """onnxruntime's profile file -> ({kind: seconds a run}, {kind: GFLOP/s} of the two matmul kinds),
    over the last ``runs`` runs it recorded (the warm-up calls before them are left out)."""
    with open(path) as f:
        events = json.load(f)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    if len(windows) < runs:
        raise ValueError(f"{path}: {len(windows)} runs profiled, {runs} asked for")
    inside = lambda ts: any(lo <= ts <= hi for lo, hi in windows)           # noqa: E731
    seconds, flops = {}, {LINEAR: 0.0, ATTENTION: 0.0}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or not inside(e["ts"]):
            continue
        args = e.get("args", {})
        kind = kind_of(args.get("op_name", ""))
        if kind == LINEAR:
            kind, f = _matmul(args)
            flops[kind] += f
        seconds[kind] = seconds.get(kind, 0.0) + e["dur"] * 1e-6
    seconds = {k: v / runs for k, v in seconds.items()}
    gflops = {k: flops[k] / runs / seconds[k] / 1e9 for k in flops if seconds.get(k)}
    return seconds, gflops


def ort_breakdown(path, threads, x, calls=5):
    """Run the ONNX model at ``path`` on ``x`` (the bench's session settings, profiling on) ``calls``
    times after two untimed calls -> {"forward_s", "seconds": {kind: s}, "gflops": {...}}."""
    import onnxruntime as ort
    from .runtimes import session_options
    options = session_options(threads)
    folder = tempfile.mkdtemp(prefix="minitofe-ort-profile-")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(2):
        session.run(None, {name: x})
    t0 = time.perf_counter()
    for _ in range(calls):
        session.run(None, {name: x})
    wall = (time.perf_counter() - t0) / calls
    prof = session.end_profiling()
    try:
        seconds, gflops = read_profile(prof, calls)
    finally:
        os.remove(prof)
        os.rmdir(folder)
    seconds["other (scheduling, copies in and out)"] = max(0.0, wall - sum(seconds.values()))
    return {"forward_s": wall, "seconds": seconds, "gflops": gflops}


def ort_profile(quick, threads, sizes, calls=None):
    """The profile section's onnxruntime half: the dense contender's ONNX file (exported once and checked
    against timm eager, ``runtimes.build_onnxruntime``) broken down at each batch size of ``sizes`` ->
    {"file", "rows": [{"batch", "forward_s", "seconds", "gflops"}]}, or {"skipped": why}."""
    from .contenders import images
    from .runtimes import build_onnxruntime, skipped
    why = skipped().get("onnxruntime")
    if why:
        return {"skipped": why}
    path = build_onnxruntime(quick, threads).info["file"]
    rows = [dict(batch=B, **ort_breakdown(path, threads, images(B), calls or (1 if quick or B > 8 else 5)))
            for B in sizes]
    return {"file": path, "rows": rows}
