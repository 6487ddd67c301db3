"""The dense section's optional runtimes, beside timm eager: the runtimes a user would pick for CPU
inference of the same timm model (same random weights, same inputs).

    onnxruntime     the model exported once to ONNX (cached on disk: ``bench.onnx_cache``), run by an
                    ``onnxruntime.InferenceSession``: ORT_ENABLE_ALL, ``intra_op_num_threads`` the bench's
                    ``--threads`` (else 0, ORT's default), one inter-op thread, sequential execution,
                    CPUExecutionProvider only
    torch_compile   the model under ``torch.compile`` (inductor, ``mode=None``), called under
                    ``torch.inference_mode()``; compiled while the contender is built, never in a timed call

Each is built in its contender's own process and checked there before it is timed: its logits must be
the eager model's on every input it will be timed on (``check_logits``), so a runtime that computes
something else stops the bench instead of being timed. ``skipped()`` says which contenders are left out
and why (a package that does not import, no C++ compiler for inductor).
"""
import importlib
import os
import shutil
import time

import numpy as np

from .contenders import batches, dense_model, images, timm_model, torch_timm
from .macs import Calls
from .onnx_cache import cache_dir, cache_key, cached_export

# The opset the export asks for: what torch 2.14's exporter writes by default (20), named so that it is in
# the cache key and stays put when torch's default moves.
OPSET = 20
TOLERANCE = 1e-4                 # logits against the eager model's, relative to their largest magnitude


def _missing(*modules):
    """Why the first of ``modules`` that does not import cannot be used, or None when all import."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing = getattr(e, "name", None) == name           # not the import of one of its own parts
            return f"{name} not installed" if missing else f"{name} does not import: {e}"
    return None


def _no_compiler():
    cxx = os.environ.get("CXX") or "g++"              # what inductor's C++ backend compiles with
    return None if shutil.which(cxx.split()[0]) else f"no C++ compiler for torch.compile's inductor ({cxx})"


def _old_torch():
    version = importlib.import_module("torch").__version__
    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2])
    return f"torch {version}'s ONNX exporter predates dynamo=True (2.5)" if (major, minor) < (2, 5) else None


def skipped():
    """{contender: why it is left out} for the dense section's optional contenders (timm, onnxruntime,
    torch_compile); those that can run are not in it."""
    base = _missing("torch", "timm")
    why = {"timm": base,
           # onnxscript: what torch's dynamo exporter translates the graph with
           "onnxruntime": base or _missing("onnx", "onnxscript", "onnxruntime") or _old_torch(),
           "torch_compile": base or _no_compiler()}
    return {c: reason for c, reason in why.items() if reason}


def check_logits(out, want, what):
    """Max |out - want| over the logits; raises ValueError when it exceeds ``TOLERANCE`` times the
    largest magnitude of ``want`` (at least 1): the contender ``what`` computes something else."""
    err = float(np.max(np.abs(np.asarray(out) - np.asarray(want))))
    scale = max(1.0, float(np.max(np.abs(want))))
    if not err <= TOLERANCE * scale:
        raise ValueError(f"{what}: logits differ from timm eager's by up to {err:.3g} (allowed {TOLERANCE:g}"
                         f" x {scale:.3g}); a contender that computes something else is not timed")
    return err


def _eager(model, inputs):
    torch, _ = torch_timm()
    with torch.inference_mode():
        return {B: model(torch.from_numpy(x)).numpy() for B, x in inputs.items()}


def export_onnx(model, dest):
    """``model`` to ONNX at ``dest`` (one file, weights inside), its batch axis dynamic.

    The exporter: torch.export-based (``dynamo=True``), torch's default since 2.9. The TorchScript one
    (``dynamo=False``) also exports DeiT and runs as fast in ORT (10.9 against 10.7 img/s at batch 1, one
    thread), but torch 2.14 flags it deprecated and to be removed, and its tracer warns that it turns
    tensors into Python constants. One file with a dynamic batch axis serves batch 1 / 8 / 32: against an
    export per batch it took 1.03 / 0.99 / 0.92 times the time (median of per-round ratios, DeiT-S, one
    thread, a busy 2-core machine), no cost beyond the noise."""
    torch, _ = torch_timm()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (torch.from_numpy(images(2)),), dest, dynamo=True, external_data=False,
                      opset_version=OPSET, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},))


def session_options(threads):
    """The bench's onnxruntime session options (``threads`` None: ORT's default intra-op pool)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads) if threads else 0        # 0: ORT's default
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def ort_session(path, threads):
    """An onnxruntime session on ``path`` with the bench's settings (``session_options``)."""
    import onnxruntime as ort
    return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])


