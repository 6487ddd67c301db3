"""What a pluggable part of ToFe is: a token selector or an approximator kind (docs/method.md, "Token
selector", "Freeze path"; ``parts.py`` finds each kind by name).

    shapes(prefix, C, r) -> {key: shape}       its parameters under ``prefix`` (``tofe.selector.{i}.`` /
                                               ``tofe.approx.{i}.``); r: ``approx_reduction``
    forward(x, params, prefix, ...) -> out, cache
        selector:     (x (B, N, C), params, prefix, num_prefix, patch_weight=None, ops=None)
                      -> logits (B, N, 2) [keep, freeze]
        approximator: (x (..., C), params, prefix, ops=None) -> y (..., C)
    backward(dout, cache) -> dx, grads {full key: array}
    macs(n, C, r) -> MACs on n tokens (``macs.tofe_macs`` counts them; may be an array)
    dmacs(n, C, r) -> d macs / d n (the FLOPs loss differentiates through the counts)

A part's fresh parameters follow ``params.init_from_shapes``: weights trunc-normal, biases zero,
LayerNorms ones / zeros, and every ``tofe.approx.*.fc2.*`` zero (an approximator starts as the identity).
"""
from typing import Callable, NamedTuple


class Part(NamedTuple):
    name: str
    shapes: Callable
    forward: Callable
    backward: Callable
    macs: Callable
    dmacs: Callable
