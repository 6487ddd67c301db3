"""Numba gather / scatter of token rows and pack / unpack of ragged batches.

Same names and signatures as the references in ``minitofe.tofe.tokens`` and ``minitofe.tofe.ragged``.
All four are two compiled loops over rows of the (B * N, F) view of the tokens: ``_take_rows`` (output
row r <- source row ``src[r]``: gather and pack) and ``_merge_rows`` (output row m <- a given row, or
``base`` row m: scatter and unpack). Each output row is written exactly once, from exactly one source
row, so every function moves the bytes of one plain copy of its output and no more: ``scatter`` does
not copy ``base`` and then overwrite the kept rows (two passes, as the reference does).

What made them slower than a copy was not the loop but the memory: a plain copy streams, a gather
jumps to rows the hardware prefetcher cannot guess. So each loop asks for the source row it will copy
``AHEAD`` rows later (``_prefetch``, LLVM's prefetch hint) while it copies this one. Measured on one
core, DeiT-S sizes (batch 32, 99 of 197 tokens), call by call against the copy in the same process:
the gather loop 1.07x a copy without the hint, 0.95-1.05x with it, the whole ``gather_tokens`` (index
bookkeeping in one compiled pass, ``_flat_rows``) ~1.1x; the scatter loop ~1.3-1.5x with or without
the hint: taking rows from two sources in a random interleaving costs more than one stream, and this
is where the 1.1x target is not met. The loops run on one core: the work is memory-bound and waking
a second thread costs as much as a gather at batch 8.
Indices are checked in Python first (a compiled loop does not raise ``IndexError``: it would read
outside the array).
"""
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .mathf import jit

AHEAD = 3                  # rows: far enough for the hint to land, near enough to stay in the L1 cache
LINE = 64                  # bytes in a cache line


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to load the cache line of ``arr[row, col]`` (2-D): no effect on results."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
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
    for r in range(K):
        if r + AHEAD < K:
            _hint_row(x, src[r + AHEAD])
        s = src[r]
        for c in range(F):
            out[r, c] = x[s, c]


@jit
def _merge_rows(base, rows, src, out):
    """out[m] = rows[src[m]] where src[m] >= 0, else base[m] (base, out (M, F), rows (K, F))."""
    M, F = src.shape[0], base.shape[1]
    for m in range(M):
        if m + AHEAD < M:
            s = src[m + AHEAD]
            if s >= 0:
                _hint_row(rows, s)
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
    ok = True
    for b in range(B):
        for k in range(K):
            n = np.int64(idx[b, k])
            ok = ok and -N <= n < N
            flat[b * K + k] = b * N + (n + N if n < 0 else n)
    return flat, ok


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
    M = int(np.prod(a.shape[:lead], dtype=np.int64))
    return np.ascontiguousarray(a).reshape(M, int(np.prod(a.shape[lead:], dtype=np.int64)))


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
    out = np.empty(base.shape, dtype=base.dtype)
    _merge_rows(_rows(base), _rows(rows), _source_map(src, B * N), _rows(out))
    return out


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
    out = np.empty(base.shape, dtype=base.dtype)
    packed = packed.astype(base.dtype, copy=False)
    _merge_rows(_rows(base), _rows(packed, lead=1), _source_map(src, B * N), _rows(out))
    return out