def _versions():
    """The versions that decide what the export writes (the cache key's)."""
    return {lib: importlib.import_module(lib).__version__ for lib in ("torch", "timm", "onnx", "onnxscript")}


def build_onnxruntime(quick, threads=None):
    """The onnxruntime contender's calls {"batch<B>": run the session on that batch}, with ``.info``: the
    session's settings as it reports them, the file and the logits' distance to the eager model's."""
    import onnx
    import onnxruntime as ort
    name = dense_model(quick)
    model = timm_model(name)
    inputs = {B: images(B) for B in batches("dense", quick)}
    want = _eager(model, inputs)
    path = os.path.join(cache_dir(), cache_key(name, _versions(), OPSET, "dynamic-batch"))

    def load(p):
        session = ort_session(p, threads)
        feed = session.get_inputs()[0].name
        diffs = {f"batch{B}": check_logits(session.run(None, {feed: x})[0], want[B], f"onnxruntime on {p}")
                 for B, x in inputs.items()}
        return session, feed, diffs
    (session, feed, diffs), exported = cached_export(path, lambda dest: export_onnx(model, dest), load)
    options = session.get_session_options()
    graph = onnx.load(path, load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in graph.opset_import}
    calls = Calls({f"batch{B}": (lambda x=x: session.run(None, {feed: x})) for B, x in inputs.items()})
    calls.info = {"onnxruntime": ort.__version__,
                  "graph_optimization_level": options.graph_optimization_level.name,
                  "intra_op_num_threads": options.intra_op_num_threads,          # 0: ORT's default
                  "inter_op_num_threads": options.inter_op_num_threads,
                  "execution_mode": options.execution_mode.name, "providers": session.get_providers(),
                  "opset": opsets.get("ai.onnx"), "exporter": "torch.onnx.export(dynamo=True)",
                  "dynamic_batch": True, "file": path, "file_bytes": os.path.getsize(path),
                  "exported_this_run": exported, "max_abs_diff_vs_eager": diffs}
    return calls


def build_torch_compile(quick, threads=None):
    """The torch_compile contender's calls {"batch<B>": the compiled forward}, compiled here (one graph per
    batch size) and checked against the eager model; ``.info``: compile seconds, the logits' distance.

    ``dynamic=False``: one graph specialised to each batch size, as a server with a fixed batch compiles.
    By default (``dynamic=None``) the second batch size recompiles into a shape-generic graph that the
    third reuses, so batch 1 would run one kind of graph and batch 8 / 32 another. ``mode=None``, what a
    plain ``torch.compile(model)`` gives. "max-autotune-no-cudagraphs" was tried on DeiT-S (one thread, a
    2-core machine loaded by other jobs): it compiled about twice as long at batch 32 (75 against 35 s;
    it times candidate GEMM kernels) and ran at 1.05x / 1.29x eager's speed at batch 1 / 32, where the
    default ran at 0.94x / 1.17x in the same conditions: a gain no larger than that machine's noise."""
    torch, _ = torch_timm()
    model = timm_model(dense_model(quick))
    compiled = torch.compile(model, mode=None, dynamic=False)
    inputs = {B: images(B) for B in batches("dense", quick)}
    want = _eager(model, inputs)

    def forward(xt):
        with torch.inference_mode():
            return compiled(xt)
    calls, info = Calls(), {"backend": "inductor", "mode": None, "dynamic": False, "torch": torch.__version__,
                            "compile_s": {}, "max_abs_diff_vs_eager": {}}
    for B, x in inputs.items():
        key, xt = f"batch{B}", torch.from_numpy(x)
        t0 = time.perf_counter()
        out = forward(xt)                                    # the first call compiles
        info["compile_s"][key] = time.perf_counter() - t0
        info["max_abs_diff_vs_eager"][key] = check_logits(out.numpy(), want[B], "torch.compile")
        calls[key] = lambda xt=xt: forward(xt)
    calls.info = info
    return calls


def build_runtime(contender, quick, threads=None):
    return {"onnxruntime": build_onnxruntime, "torch_compile": build_torch_compile}[contender](quick, threads)
