"""Write ``tests/fixtures/pinned/methods.npz``: every method's outputs on a tiny float64 model, saved so
that a refactor can show it changed nothing (``tests/test_pinned.py`` compares with ``np.array_equal``).

Unlike ``make_fixtures.py`` (timm's values, independent of minitofe) this file pins minitofe against
*itself*: it is a regression fixture, not an oracle. For every training method (``tofe``,
``tofe-identity``, ``tofe-uniform``, ``tofe-cumulative``, ``dynamicvit``, ``evit``), with the hard
straight-through mask and with the soft relaxation, it saves the logits, every loss term, the masks,
keep ratios and MACs, dimages and every gradient; for every inference method (``minitofe.methods.names()``,
``topk`` and, where a selector is learned, ``threshold``) the logits, the kept / frozen / reused /
dropped records, the scores, the stage outputs and the MACs. Everything runs on the NumPy reference
(``fast=False``) with fixed seeds and pre-drawn Gumbel noise.

The file also records the arithmetic that made it (``ARITHMETIC_KEY``: NumPy version and SIMD loops, the
BLAS library with its version and core type, Numba; ``minitofe.testing.provenance``). Where the running
machine has the same, the values must be bit-identical; elsewhere floats must be within 1e-12 of each
pinned array's magnitude (BLAS kernels add in other orders) and masks, indices and counts exact.

    python scripts/make_pinned.py            # (re)write the fixture -- only when behaviour is MEANT to change
    python scripts/make_pinned.py --check    # recompute and compare (bit for bit where the arithmetic
                                             # is the one recorded), write nothing
"""
import argparse
import json
import pathlib
import sys

import numpy as np

from minitofe import kernels
from minitofe.config import ViTConfig
from minitofe.nn.params import init_params
from minitofe.testing.provenance import arithmetic, differences
from minitofe.methods import inference as tofe_inference
from minitofe.methods import init_params as init_tofe_params
from minitofe.methods import names
from minitofe.methods import train_backward as tofe_train_backward
from minitofe.methods import train_forward as tofe_train_forward
from minitofe.tofe.config import ToFeConfig
from minitofe.tofe.training import draw_noise, teacher_forward

METHODS = names()

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pinned" / "methods.npz"
ARITHMETIC_KEY = "__arithmetic__"
TRAIN_METHODS = ("tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative", "dynamicvit", "evit")
CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                init_values=0.5)
B = 3


def _setup(method, seed, **kw):
    """Teacher and student params (student = perturbed teacher, ToFe modules large enough to matter),
    images, labels, the teacher's outputs and the Gumbel noise, all from one seed."""
    rng = np.random.default_rng(seed)
    tcfg = ToFeConfig(method=method, stages=(1, 2, 3), keep_ratios=(0.5, 0.4, 0.3), target_ratio=0.6,
                      evit_keep_rate=0.7, dvit_rho=0.7, **kw)
    teacher_params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(CFG, rng).items()}
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in teacher_params.items()}
    params.update({k: v + 0.5 * rng.standard_normal(v.shape)
                   for k, v in init_tofe_params(CFG, tcfg, rng).items()})
    images = rng.standard_normal((B, CFG.in_chans, CFG.img_size, CFG.img_size))
    labels = rng.integers(0, CFG.num_classes, B)
    teacher = teacher_forward(teacher_params, images, CFG, tcfg.resolved_stages(CFG.depth))
    noise = draw_noise(rng, CFG, tcfg, B, np.float64)
    return params, images, labels, tcfg, teacher, noise


