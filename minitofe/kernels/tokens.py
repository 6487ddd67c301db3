"""Numba gather / scatter of token rows and pack / unpack of ragged batches.

Same names and signatures as the references in ``minitofe.tofe.tokens`` and ``minitofe.tofe.ragged``.
All four are compiled loops over rows of the (B * N, F) view of the tokens: ``_take_rows`` (output row
r <- row ``src[r]``: gather, pack) and ``_merge_rows`` (output row m <- a given row, or ``base`` row m:
scatter, unpack). Each output row is written once, from one source row: a plain copy's bytes.

Measured at DeiT-S sizes (batch 32, 99 of 197 tokens, float32), one thread, both cores busy with two
training runs, contenders interleaved in one process, medians of 150-300 rounds of 8 calls; the figures
move with the load. What costs is memory, not the loops. Gather: ``_take_rows`` 1.1-1.2x a copy of its
output (the copy reads whole images, the gather skips half the rows; ``AHEAD``'s ``_prefetch`` hint
helps a little), ``gather_tokens`` 1.2x (was 1.4x: each ``_rows`` cost 7 us in two ``np.prod`` calls, and
``_flat_rows`` did not vectorise). Scatter: the copy's 9.7 + 9.7 MB stay in what the training runs leave
of the 32 MB L3; the scatter's base rows, kept rows, output and the lines the hardware prefetcher pulls
in beside the skipped rows do not, and ``_merge_rows`` is 1.6-2.0x a copy (1.1x at batch 8, where both
fit). Not the cause: glibc's copy (ordinary stores, its non-temporal threshold is 240 MB here), page
faults (none), two sources as such (two blocks of rows: 1x); per-row ``memcpy`` (1.3x for a plain copy),
coalesced runs and hints did not help. So a merge of ``STREAM_BYTES`` or more writes its output with
non-temporal stores (``_stream_row``: past the caches, no read of the line first) and its inputs stay
cached: ``_stream_merge`` 1.0-1.5x a copy, ``scatter_tokens`` 1.1-1.9x (was 2.3-2.8x; ``minitofe bench``
1.2-1.5x, was 3.0-3.8x), the same streaming of a plain copy 1.0-1.06x: the rest is the skipped rows.
Smaller, streaming loses (1.7x at batch 16 against 1.15x). A streamed output is not cached for its next
reader. One core: waking a second thread costs as much as a gather at batch 8. Indices are checked in
the compiled pass; Python raises the ``IndexError``.
"""
import math

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .mathf import jit

AHEAD = 3                  # rows: far enough for the hint to land, near enough to stay in the L1 cache
LINE = 64                  # bytes in a cache line
STREAM_BYTES = 8 << 20     # outputs of merges this large are streamed (see the module docstring)


def _item_pointer(context, builder, aryty, ary, row, col=None):
    """Pointer to ``ary[row, col]`` (``col`` None: the row's start) of a 2-D array."""
    col = context.get_constant(types.intp, 0) if col is None else col
    return cgutils.get_item_pointer(context, builder, aryty, context.make_array(aryty)(context, builder, ary),
                                    [row, col], wraparound=False)


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to load the cache line of ``arr[row, col]`` (2-D): no effect on results."""
    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1], args[2])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.intp), codegen


@intrinsic
def _stream_row(typingctx, dst, drow, src, srow):
    """dst[drow] = src[srow] with non-temporal stores: written past the caches, without reading the line
    first. C-contiguous 2-D arrays of one dtype; every row of ``dst`` must be whole cache lines from a line
    boundary (``_merged`` sees to it: else the aligned stores fault, or a line gets both kinds of store)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == src.ndim == 2
            and dst.layout == src.layout == "C" and dst.dtype == src.dtype):
        return None

    def codegen(context, builder, signature, args):
        dty, sty = signature.args[0], signature.args[2]
        line = ir.VectorType(ir.IntType(64), LINE // 8).as_pointer()
        d = builder.bitcast(_item_pointer(context, builder, dty, args[0], args[1]), line)
        s = builder.bitcast(_item_pointer(context, builder, sty, args[2], args[3]), line)
        width = builder.extract_value(context.make_array(dty)(context, builder, args[0]).shape, 1)
        size = context.get_abi_sizeof(context.get_data_type(dty.dtype))
        hint = builder.module.add_metadata([ir.IntType(32)(1)])
        with cgutils.for_range(builder, builder.udiv(builder.mul(width, width.type(size)),
                                                     width.type(LINE))) as loop:
            v = builder.load(builder.gep(s, [loop.index]), align=1)
            builder.store(v, builder.gep(d, [loop.index]), align=LINE).set_metadata("nontemporal", hint)
        return context.get_dummy_value()
    return types.void(dst, types.intp, src, types.intp), codegen


@intrinsic
def _fence(typingctx):
    """Order the streamed stores before any later access (they are not ordered with other stores)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


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
    F = base.shape[1]
    for m in range(src.shape[0]):
        s = src[m]
        if s >= 0:
            for c in range(F):
                out[m, c] = rows[s, c]
        else:
            for c in range(F):
                out[m, c] = base[m, c]


@jit
def _stream_merge(base, rows, src, out):
    """``_merge_rows`` with streamed stores (``_stream_row``'s conditions on ``out``)."""
    for m in range(src.shape[0]):
        s = src[m]
        if s >= 0:
            _stream_row(out, m, rows, s)
        else:
            _stream_row(out, m, base, m)
    _fence()


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
    src[m] >= 0, else the same row of ``base``: streamed when large (``STREAM_BYTES``) and every row
    whole cache lines; then it is allocated to start on a line (a view of a byte buffer)."""
    if base.nbytes < STREAM_BYTES or math.prod(base.shape[2:]) * base.itemsize % LINE:
        out = np.empty(base.shape, dtype=base.dtype)
        _merge_rows(_rows(base), rows, src, _rows(out))
    else:
        buf = np.empty(base.nbytes + LINE, dtype=np.uint8)
        skip = -buf.ctypes.data % LINE
        out = buf[skip:skip + base.nbytes].view(base.dtype).reshape(base.shape)
        _stream_merge(_rows(base), rows, src, _rows(out))
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
