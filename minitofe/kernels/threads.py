"""BLAS thread counts sized per call, and a small pool of lanes for work the BLAS should not split.

Why: a multi-threaded BLAS synchronises its threads inside every call. For a large GEMM (a linear layer
over a batch) that costs nothing next to the arithmetic; for a small one (one image's attention scores,
a linear layer of a tiny model) the wake-up and the barrier cost more than the product, and on a busy
machine a descheduled BLAS thread stalls the others at every barrier (measured on 2 shared cores: the
batched score product of one DeiT-S image went from 2 ms to 200 ms). So the fast path asks for
``gemm_threads(m, n, k)``: all of the BLAS's threads for products of at least ``MIN_MACS_PER_THREAD``
multiply-adds a thread, one below that; and it splits attention itself, one image / head group per lane,
each lane calling a one-thread BLAS (``run_lanes``): one barrier per block instead of one per GEMM.

The ceiling is what the BLAS has when a forward starts (``OPENBLAS_NUM_THREADS``, a caller's
``threadpoolctl.threadpool_limits`` ...), lowered to the cores that other processes leave free
(``free_cores``: on Linux, the runnable threads of /proc/loadavg that are not this process's own):
with a training job on one of two cores, a two-thread BLAS waits at every barrier for the thread the
scheduler gave away (measured: DeiT-Ti at batch 1 ran at 0.7 img/s with two threads, timm and the
reference alike, against ~25 with one). ``sized_blas()`` reads it, the forward lowers it per call and
restores the entry count on the way out (``kernels.thread_scope`` opens it around a whole ToFe forward,
so that its reference NumPy parts run inside it too). Nothing here imports the CLI;
``minitofe.cli.common.blas_threads_for`` is the same idea at the level of a whole command.
"""
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MIN_MACS_PER_THREAD = 2 ** 22     # ~4 M multiply-adds, ~0.05 ms on one core: below, one thread is faster
ROW_COST = 32                      # one element of an element-wise pass, in multiply-adds of the same time
_state = threading.local()
_lock = threading.Lock()
_blas = None                       # the BLAS libraries' threadpoolctl controllers (found once)
_pool = None                       # lanes 1 .. T-1 (lane 0 is the calling thread)
_free = (-1.0, None)               # (when, free cores): looked at most every FREE_EVERY_S seconds
FREE_EVERY_S = 0.25
IGNORE_LOAD = "MINITOFE_IGNORE_LOAD"


def _controllers():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        with _lock:
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def blas_threads():
    """The BLAS's current thread count (the largest over its libraries; 1 when none is found)."""
    counts = [c.get_num_threads() or 1 for c in _controllers()]
    return max(counts, default=1)


def _set(n):
    """Every BLAS library to n threads; a no-op when it already has them."""
    cur = getattr(_state, "current", None)
    if cur != n:
        for c in _controllers():
            c.set_num_threads(n)
        _state.current = n


def _runnable_elsewhere():
    """Threads of other processes that are runnable now (Linux), or None where /proc cannot tell."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])        # runnable threads, this one included
        own = 0
        for task in os.listdir("/proc/self/task"):                   # ours: spinning pool threads count
            with open(f"/proc/self/task/{task}/stat") as f:
                stat = f.read()
            own += stat[stat.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - max(own, 1))


def free_cores():
    """Cores that other processes leave free right now (at least 1; all of them where unknown, or when
    ``MINITOFE_IGNORE_LOAD=1``: the bench sets it in its workers, which it runs one at a time, so that
    the idle contenders' spinning thread pools do not read as load)."""
    global _free
    cores = os.cpu_count() or 1
    if os.environ.get(IGNORE_LOAD, "") not in ("", "0"):
        return cores
    when, free = _free
    now = time.monotonic()
    if now - when > FREE_EVERY_S:
        busy = _runnable_elsewhere()
        free = cores if busy is None else max(1, cores - busy)
        _free = (now, free)
    return free


@contextlib.contextmanager
def sized_blas():
    """The scope of one forward: yields the ceiling T (the BLAS's thread count on entry, at most the
    free cores); inside it ``use_threads(n)`` is cheap, and the entry count is restored on exit."""
    if getattr(_state, "ceiling", None) is not None:          # nested: the outer scope owns the BLAS
        yield _state.ceiling
        return
    entry = blas_threads()
    ceiling = min(entry, free_cores())
    _state.ceiling, _state.current = ceiling, entry
    try:
        yield ceiling
    finally:
        _set(entry)
        _state.ceiling = _state.current = None
        for c in _controllers():                             # let other threads set limits again
            clear = getattr(type(c), "clear_controlling_thread", None)
            if clear is not None:
                clear()


def use_threads(n):
    """Inside ``sized_blas``: the BLAS to min(n, ceiling) threads for the next calls."""
    ceiling = getattr(_state, "ceiling", None)
    if ceiling is not None:
        _set(max(1, min(int(n), ceiling)))


def gemm_threads(m, n, k):
    """Threads for an (m, k) x (k, n) product: the ceiling when every thread gets at least
    ``MIN_MACS_PER_THREAD`` multiply-adds, else 1 (inside ``sized_blas``; 1 outside it)."""
    ceiling = getattr(_state, "ceiling", None) or 1
    return ceiling if m * n * k >= MIN_MACS_PER_THREAD * ceiling else 1


def lanes_for(macs):
    """How many lanes to split ``macs`` multiply-adds of work over (1: run inline): at most the ceiling
    (outside ``sized_blas``: the BLAS's thread count, or the free cores if fewer), at least
    ``MIN_MACS_PER_THREAD`` a lane."""
    ceiling = getattr(_state, "ceiling", None) or min(blas_threads(), free_cores())
    return max(1, min(ceiling, int(macs // MIN_MACS_PER_THREAD)))


def for_rows(M, row_cost, fn):
    """``fn(lo, hi)`` over rows 0 .. M-1: inline when small, else one contiguous share per lane
    (``row_cost``: a row's work in multiply-adds, ``ROW_COST`` an element for element-wise passes)."""
    lanes = min(M, lanes_for(M * row_cost))
    if lanes <= 1:
        fn(0, M)
        return
    run_lanes(lambda lane: fn(lane * M // lanes, (lane + 1) * M // lanes), lanes)


def _lane(work, lane):
    for c in _controllers():            # an OpenMP-built BLAS keeps one limit per calling thread
        if getattr(c, "threading_layer", None) == "openmp":
            c.set_num_threads(1)
    work(lane)


def run_lanes(work, lanes):
    """Call ``work(lane)`` for lane in 0 .. lanes-1, lane 0 on this thread, the others on pool threads;
    returns when all are done (re-raising the first error). The BLAS is at one thread meanwhile."""
    global _pool
    if lanes <= 1:
        work(0)
        return
    use_threads(1)
    with _lock:
        if _pool is None or _pool._max_workers < lanes - 1:
            _pool = ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="minitofe-lane")
        pool = _pool
    futures = [pool.submit(_lane, work, lane) for lane in range(1, lanes)]
    try:
        work(0)
    finally:
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
