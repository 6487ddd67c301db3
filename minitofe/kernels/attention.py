"""Multi-head attention for inference as batched BLAS: softmax(q k^T * scale) v over (image x head).

For each unit of work (a few images of one length, a group of their heads) three calls:

    S = q @ k^T            np.matmul on (images, heads, n, hs) views of the packed qkv rows, no copy
    softmax_rows_(S)       one fused pass per row (kernels.softmax: vectorised exp, eight-way max)
    o = S @ v              np.matmul straight into the heads' columns of o (timm's (n, H * hs) order)

A unit's score matrix S is kept under ``UNIT_BYTES`` so that it is still in the core's L2 cache when
the softmax and the second product read it again. The units are dealt to lanes (``kernels.threads``):
each lane runs its units with a one-thread BLAS, the lanes run side by side, so a block waits for its
threads once, not at every small GEMM (see ``kernels.threads`` for why that matters on a busy machine).
Measured on one core, DeiT-S: ~2x faster than the per-head Numba loop it replaced (the products run at
the BLAS's ~60-80 GFLOP/s instead of ~30).

``attend_(qkv, offsets, num_heads, scale, o)``: qkv (M, 3C) rows [q | k | v] of all images packed
(image b owns rows offsets[b] .. offsets[b+1]-1: a dense batch has offsets 0, n, 2n, ..., a ragged one
its own counts); o (M, C) receives the heads' outputs.
"""
import numpy as np

from .softmax import softmax_rows_
from .threads import lanes_for, run_lanes

UNIT_BYTES = 2 ** 19        # a unit's (images, heads, n, n) scores: 512 KiB, half of this machine's L2


def _units(offsets, num_heads, itemsize):
    """Runs of equal-length images -> units (first row, n, images, first head, last head + 1)."""
    units, b, B = [], 0, len(offsets) - 1
    while b < B:
        lo, n = int(offsets[b]), int(offsets[b + 1] - offsets[b])
        e = b + 1
        while e < B and int(offsets[e + 1] - offsets[e]) == n:
            e += 1
        if n > 0:
            per_head = n * n * itemsize
            heads = max(1, min(num_heads, UNIT_BYTES // per_head))      # heads of one image per unit
            images = max(1, UNIT_BYTES // (per_head * num_heads)) if heads == num_heads else 1
            for i in range(0, e - b, images):
                count = min(images, e - b - i)
                for h in range(0, num_heads, heads):
                    units.append((lo + i * n, n, count, h, min(h + heads, num_heads)))
        b = e
    return units


def _run_unit(qkv, o, unit, num_heads, scale, scratch):
    lo, n, count, h0, h1 = unit
    C = o.shape[1]
    rows = qkv[lo:lo + count * n].reshape(count, n, 3, num_heads, C // num_heads)
    q = rows[:, :, 0, h0:h1].transpose(0, 2, 1, 3)                       # (count, h, n, hs) views
    k_t = rows[:, :, 1, h0:h1].transpose(0, 2, 3, 1)                     # (count, h, hs, n)
    v = rows[:, :, 2, h0:h1].transpose(0, 2, 1, 3)
    s = scratch[:count * (h1 - h0) * n * n].reshape(count, h1 - h0, n, n)
    np.matmul(q, k_t, out=s)
    softmax_rows_(s.reshape(-1, n), scale)
    out = o[lo:lo + count * n].reshape(count, n, num_heads, -1)[:, :, h0:h1].transpose(0, 2, 1, 3)
    np.matmul(s, v, out=out)


def attend_(qkv, offsets, num_heads, scale, o, buf=None):
    """o (M, C) <- per-image, per-head softmax(q k^T scale) v of the packed qkv (M, 3C).
    ``buf(lane, size)`` returns a 1-D scratch array of the qkv's dtype for a lane (default: a new one);
    it is called on this thread, before the lanes start."""
    units = _units(offsets, num_heads, qkv.dtype.itemsize)
    if not units:
        return
    hs = o.shape[1] // num_heads
    macs = sum(2 * c * (h1 - h0) * n * n * hs for _, n, c, h0, h1 in units)
    lanes = min(len(units), lanes_for(macs))
    size = max(c * (h1 - h0) * n * n for _, n, c, h0, h1 in units)
    dealt = [units[i::lanes] for i in range(lanes)]                       # units are near-equal in size
    scratch = [np.empty(size, qkv.dtype) if buf is None else buf(lane, size) for lane in range(lanes)]

    def work(lane):
        for unit in dealt[lane]:
            _run_unit(qkv, o, unit, num_heads, scale, scratch[lane])
    run_lanes(work, lanes)
