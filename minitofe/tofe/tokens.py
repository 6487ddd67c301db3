"""Gather and scatter tokens by index: the NumPy reference (docs/method.md, "Keep path").

Indices are ``kept_idx`` arrays of shape (B, K): for every image the token positions to keep, in
ascending (original) order, prefix tokens included. ``gather`` copies those rows out; ``scatter`` writes
rows back into a copy of a base array. ``gather_tokens_backward`` is the gather's gradient (EViT's
reduction block uses it in training); inference needs no backward. The Numba kernels of
``minitofe.kernels`` have the same signatures and are checked against these.
"""
from ..backend import get_xp


def gather_tokens(x, kept_idx):
    """x: (B, N, C), kept_idx: (B, K) -> (B, K, C) with out[b, k] = x[b, kept_idx[b, k]]."""
    xp = get_xp(x)
    return x[xp.arange(x.shape[0])[:, None], kept_idx]


def gather_tokens_backward(dout, kept_idx, N):
    """dout: (B, K, C) -> dx: (B, N, C), zero on the rows that were not gathered."""
    xp = get_xp(dout)
    B, K, C = dout.shape
    dx = xp.zeros((B, N, C), dtype=dout.dtype)
    dx[xp.arange(B)[:, None], kept_idx] = dout      # indices are unique per row: no accumulation needed
    return dx


def scatter_tokens(base, rows, kept_idx):
    """base: (B, N, C), rows: (B, K, C) -> a copy of base with out[b, kept_idx[b, k]] = rows[b, k]."""
    xp = get_xp(base)
    out = base.copy()
    out[xp.arange(base.shape[0])[:, None], kept_idx] = rows
    return out


def mask_to_indices(keep_mask):
    """keep_mask: (B, N) bool with the SAME count per row -> kept_idx (B, K) ascending. For ragged masks
    use ``ragged_indices``."""
    xp = get_xp(keep_mask)
    counts = keep_mask.sum(axis=1)
    if keep_mask.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(f"mask_to_indices: rows keep different counts {counts.tolist()}; use ragged_indices")
    K = int(counts[0]) if keep_mask.shape[0] else 0
    # a stable argsort of ~mask puts the kept positions first, in ascending order
    return xp.argsort(~keep_mask, axis=1, kind="stable")[:, :K]


def ragged_indices(keep_mask):
    """keep_mask: (B, N) bool, any count per row -> list of B ascending 1-D index arrays."""
    xp = get_xp(keep_mask)
    return [xp.nonzero(row)[0] for row in keep_mask]


def indices_to_mask(kept_idx, N):
    """(B, K) indices -> (B, N) bool mask."""
    xp = get_xp(kept_idx)
    mask = xp.zeros((kept_idx.shape[0], N), dtype=bool)
    mask[xp.arange(kept_idx.shape[0])[:, None], kept_idx] = True
    return mask


def values_at_positions(values, positions, P):
    """values (B, n) of tokens whose original patch index is ``positions`` (B, n) (-1: not a patch, e.g.
    EViT's fused token) -> (B, P) at the original positions, zero (False) for the patches not present."""
    xp = get_xp(values)
    out = xp.zeros((values.shape[0], P), dtype=values.dtype)
    rows, cols = xp.nonzero(positions >= 0)
    out[rows, positions[rows, cols]] = values[rows, cols]
    return out
