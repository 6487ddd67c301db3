"""Numba gather / scatter of token rows and pack / unpack of ragged batches.

Same names and signatures as the references in ``minitofe.tofe.tokens`` and ``minitofe.tofe.ragged``.
All four are compiled loops over rows of the (B * N, F) view of the tokens: ``_take_rows`` (output row
r <- row ``src[r]``: gather, pack) and ``_merge_rows`` (output row m <- a given row, or ``base`` row m:
scatter, unpack). Each output row is written once, from one source row: a plain copy's bytes.

Measured at DeiT-S sizes (batch 32, 99 of 197 tokens, float32, a 4.9 MB gather from 9.7 MB), one thread,
the idle machine, each variant alone in a fresh process (300 calls after 30 untimed; five interleaved
rounds), against ``x[:, :K].copy()`` (the gather) and ``x.copy()`` (the scatter):

- on the copy's own rows (the first K of every image: the same bytes), ``_take_rows`` runs at 0.99-1.03x
  the copy. The loop is a copy's loop: it compiles to the same four 64-byte loads and stores an
  iteration as glibc's ``memcpy``.
- on the scattered rows it runs at 1.23-1.27x, whatever the prefetching (none, every row, only where a
  run of rows begins, 1-8 rows ahead, 2-24 lines of a row: 1.19-1.31x). The rows' pattern is the cost:
  glibc's ``memcpy`` called per row, from C, is 1.33x (1.05x on the copy's rows), ``np.take`` 1.41x. A
  row (1.5 KB) is too short for the hardware prefetcher to reach full speed before the next row starts
  elsewhere. ``gather_tokens`` adds 0.05x for its index pass and its calls.
- the scatter's merge is 1.28x (1.13x on the copy's rows), 1.49x without the hints below.

So each kernel asks, ``AHEAD`` rows early, for a row it will copy (``_hint_row``), into the L2 cache
only: prefetching into L1 as well took the L1's miss buffers from the copy. The gather asks only where a
run of consecutive rows begins (inside a run the hardware prefetcher is streaming already, and hints
there cost 0.15x: 1.16x on the copy's rows); the merge asks for every row (asking only at a run's start:
1.32x). Not the cause either: glibc's copy (ordinary stores; its non-temporal threshold is 240 MB here),
page faults (none), branches (the merge's choice of source per row: 1.0x at batch 1), where the output
lies from its source (11 offsets modulo 4 KiB), coalesced runs, two passes (one per source: 1.6-1.8x),
``rep movsb`` (1.4x per row, 1.9x per image). Writing the output with non-temporal stores (past the
caches) brought the scatter alone to 1.1-1.5x, but its output is read at once (the approximator's rows
are written into it, then the next stage reads it all), and scatter + that write + the next gather took
9-11 % longer streamed: not used.
The bench reports ``fast_first`` (these kernels on the copy's rows) beside ``fast``, to show the split.
One core: waking a second thread costs as much as a gather at batch 8. Indices are checked in the
compiled pass; Python raises the ``IndexError``.
"""
import math

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .mathf import jit

AHEAD = 2                  # rows: far enough for the hint to land, near enough to stay in the L2 cache
LINE = 64                  # bytes in a cache line
HINT_BYTES = 4 << 20       # hint only larger sources: at batch 4 (1.2 MB) the hints cost more than they gave


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to load the cache line of ``arr[row, col]`` (2-D) into its L2 cache (``prefetcht1``; into
    L1 as well, ``prefetcht0``, the hints of a whole row took the L1's miss buffers from the copy itself,
    and the gather and the scatter ran 10-20 % slower): no effect on results."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, locality 2 (prefetcht1: L2 and beyond), data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.intp), codegen