def _put(store, prefix, value):
    """Flatten dicts / lists / scalars / arrays into ``store`` under '/'-joined keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            _put(store, f"{prefix}/{k}", v)
    elif isinstance(value, (list, tuple)):
        store[f"{prefix}/len"] = np.asarray(len(value))
        for i, v in enumerate(value):
            _put(store, f"{prefix}/{i}", v)
    elif value is not None:
        store[prefix] = np.asarray(value)


def _put_grads(store, prefix, grads):
    """All gradients as one flat vector in key order, and the keys with their shapes (fewer zip entries)."""
    keys = sorted(grads)
    store[f"{prefix}/keys"] = np.array(keys)
    store[f"{prefix}/shapes"] = np.array([str(tuple(grads[k].shape)) for k in keys])
    store[f"{prefix}/flat"] = np.concatenate([grads[k].ravel() for k in keys])


TRAIN_KEYS = ("loss", "losses", "logits", "masks", "kept", "frozen", "reused", "keep_ratios", "macs",
              "macs_ratio", "selector_logits", "stage_outputs", "final_tokens", "tokens", "tau")
INFER_KEYS = ("kept", "frozen", "reused", "dropped", "keep_prob", "stage_outputs", "kept_counts", "macs",
              "macs_ratio", "tokens", "stages")


# (name, method, extra ToFeConfig fields): every training method, and the per-image budget
TRAIN_CASES = tuple((m, m, {}) for m in TRAIN_METHODS) + (
    ("tofe-per-image", "tofe", dict(per_image_budget=True, label_smoothing=0.1)),)


def train_case(name, hard, fast=False):
    """-> (out, dimages, grads) of one pinned training case."""
    seed, (_, method, kw) = next((i, c) for i, c in enumerate(TRAIN_CASES) if c[0] == name)
    params, images, labels, tcfg, teacher, noise = _setup(method, seed, tau=1.5, **kw)
    out, cache = tofe_train_forward(params, images, labels, CFG, tcfg, noise, teacher, hard=hard,
                                    ops=kernels.ops(fast, like=images))
    dimages, grads = tofe_train_backward(cache)
    return out, dimages, grads


def compute():
    """-> {key: array} of every pinned value."""
    store = {}
    for case, _, _ in TRAIN_CASES:
        for hard in (True, False):
            out, dimages, grads = train_case(case, hard)
            name = f"train/{case}/{'hard' if hard else 'soft'}"
            _put(store, name, {k: out[k] for k in TRAIN_KEYS if k in out})
            _put(store, f"{name}/dimages", dimages)
            _put_grads(store, f"{name}/grads", grads)
    for seed, method in enumerate(METHODS):
        modes = ("topk", "threshold") if method in TRAIN_METHODS[:4] else ("topk",)
        for mode in modes:
            params, images, _, tcfg, _, _ = _setup(method, 100 + seed, inference=mode, threshold=0.45)
            logits, info = tofe_inference(params, images, CFG, tcfg)
            name = f"infer/{method}/{mode}"
            _put(store, f"{name}/logits", logits)
            _put(store, name, {k: info[k] for k in INFER_KEYS if k in info})
    return store


def load():
    """-> (the pinned values, the arithmetic that made them)."""
    with np.load(OUT, allow_pickle=False) as f:
        values = {k: f[k] for k in f.files if k != ARITHMETIC_KEY}
    return values, recorded_arithmetic()


def recorded_arithmetic():
    """The arithmetic that made the pinned file (``minitofe.testing.provenance.arithmetic``), or None for a
    file that predates the record; reads that entry only."""
    with np.load(OUT, allow_pickle=False) as f:
        return json.loads(str(f[ARITHMETIC_KEY])) if ARITHMETIC_KEY in f.files else None


def mode(made_on):
    """'exact' where this machine's arithmetic is the one that made the file, else 'bounded'."""
    return "exact" if made_on == arithmetic() else "bounded"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the saved file, write nothing")
    args = ap.parse_args(argv)
    store = compute()
    if args.check:
        saved, made_on = load()
        how = mode(made_on)
        bad = differences(saved, store, exact=how == "exact")
        print(f"{len(store)} values compared ({how}), {len(bad)} differ" + (f": {bad[:10]}" if bad else ""))
        return 1 if bad else 0
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **store, **{ARITHMETIC_KEY: np.array(json.dumps(arithmetic(), sort_keys=True))})
    print(f"wrote {OUT.name}: {len(store)} values, {OUT.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
