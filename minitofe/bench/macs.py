"""``minitofe bench``'s ``macs`` section: do MACs become seconds? Each method's own inference path
(``minitofe.predict(model, x, method=..., keep_ratios=..., fast=True)``, float32) at a MACs budget,
against the dense forward of the same model, each (method, budget) a contender in a process of its own.

Models: the shipped Fashion-MNIST backbone ``vit_fmnist_patch4_28`` (49 patches + 1 class token) and
DeiT-S (196 + 1, random weights, as the other sections). Speed depends on shapes only (``topk`` keeps
the same count whatever the scores), so a method whose trained modules are not at hand gets fresh random
ones of the right shapes (``weights_of`` says which). Keep ratios for a budget: the registry's
``ratios_for_budget`` (ToFe scales its learned ratios, the paper's on DeiT-S; EViT's keep rate; DynamicViT's
rho); the realised MACs ratio is the one ``predict`` reports. ``breakdown`` parts a call's time by what
runs (``cProfile``, cumulative times of the functions named in ``PARTS``, outermost first).
"""
import cProfile
import pstats

import numpy as np

METHODS = ("tofe", "evit", "dynamicvit")
BUDGETS = (0.35, 0.50, 0.70)
PAPER_RATIOS = (0.49, 0.25, 0.14)           # ToFe's learned ratios on DeiT-S: the profile scaled there
FMNIST = "vit_fmnist_patch4_28"


def models(quick):
    return (FMNIST, "deit_tiny_patch16_224" if quick else "deit_small_patch16_224")


def batches(quick):
    return (1, 2) if quick else (1, 32)


def contenders():
    """'dense', then '<method><budget %>' for every method and budget."""
    return ["dense"] + [f"{m}{round(100 * b)}" for m in METHODS for b in BUDGETS]


def parse(contender):
    """'evit35' -> ('evit', 0.35); 'dense' -> ('dense', 1.0)."""
    if contender == "dense":
        return "dense", 1.0
    method = contender.rstrip("0123456789")
    return method, int(contender[len(method):]) / 100


def images(cfg, B):
    rng = np.random.default_rng(100 + B)
    return rng.standard_normal((B, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)


def weights_of(name, method):
    """(model, what its weights are): the shipped files for the Fashion-MNIST model (ToFe's fine-tuned
    modules when shipped, else the backbone with fresh modules), random weights for the others."""
    from .. import load_shipped, new_model
    from ..config import get_config
    from ..tofe.config import ToFeConfig
    if name == FMNIST:
        model, what = load_shipped(method, rng=np.random.default_rng(0), dtype=np.float32)
        trained = what.startswith("fine-tuned") or method in ("dense", "evit")   # evit: no modules of its own
        return model, ("shipped weights" if trained else "shipped backbone, FRESH random modules") + \
            (" (RANDOM)" if what.startswith("RANDOM") else "")
    cfg = get_config(name)
    return new_model(cfg, ToFeConfig(method=method), np.random.default_rng(0), np.float32), "random weights"


def keep_ratios(model, method, budget):
    """The method's keep ratios for ``budget`` (None for dense): the registry's search."""
    from .. import methods
    if method == "dense":
        return None
    tcfg = model.tofe.replace(method=method)
    base = None
    if method == "tofe":
        base = model.learned_keep_ratios if model.learned_keep_ratios is not None else PAPER_RATIOS
    return tuple(float(r) for r in methods.ratios_for_budget(model.cfg, tcfg, budget, base))


class Calls(dict):
    """{key: callable} with ``info``: what the worker reports when ready (realised MACs, ratios)."""
    info = None


def build_macs(contender, quick):
    """The contender's calls, one per model and batch: key '<model>/batch<B>'."""
    from .. import predict
    calls, info = Calls(), {}
    method, budget = parse(contender)
    for name in models(quick):
        model, what = weights_of(name, method)
        ratios = keep_ratios(model, method, budget)
        for B in batches(quick):
            x = images(model.cfg, B)
            key = f"{name}/batch{B}"
            calls[key] = (lambda m=model, x=x, r=ratios:
                          predict(m, x, method=method, keep_ratios=r, fast=True))
            _, out = calls[key]()
            info[key] = {"macs_ratio": float(np.mean(out["macs_ratio"])), "weights": what,
                         "keep_ratios": None if ratios is None else [round(r, 4) for r in ratios]}
    calls.info = info
    return calls


# What a call's time goes to: (part, [(file ending, function)]); a part's time is the cumulative time of
# its functions; ``predict`` and ``run.inference`` count only what they do themselves around the method.
PARTS = (
    ("blocks (fast kernels)", [("kernels/block.py", "run_blocks")]),
    ("EViT reduction blocks (NumPy)", [("evit_block.py", "evit_block_forward")]),
    ("ToFe selector", [("scoring.py", "stage_scores")]),
    ("ToFe approximator", [("approximator.py", "approximator_forward")]),
    ("DynamicViT predictor (NumPy)", [("dynamicvit_predictor.py", "predictor_forward")]),
    ("gather / scatter", [("tokens.py", "gather_tokens"), ("tokens.py", "scatter_tokens")]),
    ("embedding, head", [("embed.py", "embed_forward"), ("embed.py", "head_forward")]),
    ("input checks", [("evit_model.py", "check_evit_inputs")]),
)
INFERENCES = (("dense.py", "dense_inference"), ("inference.py", "tofe_inference"),
              ("evit.py", "evit_predict"), ("dynamicvit_infer.py", "dynamicvit_inference"))


def _cumulative(stats, wanted):
    return sum(row[3] for (path, _, func), row in stats.items()
               if any(path.endswith(end) and func == f for end, f in wanted))


def breakdown(f, calls=1):
    """Seconds of one call of ``f`` (under ``cProfile``, which adds ~1 us a Python call) by part:
    {"total_s", "seconds": {part: s}}; "other" is the rest (top-k, records, MACs count, Python);
    "predict's set-up" is ``predict``'s own time (its thread scope, the config)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        f()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = _cumulative(stats, [("model.py", "predict")]) / calls
    run = _cumulative(stats, [("methods/run.py", "inference")]) / calls
    inner = _cumulative(stats, INFERENCES) / calls
    out = {part: _cumulative(stats, wanted) / calls for part, wanted in PARTS}
    out["input checks"] += run - inner
    out["predict's set-up"] = total - run
    out["other (top-k, records, Python)"] = max(0.0, total - sum(out.values()))
    return {"total_s": total, "seconds": {k: v for k, v in out.items() if v > 0}}