@jit
def _hint_row(a, r):
    step = max(1, LINE // a.itemsize)
    for c in range(0, a.shape[1], step):
        _prefetch(a, r, c)


@jit
def _take_rows(x, src, out):
    """out[r] = x[src[r]] for x (R, F), src (K,) valid row indices, out (K, F)."""
    K, F = src.shape[0], x.shape[1]
    hint = x.size * x.itemsize > HINT_BYTES
    for r in range(K):
        a = r + AHEAD
        if hint and a < K and src[a] != src[a - 1] + 1:     # only where a run of rows begins
            _hint_row(x, src[a])
        s = src[r]
        for c in range(F):
            out[r, c] = x[s, c]


@jit
def _merge_rows(base, rows, src, out):
    """out[m] = rows[src[m]] where src[m] >= 0, else base[m] (base, out (M, F), rows (K, F))."""
    M, F = src.shape[0], base.shape[1]
    hint = base.size * base.itemsize > HINT_BYTES
    for m in range(M):
        if hint and m + AHEAD < M:
            t = src[m + AHEAD]
            if t >= 0:
                _hint_row(rows, t)
            else:
                _hint_row(base, m + AHEAD)
        s = src[m]
        if s >= 0:
            for c in range(F):
                out[m, c] = rows[s, c]
        else:
            for c in range(F):
                out[m, c] = base[m, c]


@jit
def _source_map(src, M):
    """map[m] = r where src[r] == m (the last such r, as NumPy's assignment), else -1."""
    out = np.full(M, -1, dtype=np.int64)
    for r in range(src.shape[0]):
        out[src[r]] = r
    return out


@jit
def _flat_rows(idx, N):
    """(B, K) token indices (negative ones from the end) -> (B * K,) rows of the (B * N, F) view, and
    whether every index was in range (one compiled pass: in NumPy this bookkeeping cost a fifth of a
    gather at batch 32)."""
    B, K = idx.shape
    flat = np.empty(B * K, dtype=np.int64)
    bad = False
    for b in range(B):
        for k in range(K):
            n = np.int64(idx[b, k])
            n = n + N if n < 0 else n
            bad |= (n < 0) | (n >= N)                   # no early exit: the loop stays vectorised
            flat[b * K + k] = b * N + n
    return flat, not bad


def _check_range(idx, N, what):
    if idx.size and (int(idx.min()) < -N or int(idx.max()) >= N):
        raise IndexError(f"{what}: index out of range for {N} tokens (min {int(idx.min())}, "
                         f"max {int(idx.max())})")


def _flat(idx, N, what):
    """Checked ``_flat_rows``: IndexError naming the offending range."""
    idx = np.asarray(idx)
    flat, ok = _flat_rows(idx, N)
    if not ok:
        _check_range(idx, N, what)
    return flat


def _rows(a, lead=2):
    """(B, N, ...) -> the (B * N, F) rows (``lead=1``: (M, ...) -> (M, F)), a view when ``a`` is
    C-contiguous, else a copy."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(math.prod(a.shape[:lead]), math.prod(a.shape[lead:]))


def _merged(base, rows, src):
    """A new array like ``base`` (B, N, ...) with row m of its (B * N, F) view ``rows[src[m]]`` where
    src[m] >= 0, else the same row of ``base``."""
    out = np.empty(base.shape, dtype=base.dtype)
    _merge_rows(_rows(base), rows, src, _rows(out))
    return out


def gather_tokens(x, kept_idx):
    """x: (B, N, C), kept_idx: (B, K) -> (B, K, C) with out[b, k] = x[b, kept_idx[b, k]]."""
    src = _flat(kept_idx, x.shape[1], "gather_tokens")
    out = np.empty((x.shape[0], kept_idx.shape[1]) + x.shape[2:], dtype=x.dtype)
    _take_rows(_rows(x), src, _rows(out))
    return out


def scatter_tokens(base, rows, kept_idx):
    """base: (B, N, C), rows: (B, K, C) -> a copy of base with out[b, kept_idx[b, k]] = rows[b, k]."""
    B, N = base.shape[:2]
    src = _flat(kept_idx, N, "scatter_tokens")
    want = tuple(kept_idx.shape) + base.shape[2:]
    rows = np.asarray(rows, dtype=base.dtype)
    if rows.shape != want:                    # broadcast as the reference's assignment does
        rows = np.broadcast_to(rows, want)
    return _merged(base, _rows(rows), _source_map(src, B * N))


def _ragged_rows(idx_list, B, N):
    """The (B * N, F) row of each listed token, and the offsets of the images' segments."""
    counts = [len(i) for i in idx_list]
    offsets = [0] + np.cumsum(counts, dtype=np.int64).tolist()
    flat = np.concatenate([np.asarray(i, dtype=np.int64).ravel() for i in idx_list]) if B else \
        np.zeros(0, np.int64)
    _check_range(flat, N, "ragged index")
    image = np.repeat(np.arange(B, dtype=np.int64), counts)
    return np.where(flat < 0, flat + N, flat) + N * image, offsets


def pack_rows(x, idx_list):
    """x: (B, N, C), idx_list: B ascending index arrays -> packed (M, C), offsets (B + 1,) list."""
    src, offsets = _ragged_rows(idx_list, x.shape[0], x.shape[1])
    out = np.empty((len(src), x.shape[2]), dtype=x.dtype)
    _take_rows(_rows(x), src, out)
    return out, offsets


def unpack_rows(base, packed, idx_list, offsets):
    """Write the packed rows back to their positions in a copy of ``base`` (B, N, C)."""
    B, N = base.shape[:2]
    src, want = _ragged_rows(idx_list, B, N)
    if [int(o) for o in offsets] != want or packed.shape[0] != len(src):
        raise ValueError(f"unpack_rows: offsets {list(offsets)} / packed rows {packed.shape[0]} do not "
                         f"match the index lists (counts {[len(i) for i in idx_list]})")
    packed = packed.astype(base.dtype, copy=False)
    return _merged(base, _rows(packed, lead=1), _source_map(src, B * N))
