"""Check for notebook 03's whole-stage exercise: one ToFe stage at inference, gather -> blocks -> scatter
for the kept tokens and the approximator on the frozen ones (docs/method.md "Keep path", "Freeze path";
``minitofe.tofe.inference.run_stage``).

The plausible wrong stages are computed here and named when a FAIL equals one: the blocks run on every
token (kept tokens then attend to frozen ones), the class token left out of the gather, the frozen tokens
carried unchanged or given the approximator without its residual, the keep mask not shifted by the
prefix tokens, one block too many. Every weight is random (timm's zero biases and the approximator's zero
``fc2`` would hide some of these), and the cases have one or two prefix tokens.
"""
import numpy as np

from ..config import ViTConfig
from ..nn.block import block_forward, run_blocks
from ..nn.layers import gelu_forward, layernorm_forward, linear_forward
from ..nn.params import init_params
from ..tofe.approximator import approximator_forward
from ..tofe.config import ToFeConfig
from ..tofe.inference import run_stage
from ..tofe.ops import REFERENCE
from ..tofe.params import approximator_shapes
from .check_tokens import random_params
from .calls import call, exercise
from .verdict import same, search

APPROX = "tofe.approx.1."
TCFG = ToFeConfig(stages=(1, 2, 3), method="tofe")


def stage_case(grid, T, B, K, seed, blocks=(1, 3)):
    """x (B, T + grid^2, 8), kept (B, grid^2) with K per image, random params, the config."""
    rng = np.random.default_rng(seed)
    cfg = ViTConfig(img_size=2 * grid, patch_size=2, in_chans=1, num_classes=2, embed_dim=8, depth=4,
                    num_heads=2, distilled=T == 2)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(cfg, rng).items()}
    params.update(random_params(approximator_shapes(APPROX, 8, 4), rng))
    P = grid * grid
    kept = np.zeros((B, P), dtype=bool)
    for b in range(B):
        kept[b, rng.choice(P, min(K, P), replace=False)] = True
    x = rng.standard_normal((B, T + P, 8))
    return x, kept, params, blocks, cfg


def _approximate(rows, params, residual=True):
    p = lambda name: params[APPROX + name]
    n, _ = layernorm_forward(rows, p("norm.weight"), p("norm.bias"))
    a, _ = gelu_forward(linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0])
    d, _ = linear_forward(a, p("fc2.weight"), p("fc2.bias"))
    return rows + d if residual else d


def _wrong_stage(x, kept, params, blocks, cfg, *, dense=False, prefix_kept=True, prefix_approximated=False,
                 shifted=True, approximator="mlp", extra_block=False):
    """The stage computed with one plausible mistake (each keyword names one)."""
    B, N, _ = x.shape
    T = N - kept.shape[1]
    lo, hi = blocks[0], blocks[1] + (1 if extra_block else 0)
    prefix = np.full((B, T), prefix_kept)
    keep = np.concatenate([prefix, kept], axis=1) if shifted else np.concatenate([kept, prefix], axis=1)
    out = x.copy()
    if dense:
        out[keep] = run_blocks(x, params, cfg, lo, hi)[keep]
    else:
        idx = np.stack([np.nonzero(row)[0] for row in keep])
        h = x[np.arange(B)[:, None], idx]
        for j in range(lo, hi):
            h, _ = block_forward(h, params, f"blocks.{j}.", cfg.num_heads)
        out[np.arange(B)[:, None], idx] = h
    frozen = ~np.concatenate([np.full((B, T), not prefix_approximated), kept], axis=1) if shifted else ~keep
    if approximator != "identity":
        out[frozen] = _approximate(x[frozen], params, residual=approximator == "mlp")
    return out


def _mistakes(x, kept, params, blocks, cfg):
    args = (x, kept, params, blocks, cfg)
    return [("the blocks ran on every token: a kept token then attends to frozen ones. Gather the kept "
             "tokens (and the prefix tokens) and run the blocks on them alone",
             lambda: _wrong_stage(*args, dense=True)),
            ("the prefix (class) tokens did not go through the blocks: they are always kept, gather them "
             "with the kept patches", lambda: _wrong_stage(*args, prefix_kept=False)),
            ("the prefix (class) tokens did not go through the blocks (they went through the approximator): "
             "they are always kept, gather them with the kept patches",
             lambda: _wrong_stage(*args, prefix_kept=False, prefix_approximated=True)),
            ("the frozen tokens are unchanged: they go through the approximator A(x) = x + MLP(x)",
             lambda: _wrong_stage(*args, approximator="identity")),
            ("the approximator misses its residual: A(x) = x + fc2(GELU(fc1(LN(x))))",
             lambda: _wrong_stage(*args, approximator="no residual")),
            ("kept[b, j] is patch j, token T + j: the keep mask must be shifted past the T prefix tokens",
             lambda: _wrong_stage(*args, shifted=False)),
            (f"one block too many: blocks = {tuple(blocks)} runs blocks {blocks[0]} .. {blocks[1] - 1}, "
             f"like range(*blocks)", lambda: _wrong_stage(*args, extra_block=True))]


def _stage_agrees(stage_forward, x, kept, params, blocks, cfg):
    want = run_stage(x, kept, ~kept, params, cfg, TCFG, 1, blocks, REFERENCE)
    got = call(stage_forward, x, kept, params, blocks, cfg.num_heads, APPROX)
    T = cfg.num_prefix_tokens

    def explain(idx):
        b, j = idx[0], idx[1]
        what = "a prefix token" if j < T else ("kept" if kept[b, j - T] else "frozen")
        return f" (token {j} of image {b} is {what})"
    same("x_out", got, want, rtol=1e-7, atol=1e-9, explain=explain,
         mistakes=_mistakes(x, kept, params, blocks, cfg))


@exercise("stage_forward", replaces=(run_stage, approximator_forward, run_blocks,
                                     "minitofe.tofe.inference.tofe_inference",
                                     "minitofe.kernels.block.run_blocks"))
def check_stage_forward(stage_forward):
    """stage_forward(x, kept, params, blocks, num_heads, approx_prefix) -> x_out (B, N, C), against
    ``inference.run_stage``."""
    _stage_agrees(stage_forward, *stage_case(grid=3, T=1, B=2, K=4, seed=0))
    _stage_agrees(stage_forward, *stage_case(grid=2, T=2, B=1, K=2, seed=1, blocks=(2, 4)))
    sizes = {"grid": (1, 3), "T": (1, 2), "B": (1, 2), "K": (0, 9), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _stage_agrees(stage_forward, *stage_case(**c)),
                   lambda c: "P={}, prefix tokens={}, kept={}".format(
                       c["grid"] ** 2, c["T"], stage_case(**c)[1].astype(int).tolist()), examples=20)
    return (f"x_out equals run_stage on a stage of two blocks with one prefix token, one with two (a "
            f"distilled model), and on {tried}")
