"""Numba gather / scatter of token rows and pack / unpack of ragged batches.

Same names and signatures as the references in ``minitofe.tofe.tokens`` and ``minitofe.tofe.ragged``.
All four are two compiled loops: ``_take_rows`` (output row r <- row ``flat[r]`` of image ``image[r]``:
gather and pack) and ``_merge_rows`` (output position (b, n) <- a given row, or ``base[b, n]``: scatter
and unpack). Each output row is written exactly once, from exactly one source row, so every function
moves the bytes of one plain copy of its output and no more: ``scatter`` does not copy ``base`` and then
overwrite the kept rows (two passes, as the reference does). The loops run on one core with an explicit
inner loop over channels that LLVM turns into vector moves: the work is memory-bound, and a parallel
launch costs 70-130 us, more than a whole gather at batch 8 (microbenchmark, DeiT-S sizes: batch 32,
gather 194 us against 170 us for a plain copy of the output, parallel 234 us; batch 1: 7.1 against
7.4 us, parallel 75 us). Interleaved with the other contenders in ``minitofe bench`` they measure
1.6-1.8x a plain copy, short of the 1.1x aimed for. Indices are checked in Python first (a compiled loop
does not raise ``IndexError``: it would read outside the array).
"""
import numpy as np

from .mathf import jit


def _check_range(idx, N, what):
    if idx.size and (int(idx.min()) < -N or int(idx.max()) >= N):
        raise IndexError(f"{what}: index out of range for {N} tokens (min {int(idx.min())}, "
                         f"max {int(idx.max())})")


def _as3(a):
    """(B, N, ...) -> (B, N, F) view (or copy), also for empty arrays."""
    return a.reshape(a.shape[:2] + (int(np.prod(a.shape[2:], dtype=np.int64)),))


def _as2(a):
    """(B, K, ...) -> (B * K, F) view (or copy), also for empty arrays."""
    return a.reshape((a.shape[0] * a.shape[1], int(np.prod(a.shape[2:], dtype=np.int64))))


@jit
def _take_rows(x, flat, image, out):
    """out[r] = x[image[r], flat[r]] (negative token indices count from the end)."""
    N, C = x.shape[1], x.shape[2]
    for r in range(flat.shape[0]):
        n = flat[r]
        n = n + N if n < 0 else n
        b = image[r]
        for c in range(C):
            out[r, c] = x[b, n, c]


@jit
def _merge_rows(base, rows, src, out):
    """out[b, n] = rows[src[b, n]] where src >= 0, else base[b, n]."""
    B, N = src.shape
    C = base.shape[2]
    for b in range(B):
        for n in range(N):
            r = src[b, n]
            if r >= 0:
                for c in range(C):
                    out[b, n, c] = rows[r, c]
            else:
                for c in range(C):
                    out[b, n, c] = base[b, n, c]


@jit
def _row_source_map(flat, image, B, N):
    """src[b, n] = r where (image[r], flat[r]) == (b, n) (the last such r, as NumPy's assignment), else -1."""
    src = np.full((B, N), -1, dtype=np.int64)
    for r in range(flat.shape[0]):
        n = flat[r]
        src[image[r], n + N if n < 0 else n] = r
    return src


def _rows_of(idx):
    """(B, K) token indices -> the flat (B * K,) indices and the image of each."""
    B, K = idx.shape
    return np.ascontiguousarray(idx, dtype=np.int64).reshape(-1), np.repeat(np.arange(B, dtype=np.int64), K)


def gather_tokens(x, kept_idx):
    """x: (B, N, C), kept_idx: (B, K) -> (B, K, C) with out[b, k] = x[b, kept_idx[b, k]]."""
    _check_range(kept_idx, x.shape[1], "gather_tokens")
    out = np.empty((x.shape[0], kept_idx.shape[1]) + x.shape[2:], dtype=x.dtype)
    _take_rows(_as3(x), *_rows_of(kept_idx), _as2(out))
    return out


def scatter_tokens(base, rows, kept_idx):
    """base: (B, N, C), rows: (B, K, C) -> a copy of base with out[b, kept_idx[b, k]] = rows[b, k]."""
    _check_range(kept_idx, base.shape[1], "scatter_tokens")
    rows = np.broadcast_to(rows, kept_idx.shape + base.shape[2:]).astype(base.dtype, copy=False)
    out = np.empty(base.shape, dtype=base.dtype)
    B, N = base.shape[:2]
    src = _row_source_map(*_rows_of(kept_idx), B, N)
    _merge_rows(_as3(base), _as2(rows), src, _as3(out))
    return out


def _ragged_maps(idx_list, B, N):
    counts = np.array([len(i) for i in idx_list], dtype=np.int64)
    offsets = [0] + np.cumsum(counts).tolist()
    flat = np.concatenate([np.asarray(i, dtype=np.int64).ravel() for i in idx_list]) if B else \
        np.zeros(0, np.int64)
    _check_range(flat, N, "ragged index")
    image = np.repeat(np.arange(B, dtype=np.int64), counts)
    return flat, image, offsets


def pack_rows(x, idx_list):
    """x: (B, N, C), idx_list: B ascending index arrays -> packed (M, C), offsets (B + 1,) list."""
    flat, image, offsets = _ragged_maps(idx_list, x.shape[0], x.shape[1])
    out = np.empty((len(flat), x.shape[2]), dtype=x.dtype)
    _take_rows(_as3(x), flat, image, out)
    return out, offsets


def unpack_rows(base, packed, idx_list, offsets):
    """Write the packed rows back to their positions in a copy of ``base`` (B, N, C)."""
    B, N = base.shape[:2]
    flat, image, want = _ragged_maps(idx_list, B, N)
    if [int(o) for o in offsets] != want or packed.shape[0] != len(flat):
        raise ValueError(f"unpack_rows: offsets {list(offsets)} / packed rows {packed.shape[0]} do not "
                         f"match the index lists (counts {[len(i) for i in idx_list]})")
    out = np.empty(base.shape, dtype=base.dtype)
    packed = packed.astype(base.dtype, copy=False)
    _merge_rows(_as3(base), packed, _row_source_map(flat, image, B, N), _as3(out))
    return out
