"""The functions the model runs on, as one namespace (docs/contributing.md §5, "reference first, fast
second"). ``REFERENCE`` holds this package's NumPy references; a caller at the top (``predict``, the
trainer, the bench) may hand down another namespace with the same names and signatures instead, e.g.
the Numba twins of ``minitofe.kernels`` (``kernels.ops(fast, like)``). ``None`` means ``REFERENCE``:
the model code never chooses an implementation itself."""
from types import SimpleNamespace

from .ragged import pack_rows, ragged_block_forward, unpack_rows
from .tokens import gather_tokens, scatter_tokens
from ..nn.attention import masked_softmax_backward, masked_softmax_forward
from ..nn.block import block_backward, block_forward, run_blocks
from ..nn.layers import gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, linear_forward

REFERENCE = SimpleNamespace(
    fast=False, block_forward=block_forward, block_backward=block_backward, run_blocks=run_blocks,
    gather_tokens=gather_tokens, scatter_tokens=scatter_tokens, pack_rows=pack_rows,
    unpack_rows=unpack_rows, ragged_block_forward=ragged_block_forward,
    layernorm_forward=layernorm_forward, layernorm_backward=layernorm_backward,
    gelu_forward=gelu_forward, gelu_backward=gelu_backward, linear_forward=linear_forward,
    masked_softmax_forward=masked_softmax_forward, masked_softmax_backward=masked_softmax_backward)


def resolve(ops):
    """The namespace to run on: ``ops``, or ``REFERENCE`` when it is None."""
    return REFERENCE if ops is None else ops
