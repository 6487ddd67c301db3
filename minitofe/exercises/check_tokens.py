"""Checks for notebook 03's exercises on the selector and the two token paths: the selector's forward with
its global-context step, gather/scatter of the kept tokens in their original order, and the approximator's
backward (docs/method.md "Token selector", "Keep path", "Freeze path")."""
import numpy as np

from ..tofe.approximator import approximator_backward, approximator_forward
from ..tofe.params import approximator_shapes, selector_shapes
from ..tofe.selector import selector_forward
from ..tofe.tokens import gather_tokens, mask_to_indices, scatter_tokens
from .verdict import (Wrong, as_array, call, call_in_place, exercise, parts, same, same_as_finite_differences,
                      search)

SELECTOR = "tofe.selector.0."
APPROX = "tofe.approx.0."


def random_params(shapes, rng):
    """Every weight random (timm's init of ones and zeros, or a zero fc2, would hide terms)."""
    return {k: rng.standard_normal(shape) * (0.5 if len(shape) == 2 else 1.0) for k, shape in shapes.items()}


def _selector_case(case):
    rng = np.random.default_rng(case["seed"])
    C = 4 * case["c4"]
    x = rng.standard_normal((case["B"], case["T"] + case["P"], C))
    return x, random_params(selector_shapes(SELECTOR, C), rng), case["T"]


def _selector_agrees(selector_logits, x, params, T):
    want, _ = selector_forward(x, params, SELECTOR, T)
    got = as_array("logits", call(selector_logits, x, params, SELECTOR, T), want)
    everything, _ = selector_forward(x, params, SELECTOR, 0)              # g averaged over all N tokens
    if T and np.allclose(got, everything):
        raise Wrong(f"your global context g averages all N tokens; it should average the P patch tokens "
                    f"only (the first num_prefix = {T} tokens are the class/distillation tokens)")
    same("logits", got, want)


@exercise("selector_logits")
def check_selector_logits(selector_logits):
    """selector_logits(x, params, prefix, num_prefix) -> logits (B, N, 2), against ``selector_forward``."""
    _selector_agrees(selector_logits, *_selector_case({"B": 2, "T": 1, "P": 4, "c4": 2, "seed": 0}))
    sizes = {"B": (1, 2), "T": (0, 2), "P": (1, 5), "c4": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _selector_agrees(selector_logits, *_selector_case(c)),
                   lambda c: f"B={c['B']}, num_prefix={c['T']}, P={c['P']}, C={4 * c['c4']}")
    return f"logits equal selector_forward on a fixed case and on {tried}"


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
    same("gathered", got, want, rtol=0, atol=0, explain=explain)
    base = x.copy()
    out = call_in_place(scatter_kept, base, rows.copy(), keep.copy())
    if not np.array_equal(base, x) or (isinstance(out, np.ndarray) and np.shares_memory(out, base)):
        raise Wrong("scatter_kept writes into its input base (or returns it); write into a copy of base")
    same("scattered", out, scatter_tokens(x, rows, idx), rtol=0, atol=0,
         explain=lambda at: f" (token {at[1]} of image {at[0]} is "
                            f"{'kept' if keep[at[0], at[1]] else 'not kept: it must stay as in base'})")


@exercise("gather_scatter")
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
    dx = as_array("dx", dx, dx_want)
    if np.allclose(dx, dx_want - dy):
        raise Wrong("dx misses the residual: A(x) = x + MLP(x), so dx = dy + (what comes back through "
                    "the MLP)")
    if finite_differences:
        loss = lambda: float((approximator_forward(x, params, APPROX)[0] * dy).sum())
        same_as_finite_differences("dx", dx, loss, x)
        for key in grads_want:
            same_as_finite_differences(f"grads['{key}']", grads[key], loss, params[key])
    same("dx", dx, dx_want)
    for key in grads_want:
        same(f"grads['{key}']", grads[key], grads_want[key])


@exercise("approximator_grad")
def check_approximator_grad(approximator_grad):
    """approximator_grad(dy, x, params, prefix) -> (dx, grads), against finite differences and
    ``approximator_backward``."""
    _approx_agrees(approximator_grad, *_approx_case({"B": 2, "N": 3, "c4": 2, "seed": 0}), True)
    sizes = {"B": (1, 2), "N": (1, 3), "c4": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _approx_agrees(approximator_grad, *_approx_case(c), False),
                   lambda c: f"B={c['B']}, N={c['N']}, C={4 * c['c4']}", examples=30)
    return (f"dx and every grads entry equal finite differences on a fixed case and approximator_backward "
            f"on {tried}")
