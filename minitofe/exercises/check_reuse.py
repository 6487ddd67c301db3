"""Check for notebook 03's lagged-reuse exercise: which kept tokens count as *reused* (docs/method.md "Token
selector": a token frozen at one stage may be kept again at a later one).

The package has no separate function for this bookkeeping: ``tofe_inference`` records it while it runs.
``reused_by_predict`` therefore gets the answer from ``predict`` itself, on a tiny random-weight model
forced to take exactly the given keep decisions (``kept_masks``), so the answer is the package's own.
"""
import numpy as np

from ..config import ViTConfig
from ..model import new_model, predict
from ..tofe.config import ToFeConfig
from .calls import call, exercise
from .verdict import as_array, same, search


def reused_by_predict(kept):
    """kept: S boolean (B, P) keep decisions, one per stage, P a square number -> ``info["reused"]`` of
    ``predict`` run with exactly these decisions: S boolean (B, P) arrays."""
    kept = [np.asarray(k, dtype=bool) for k in kept]
    S, (B, P) = len(kept), kept[0].shape
    grid = int(round(P ** 0.5))
    if S == 0 or grid * grid != P:
        raise ValueError(f"reused_by_predict needs at least one stage and P a square number, "
                         f"got S={S}, P={P}")
    cfg = ViTConfig(img_size=2 * grid, patch_size=2, in_chans=1, num_classes=2, embed_dim=8, depth=S + 1,
                    num_heads=2)
    tcfg = ToFeConfig(stages=tuple(range(1, S + 1)), keep_ratios=(0.5,) * S)
    model = new_model(cfg, tcfg, np.random.default_rng(0))
    _, info = predict(model, np.zeros((B, 1, 2 * grid, 2 * grid)), kept_masks=kept)
    return info["reused"]


def _history(kept, b, j):
    return ", ".join(f"stage {s + 1} {'kept' if k[b, j] else 'frozen'}" for s, k in enumerate(kept))


def _reuse_mistakes(kept):
    k = np.stack(kept)                                                     # (S, B, P)
    before = np.concatenate([np.zeros_like(k[:1]), k[:-1]])               # the stage just before
    ever_kept = np.logical_or.accumulate(np.concatenate([np.zeros_like(k[:1]), k[:-1]]), axis=0)
    return [("a token counts as reused only when frozen at the stage just before; frozen at ANY earlier "
             "stage counts", k & ~before & (np.arange(len(k)) > 0)[:, None, None]),
            ("reused means kept now and FROZEN at an earlier stage, not kept at an earlier one",
             k & ever_kept),
            ("these are the tokens frozen now after being kept before; reused means kept now, frozen before",
             ~k & ever_kept),
            ("every kept token counts as reused; only those frozen at an earlier stage do", k)]


def _reuse_agrees(reused_tokens, kept):
    want = np.stack(reused_by_predict(kept))                              # (S, B, P)
    got = call(reused_tokens, kept)
    got = as_array("reused", list(got) if isinstance(got, tuple) else got, want)

    def explain(idx):
        s, b, j = idx
        return (f" (token {j} of image {b}: {_history(kept, b, j)}. Reused at stage {s + 1} means kept "
                f"there and frozen at some earlier stage)")
    same("reused", got, want, explain=explain, mistakes=_reuse_mistakes(kept))


def _case(case):
    rng = np.random.default_rng(case["seed"])
    P = case["grid"] ** 2
    return [rng.random((case["B"], P)) < 0.5 for _ in range(case["S"])]


@exercise("reused_tokens", replaces=(predict, reused_by_predict, "minitofe.tofe.record.record_stage",
                                    "minitofe.tofe.inference.tofe_inference"))
def check_reused_tokens(reused_tokens):
    """reused_tokens(kept) -> S boolean (B, P) arrays, against ``predict``'s ``info["reused"]``."""
    fixed = [np.array([[1, 0, 1, 0]], bool), np.array([[0, 1, 1, 0]], bool), np.array([[1, 1, 0, 0]], bool)]
    _reuse_agrees(reused_tokens, fixed)
    sizes = {"S": (1, 3), "B": (1, 2), "grid": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _reuse_agrees(reused_tokens, _case(c)),
                   lambda c: f"kept={[k.astype(int).tolist() for k in _case(c)]}", examples=30)
    return f"reused equals predict's record on a fixed case and on {tried}"
