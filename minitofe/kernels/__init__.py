"""Fast twins of reference functions: Numba kernels on the CPU (docs/contributing.md §5, "reference first,
fast second").

Every fast function here has the *name and signature* of a NumPy reference elsewhere in the package
(``gather_tokens`` of ``tofe.tokens``, ``layernorm_forward`` of ``nn.layers``, ``block_forward`` of
``nn.block`` ...) and ``tests/test_kernels.py`` checks it against that reference on random and
non-contiguous inputs. The model code (``nn/``, ``tofe/``) never imports this package: the caller at
the top (``predict``, the trainer, the bench) makes the choice once and hands the result down,

    logits, info = tofe_inference(params, images, cfg, tcfg, ops=ops(fast, like=images))

where ``ops`` returns the namespace of fast twins (attribute ``fast=True``) when ``fast`` is true, Numba
is installed (and not disabled with ``MINITOFE_NO_NUMBA=1``) and the ``like`` arrays are NumPy arrays,
else None, which the model code reads as its own reference (``tofe.ops.REFERENCE``); on CuPy arrays
the reference, written against ``get_xp``, *is* the GPU path. Numba is imported only when a fast
function is first asked for, so the reference path never pays its import or compile time; compiled code
is cached on disk (``cache=True``), so later processes do not compile again either.

Modules: ``mathf`` (jit settings, vectorisable float32 erf and exp), ``tokens`` (gather / scatter /
pack / unpack), ``layers`` (LayerNorm, GELU and their backwards), ``softmax`` (the masked softmax over
keys and its backward), ``attention`` (inference attention as batched BLAS), ``threads`` (BLAS thread
counts sized per call, lanes for work the BLAS should not split) and ``block`` (the block
forward/backward, the cache-free inference runner with buffer reuse). The strict fake GPU array type of
the tests is not a kernel: it lives in ``minitofe.testing.fakedevice``.
"""
import contextlib
import functools
import importlib
import importlib.util
import os
import threading
from types import SimpleNamespace

from ..backend import is_host

# reference name -> module of this package holding its fast twin
REGISTRY = {
    "gather_tokens": "tokens", "scatter_tokens": "tokens", "pack_rows": "tokens", "unpack_rows": "tokens",
    "layernorm_forward": "layers", "layernorm_backward": "layers", "gelu_forward": "layers",
    "gelu_backward": "layers", "linear_forward": "layers", "masked_softmax_forward": "softmax",
    "masked_softmax_backward": "softmax",
    "block_forward": "block", "block_backward": "block", "run_blocks": "block",
    "ragged_block_forward": "block",
}
_fast = None
_LAUNCH = threading.RLock()     # serialises kernel launches: the workqueue layer is not thread-safe


def available():
    """True when the Numba kernels can be used (Numba importable, ``MINITOFE_NO_NUMBA`` not set)."""
    if os.environ.get("MINITOFE_NO_NUMBA", "") not in ("", "0"):
        return False
    return importlib.util.find_spec("numba") is not None      # not imported here: see kernels.mathf


def fast_kernels():
    """The namespace of fast functions (``REGISTRY``'s names), or None when Numba is unavailable."""
    global _fast
    if _fast is None and available():
        _pick_threading_layer()
        _fast = SimpleNamespace(fast=True, **{
            name: _serialised(getattr(importlib.import_module(f"{__name__}.{mod}"), name))
            for name, mod in REGISTRY.items()})
    return _fast if available() else None


def _pick_threading_layer():
    """Run Numba's parallel kernels on its own ``workqueue`` thread pool unless the user chose a layer
    (``NUMBA_THREADING_LAYER``). Numba's default, OpenMP, stalls when another OpenMP runtime shares the
    process: torch's threads spin between its ops and the sleeping Numba threads wake late on every
    kernel launch. Measured on 2 cores in one process with timm (``minitofe bench``'s setting), DeiT-S
    dense fast path: 2.1 img/s with OpenMP against 10.3 with workqueue at batch 1, 11.3 against 13.8 at
    batch 32; without torch workqueue costs ~5 % (14.0 against 13.2 img/s at batch 32). Workqueue is not
    thread-safe, hence the lock in ``_serialised``. Set in the environment (Numba re-reads its config from
    there) before the first parallel launch; after it the layer is fixed and this changes nothing."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
        import numba
        numba.config.THREADING_LAYER = "workqueue"


def _serialised(f):
    """``f`` holding the launch lock: calls from several Python threads run one after the other."""
    @functools.wraps(f)
    def call(*args, **kwargs):
        with _LAUNCH:
            return f(*args, **kwargs)
    return call


def use_fast(fast, like=()):
    """Whether ``ops(fast, like)`` hands down the fast twins for these arrays (the CLI reports it)."""
    like = like if isinstance(like, (tuple, list)) else (like,)
    return bool(fast) and is_host(*like) and fast_kernels() is not None


def ops(fast, like=()):
    """The fast twins' namespace (``fast_kernels()``) if ``use_fast(fast, like)``, else None: hand it to
    the model code's ``ops=`` (None runs the reference)."""
    return fast_kernels() if use_fast(fast, like) else None


def thread_scope(fast, like=()):
    """A context for one whole call on the fast path (a ToFe forward, its reference NumPy parts included):
    the BLAS's threads sized to the cores other processes leave free (``threads.sized_blas``), and the
    process's ``malloc`` keeping freed memory for the next call (``minitofe.heap``, glibc only; the
    process keeps its peak memory); nothing when ``use_fast`` is false."""
    if not use_fast(fast, like):
        return contextlib.nullcontext()
    from .threads import sized_blas
    from ..heap import keep_freed_memory
    keep_freed_memory()
    return sized_blas()


def release_buffers():
    """Free the fast inference workspace (see ``kernels.block``); a no-op when it was never used."""
    if _fast is not None:
        importlib.import_module(f"{__name__}.block").release_buffers()
