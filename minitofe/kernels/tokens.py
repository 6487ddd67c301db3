"""Numba gather / scatter of token rows and pack / unpack of ragged batches.

Same names and signatures as the references in ``minitofe.tofe.tokens`` and ``minitofe.tofe.ragged``.
Each output row is written exactly once, from exactly one source row, so every function moves the bytes
of one plain copy of its output and no more: ``scatter`` does not copy ``base`` and then overwrite the
kept rows (two passes, as the reference does), it builds a per-position source map and fills each
output row from ``rows`` or from ``base``. Rows are split over the cores. Indices are checked in Python
first (a compiled loop does not raise ``IndexError``: it would read outside the array).
"""
import numpy as np

from .mathf import jit, pjit, prange


def _check_range(idx, N, what):
    if idx.size and (int(idx.min()) < -N or int(idx.max()) >= N):
        raise IndexError(f"{what}: index out of range for {N} tokens (min {int(idx.min())}, "
                         f"max {int(idx.max())})")


def _as3(a):
    """(B, N, ...) -> (B, N, F) view (or copy), also for empty arrays."""
    return a.reshape(a.shape[:2] + (int(np.prod(a.shape[2:], dtype=np.int64)),))


@pjit
def _gather(x, idx, out):
    B, K = idx.shape
    N = x.shape[1]
    for t in prange(B * K):
        b, k = t // K, t % K
        n = idx[b, k]
        out[b, k, :] = x[b, n + N if n < 0 else n, :]


@jit
def _source_map(idx, N):
    """src[b, n] = k where idx[b, k] == n (the last such k, as NumPy's assignment), else -1."""
    B, K = idx.shape
    src = np.full((B, N), -1, dtype=np.int64)
    for b in range(B):
        for k in range(K):
            n = idx[b, k]
            src[b, n + N if n < 0 else n] = k
    return src


@pjit
def _merge(base, rows, src, out):
    """out[b, n] = rows[b, src[b, n]] where src >= 0, else base[b, n]."""
    B, N = src.shape
    for t in prange(B * N):
        b, n = t // N, t % N
        k = src[b, n]
        if k >= 0:
            out[b, n, :] = rows[b, k, :]
        else:
            out[b, n, :] = base[b, n, :]


def gather_tokens(x, kept_idx):
    """x: (B, N, C), kept_idx: (B, K) -> (B, K, C) with out[b, k] = x[b, kept_idx[b, k]]."""
    _check_range(kept_idx, x.shape[1], "gather_tokens")
    out = np.empty((x.shape[0], kept_idx.shape[1]) + x.shape[2:], dtype=x.dtype)
    _gather(_as3(x), kept_idx, _as3(out))
    return out


def scatter_tokens(base, rows, kept_idx):
    """base: (B, N, C), rows: (B, K, C) -> a copy of base with out[b, kept_idx[b, k]] = rows[b, k]."""
    _check_range(kept_idx, base.shape[1], "scatter_tokens")
    rows = np.broadcast_to(rows, kept_idx.shape + base.shape[2:]).astype(base.dtype, copy=False)
    out = np.empty(base.shape, dtype=base.dtype)
    src = _source_map(kept_idx, base.shape[1])
    _merge(_as3(base), _as3(rows), src, _as3(out))
    return out


def _ragged_maps(idx_list, B, N):
    counts = np.array([len(i) for i in idx_list], dtype=np.int64)
    offsets = [0] + np.cumsum(counts).tolist()
    flat = np.concatenate([np.asarray(i, dtype=np.int64).ravel() for i in idx_list]) if B else \
        np.zeros(0, np.int64)
    _check_range(flat, N, "ragged index")
    image = np.repeat(np.arange(B, dtype=np.int64), counts)
    return flat, image, offsets


@pjit
def _pack(x, flat, image, out):
    N = x.shape[1]
    for r in prange(flat.shape[0]):
        n = flat[r]
        out[r, :] = x[image[r], n + N if n < 0 else n, :]


@jit
def _packed_source_map(flat, image, B, N):
    src = np.full((B, N), -1, dtype=np.int64)
    for r in range(flat.shape[0]):
        n = flat[r]
        src[image[r], n + N if n < 0 else n] = r
    return src


@pjit
def _unpack(base, packed, src, out):
    B, N = src.shape
    for t in prange(B * N):
        b, n = t // N, t % N
        r = src[b, n]
        if r >= 0:
            out[b, n, :] = packed[r, :]
        else:
            out[b, n, :] = base[b, n, :]


def pack_rows(x, idx_list):
    """x: (B, N, C), idx_list: B ascending index arrays -> packed (M, C), offsets (B + 1,) list."""
    flat, image, offsets = _ragged_maps(idx_list, x.shape[0], x.shape[1])
    out = np.empty((len(flat), x.shape[2]), dtype=x.dtype)
    _pack(x, flat, image, out)
    return out, offsets


def unpack_rows(base, packed, idx_list, offsets):
    """Write the packed rows back to their positions in a copy of ``base`` (B, N, C)."""
    B, N = base.shape[:2]
    flat, image, want = _ragged_maps(idx_list, B, N)
    if [int(o) for o in offsets] != want or packed.shape[0] != len(flat):
        raise ValueError(f"unpack_rows: offsets {list(offsets)} / packed rows {packed.shape[0]} do not "
                         f"match the index lists (counts {[len(i) for i in idx_list]})")
    out = np.empty(base.shape, dtype=base.dtype)
    _unpack(base, packed.astype(base.dtype, copy=False), _packed_source_map(flat, image, B, N), out)
    return out
