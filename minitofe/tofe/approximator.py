"""The token approximator: a bottleneck MLP with a residual, one per stage (docs/method.md, "Freeze path").

    A(x) = x + (GELU(LN(x) @ Wa.T + ba) @ Wb.T + bb),   Wa: C -> C/r,  Wb: C/r -> C

It predicts the update a frozen token missed by skipping the stage's blocks. ``Wb`` and ``bb`` start at
zero (``params.init_tofe_params``), so a fresh approximator is exactly the identity ("carry unchanged").
Parameters live under ``prefix`` (e.g. ``"tofe.approx.0."``): ``norm``, ``fc1`` (C -> C/r), ``fc2``
(C/r -> C). Works on any leading shape: (B, N, C) in training, gathered (M, C) rows in inference.
"""
from .macs import approximator_macs
from .ops import resolve
from .part import Part
from ..nn.layers import gelu_backward, layernorm_backward, linear_backward


def approximator_forward(x, params, prefix, ops=None):
    """x: (..., C) -> y (..., C), cache. ``ops``: the namespace LayerNorm, GELU and the linear layers run
    on (``tofe.ops``; None: this package's reference)."""
    ops = resolve(ops)
    n, c_ln = ops.layernorm_forward(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"])
    h, c_fc1 = ops.linear_forward(n, params[prefix + "fc1.weight"], params[prefix + "fc1.bias"])  # (..., C/r)
    a, c_g = ops.gelu_forward(h)
    d, c_fc2 = ops.linear_forward(a, params[prefix + "fc2.weight"], params[prefix + "fc2.bias"])  # (..., C)
    return x + d, (prefix, c_ln, c_fc1, c_g, c_fc2)


def approximator_backward(dy, cache):
    """dy: (..., C) -> dx (..., C), grads {full key: array} for norm / fc1 / fc2."""
    prefix, c_ln, c_fc1, c_g, c_fc2 = cache
    grads = {}
    da, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dy, c_fc2)
    dh = gelu_backward(da, c_g)
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(dh, c_fc1)
    dx_branch, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dy + dx_branch, grads


def approximator_shapes(prefix, C, r):
    """``{key: shape}`` of one approximator under ``prefix``: ``norm``, ``fc1`` (C -> C/r), ``fc2``."""
    if C % r:
        raise ValueError(f"the approximator needs embed_dim divisible by approx_reduction r, "
                         f"got embed_dim={C}, r={r}")
    return {prefix + "norm.weight": (C,), prefix + "norm.bias": (C,),
            prefix + "fc1.weight": (C // r, C), prefix + "fc1.bias": (C // r,),
            prefix + "fc2.weight": (C, C // r), prefix + "fc2.bias": (C,)}


PART = Part("mlp", approximator_shapes, approximator_forward, approximator_backward, approximator_macs,
            lambda n, C, r: approximator_macs(1, C, r))
