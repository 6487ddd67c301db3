"""Blocks on a ragged batch (``threshold`` inference): every image keeps its own number of tokens.

The kept tokens of all images are packed into one (M, C) array, M = sum of the per-image counts, so the
row-wise parts of a block (LayerNorms, MLP) run as one matmul over real tokens only, with no padding;
attention runs per image on its own segment. ``offsets`` (B + 1,) marks the segments.
"""
from ..backend import get_xp
from ..nn.attention import attention_forward
from ..nn.block import mlp_forward
from ..nn.layers import layernorm_forward


def pack_rows(x, idx_list):
    """x: (B, N, C), idx_list: B ascending index arrays -> packed (M, C), offsets (B + 1,)."""
    xp = get_xp(x)
    counts = [int(len(i)) for i in idx_list]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    packed = xp.concatenate([x[b, idx] for b, idx in enumerate(idx_list)], axis=0)
    return packed, offsets


def unpack_rows(base, packed, idx_list, offsets):
    """Write the packed rows back to their positions in a copy of ``base`` (B, N, C)."""
    out = base.copy()
    for b, idx in enumerate(idx_list):
        out[b, idx] = packed[offsets[b]:offsets[b + 1]]
    return out


def ragged_block_forward(x, offsets, params, prefix, num_heads):
    """One pre-norm block on packed rows x: (M, C); attention stays inside each image's segment."""
    xp = get_xp(x)
    g1 = params.get(prefix + "ls1.gamma")
    g2 = params.get(prefix + "ls2.gamma")
    n1, _ = layernorm_forward(x, params[prefix + "norm1.weight"], params[prefix + "norm1.bias"])
    a = xp.empty_like(x)
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        a[lo:hi] = attention_forward(n1[None, lo:hi], params, prefix + "attn.", num_heads)[0][0]
    x = x + (a * g1 if g1 is not None else a)
    n2, _ = layernorm_forward(x, params[prefix + "norm2.weight"], params[prefix + "norm2.bias"])
    f, _ = mlp_forward(n2, params, prefix + "mlp.")
    return x + (f * g2 if g2 is not None else f)
