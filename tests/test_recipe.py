"""The copy-paste command in ``weights/README.md`` remakes the shipped ToFe model: its options are the ones
recorded in ``tofe_fmnist_patch4_50.npz``, and (slow, needs Fashion-MNIST) its first training steps are
those of the kept log ``weights/logs/tofe_50_s0.first-steps.jsonl`` to float32 rounding."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = "<!-- the recipe of the shipped ToFe model: checked by tests/test_recipe.py -->"
FIRST_STEPS = REPO / "weights" / "logs" / "tofe_50_s0.first-steps.jsonl"
# the loss terms of a step; float32 training on another BLAS kernel moves them by ~1e-6 relative over a few
# steps, a change of recipe (lam, the learning rates, the batch, the seed) by 1e-2 or more
TERMS = ("cls", "kd", "approx", "flops", "total")


def recipe_commands():
    text = (REPO / "weights" / "README.md").read_text()
    block = re.search(re.escape(MARKER) + r"\n```\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def train_args(extra=()):
    from minitofe.cli import build_parser
    train = next(c for c in recipe_commands() if c[:2] == ["minitofe", "train"])
    return build_parser().parse_args([*train[1:], *extra])


def test_the_recipe_is_the_shipped_models():
    """Every option the shipped file recorded (its ToFe config) is what the command asks for."""
    from minitofe import load_model
    from minitofe.cli.train import options
    opts = options(train_args())
    shipped = load_model(REPO / "weights" / "tofe_fmnist_patch4_50.npz").tofe
    asked = {"method": opts["method"], "target_ratio": opts["budget"], "lam": opts["lam"],
             "alpha": opts["alpha"], "beta": opts["beta"], "approx_reduction": opts["approx_reduction"],
             "tau": opts["tau"], "tau_end": opts["tau_end"], "label_smoothing": opts["label_smoothing"]}
    assert asked == {k: getattr(shipped, k) for k in asked}
    assert (opts["batch"], opts["steps"], opts["seed"], opts["backbone_lr_scale"]) == (64, 2578, 0, 1.0)
    assert opts["steps"] == round(3 * 55_000 / 64)                       # three epochs of the train split
    assert pathlib.Path(REPO, opts["init"]).is_file()


def test_the_kept_log_holds_the_first_steps():
    rows = [json.loads(line) for line in FIRST_STEPS.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows))) and len(rows) >= 10
    assert all(set(TERMS) <= set(r) for r in rows)


@pytest.mark.slow
def test_the_recipes_first_steps_are_the_kept_logs(tmp_path):
    from minitofe.data.fashion_mnist import fashion_mnist_root
    if not any((fashion_mnist_root() / f"train-images-idx3-ubyte{e}").is_file() for e in ("", ".gz")):
        pytest.skip("needs the Fashion-MNIST files (apt-get install dataset-fashion-mnist)")
    kept = [json.loads(line) for line in FIRST_STEPS.read_text().splitlines()]
    train = next(c for c in recipe_commands() if c[:2] == ["minitofe", "train"])
    out = tmp_path / "run"
    argv = [a if a != "runs/tofe_50_s0" else str(out) for a in train[1:]]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "minitofe", *argv, "--stop-at", str(len(kept)), "--no-progress"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"seconds"' in line]
    for want, got in zip(kept, rows):
        for term in TERMS:
            np.testing.assert_allclose(got[term], want[term], rtol=1e-4, err_msg=f"step {want['step']} {term}")
    assert len(rows) == len(kept)
