"""Checks for notebook 03's exercises on the two token paths: gather/scatter of the kept tokens in their
original order, and the approximator's backward (docs/method.md "Keep path", "Freeze path")."""
import numpy as np

from ..nn.layers import gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, linear_forward
from ..tofe.approximator import approximator_backward, approximator_forward
from ..tofe.params import approximator_shapes
from ..tofe.tokens import gather_tokens, indices_to_mask, mask_to_indices, scatter_tokens
from .calls import call, call_in_place, exercise
from .verdict import Wrong, as_array, parts, same, same_as_finite_differences, search

APPROX = "tofe.approx.0."


def random_params(shapes, rng):
    """Every weight random (timm's init of ones and zeros, or a zero fc2, would hide terms)."""
    return {k: rng.standard_normal(shape) * (0.5 if len(shape) == 2 else 1.0) for k, shape in shapes.items()}


def _tokens_case(case):
    """x (B, N, C) with distinct rows, a keep mask with the same count K per image, new rows (B, K, C)."""
    rng = np.random.default_rng(case["seed"])
    B, N, K, C = case["B"], case["N"], min(case["K"], case["N"]), 2
    keep = np.zeros((B, N), dtype=bool)
    for b in range(B):
        keep[b, rng.choice(N, K, replace=False)] = True
    x = rng.standard_normal((B, N, C))
    return x, keep, rng.standard_normal((B, K, C))


def _which_token(x, b, row):
    hits = [j for j in range(x.shape[1]) if np.array_equal(x[b, j], row)]
    return f"token {hits[0]}" if hits else "no token of x"


def _tokens_agree(gather_kept, scatter_kept, x, keep, rows):
    idx = mask_to_indices(keep)                                           # (B, K) ascending
    want = gather_tokens(x, idx)
    got = as_array("gathered", call(gather_kept, x, keep), want)

    def explain(at):
        b, k = at[0], at[1]
        return (f" (row {k} of image {b} is {_which_token(x, b, got[b, k])}; it should be token "
                f"{int(idx[b, k])}: the kept tokens {idx[b].tolist()} in their original order)")
    order = np.argsort(keep, axis=1, kind="stable")[:, ::-1][:, :idx.shape[1]]   # kept, last first
    frozen_first = np.argsort(keep, axis=1, kind="stable")[:, :idx.shape[1]]
    mistakes = [("the kept tokens are gathered in reverse order; keep their original order",
                 lambda: gather_tokens(x, idx[:, ::-1])),
                ("the kept tokens are out of their original order (a descending argsort of keep); "
                 "np.nonzero of each row gives them in ascending order", lambda: gather_tokens(x, order)),
                ("these are the frozen tokens (keep == False); gather where keep is True",
                 lambda: gather_tokens(x, frozen_first))]
    same("gathered", got, want, rtol=0, atol=0, explain=explain, mistakes=mistakes)
    base = x.copy()
    out = call_in_place(scatter_kept, base, rows.copy(), keep.copy())
    if not np.array_equal(base, x) or (isinstance(out, np.ndarray) and np.shares_memory(out, base)):
        raise Wrong("scatter_kept writes into its input base (or returns it); write into a copy of base")
    inverted = [("the rows went to the tokens that are not kept: scatter where keep is True",
                 lambda: scatter_tokens(x, rows, mask_to_indices(~keep)))] if keep.any() and (
        keep.sum(1) == (~keep).sum(1)).all() else []
    same("scattered", out, scatter_tokens(x, rows, idx), rtol=0, atol=0, mistakes=inverted,
         explain=lambda at: f" (token {at[1]} of image {at[0]} is "
                            f"{'kept' if keep[at[0], at[1]] else 'not kept: it must stay as in base'})")


@exercise("gather_scatter", replaces=(gather_tokens, scatter_tokens, mask_to_indices, indices_to_mask,
                                     "minitofe.kernels.tokens.gather_tokens",
                                     "minitofe.kernels.tokens.scatter_tokens"))
def check_gather_scatter(gather_kept, scatter_kept):
    """gather_kept(x, keep) -> (B, K, C); scatter_kept(base, rows, keep) -> (B, N, C); against
    ``gather_tokens`` / ``scatter_tokens`` with ``mask_to_indices``, exactly."""
    _tokens_agree(gather_kept, scatter_kept, *_tokens_case({"B": 2, "N": 6, "K": 3, "seed": 0}))
    sizes = {"B": (1, 3), "N": (1, 6), "K": (0, 6), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _tokens_agree(gather_kept, scatter_kept, *_tokens_case(c)),
                   lambda c: f"B={c['B']}, N={c['N']}, keep={_tokens_case(c)[1].astype(int).tolist()}")
    return f"gather and scatter equal the package's exactly (order kept) on a fixed case and on {tried}"


def _approx_case(case):
    rng = np.random.default_rng(case["seed"])
    C = 4 * case["c4"]
    x = rng.standard_normal((case["B"], case["N"], C))
    params = random_params(approximator_shapes(APPROX, C, 4), rng)
    return x, params, rng.standard_normal(x.shape)


def _approx_agrees(approximator_grad, x, params, dy, finite_differences):
    _, cache = approximator_forward(x, params, APPROX)
    dx_want, grads_want = approximator_backward(dy, cache)
    dx, grads = parts(call(approximator_grad, dy, x, params, APPROX), ("dx", "grads"))
    if not isinstance(grads, dict) or set(grads) != set(grads_want):
        have = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
        raise Wrong(f"grads should be a dict with the keys {sorted(grads_want)}, got {have}")
    same("dx", dx, dx_want, mistakes=_approx_mistakes(x, params, dy, dx_want))
    for key in grads_want:
        same(f"grads['{key}']", grads[key], grads_want[key])
    if finite_differences:
        loss = lambda: float((approximator_forward(x, params, APPROX)[0] * dy).sum())
        same_as_finite_differences("dx", dx, loss, x)
        for key in grads_want:
            same_as_finite_differences(f"grads['{key}']", grads[key], loss, params[key])


def _approx_mistakes(x, params, dy, dx_want):
    """dx computed the plausible wrong ways: without the residual, skipping the LayerNorm's or the GELU's
    backward."""
    p = lambda name: params[APPROX + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h, _ = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    _, c_gelu = gelu_forward(h)
    da = dy @ p("fc2.weight")
    return [("dx misses the residual: A(x) = x + MLP(x), so dx = dy + (what comes back through the MLP)",
             dx_want - dy),
            ("dx skips the LayerNorm's backward: what comes back through fc1 is the gradient of LN(x), "
             "not of x", lambda: dy + gelu_backward(da, c_gelu) @ p("fc1.weight")),
            ("dx skips the GELU's backward (GELU'(h) = Phi(h) + h phi(h) multiplies the gradient)",
             lambda: dy + layernorm_backward(da @ p("fc1.weight"), c_ln)[0])]


@exercise("approximator_grad", replaces=(approximator_backward,))
def check_approximator_grad(approximator_grad):
    """approximator_grad(dy, x, params, prefix) -> (dx, grads), against finite differences and
    ``approximator_backward``."""
    _approx_agrees(approximator_grad, *_approx_case({"B": 2, "N": 3, "c4": 2, "seed": 0}), True)
    sizes = {"B": (1, 2), "N": (1, 3), "c4": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _approx_agrees(approximator_grad, *_approx_case(c), False),
                   lambda c: f"B={c['B']}, N={c['N']}, C={4 * c['c4']}", examples=30)
    return (f"dx and every grads entry equal finite differences on a fixed case and approximator_backward "
            f"on {tried}")
