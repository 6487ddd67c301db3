"""The notebooks' self-checking exercises: each check cell FAILS on the student's stub, PASSES on the
solution (the teaching notebook's cell: minitofe's own functions) and FAILS, with a telling message, on a
typical wrong answer, so a check that cannot fail is caught.

The cells are executed directly, as the notebook would (its import cell, the exercise cell, the check
cell), not whole notebooks: that keeps this file to seconds. The student cells are made by the same
``scripts/make_student_notebooks.py`` that educators run; a slow test executes the generated student
notebooks end to end.
"""
import ast
import importlib.util
import pathlib

import pytest

from minitofe.exercises import EXERCISES

nbformat = pytest.importorskip("nbformat")
ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)


def _check_name(check_cell):
    """'exercises.check_x(f, g)' -> 'check_x' (and nothing else is allowed in a check cell)."""
    call = ast.parse(check_cell, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute), check_cell
    assert isinstance(call.func.value, ast.Name) and call.func.value.id == "exercises", check_cell
    return call.func.attr


def exercise_cells():
    """{check name: (notebook, its import cell, the exercise cell, the check cell)} in notebook order."""
    found = {}
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        for i, source in enumerate(code):
            if make_student.BEGIN in source:
                found[_check_name(code[i + 1])] = (path.stem, code[0], source, code[i + 1])
    return found


CELLS = exercise_cells()
NAMES = [name for name, _, _ in EXERCISES]

# A typical wrong answer per exercise (it replaces the solution) and a phrase its FAIL message must contain.
WRONG = {
    "check_layernorm_grad": ("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    g = dy * w
    lead = tuple(range(dy.ndim - 1))
    return rstd * (g - g.mean(-1, keepdims=True)), (dy * xc * rstd).sum(lead), dy.sum(lead)
""", "dx["),
    "check_masked_softmax": ("""
def masked_softmax(s, keep):
    e = keep[:, None, None, :] * np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
""", "the diagonal is always allowed"),
    "check_masked_softmax_grad": ("""
def masked_softmax_grad(dA, s, keep):
    N = s.shape[-1]
    m = keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / (m * e).sum(-1, keepdims=True)
    A = m * p
    g = dA - (A * dA).sum(-1, keepdims=True)
    return A * g, (p * g).sum(axis=(1, 2))
""", "dkeep["),
    "check_straight_through_mask": ("""
def straight_through_mask(logits, noise, tau):
    z = (logits + noise) / tau
    keep = (z[..., 0] > z[..., 1]).astype(float)
    return np.stack([keep, 1 - keep], axis=-1)
""", "ties go to keep"),
    "check_straight_through_grad": ("""
def straight_through_grad(dm, logits, noise, tau):
    z = (logits + noise) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    return y * (dm - (y * dm).sum(-1, keepdims=True))
""", "off by a factor tau"),
    "check_selector_logits": ("""
def selector_logits(x, params, prefix, num_prefix):
    n, _ = layernorm_forward(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"])
    u, _ = gelu_forward(linear_forward(n, params[prefix + "fc1.weight"], params[prefix + "fc1.bias"])[0])
    g = np.broadcast_to(u.mean(axis=1, keepdims=True), u.shape)
    v = np.concatenate([u, g], axis=-1)
    w, _ = gelu_forward(linear_forward(v, params[prefix + "fc2.weight"], params[prefix + "fc2.bias"])[0])
    return linear_forward(w, params[prefix + "fc3.weight"], params[prefix + "fc3.bias"])[0]
""", "averages all N tokens"),
    "check_gather_scatter": ("""
def gather_kept(x, keep):
    idx = np.argsort(keep, axis=1, kind="stable")[:, ::-1][:, :int(keep[0].sum())]
    return x[np.arange(x.shape[0])[:, None], idx]
""", "original order"),
    "check_approximator_grad": ("""
def approximator_grad(dy, x, params, prefix):
    from minitofe.tofe.approximator import approximator_backward, approximator_forward
    dx, grads = approximator_backward(dy, approximator_forward(x, params, prefix)[1])
    return dx - dy, grads
""", "misses the residual"),
    "check_reused_tokens": ("""
def reused_tokens(kept):
    return [np.zeros_like(kept[0])] + [k & ~prev for prev, k in zip(kept, kept[1:])]
""", "frozen at some earlier stage"),
    "check_stage_macs": ("""
def stage_macs(n, N, C, mlp_ratio, num_blocks, r):
    block = (4 + 2 * mlp_ratio) * n * C * C
    selector = N * C * (C // 2) + N * C * (C // 4) + N * (C // 4) * 2
    return num_blocks * block + selector + 2 * (N - n) * C * (C // r)
""", "attention matmuls"),
    "check_budget_loss": ("""
def budget_loss(kept, cfg, stages, target, lam):
    macs, dmacs = tofe_macs(cfg, stages, kept)
    R = macs / dense_macs(cfg)
    loss = lam * (R.mean() - target) ** 2
    return loss, 2 * lam * (R.mean() - target) * dmacs / dense_macs(cfg)
""", "divide by B"),
    "check_decide_tokens": ("""
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "threshold":
        return keep_prob >= threshold
    order = np.argsort(-keep_prob, axis=1, kind="stable")[:, :int(round(ratio * keep_prob.shape[1]))]
    keep = np.zeros(keep_prob.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
""", "kept when > 0.5"),
}


def run_check(name, exercise_source, wrong_source=None):
    """Execute the notebook's import cell, the exercise cell (and a wrong answer), then the check cell."""
    _, imports, _, check = CELLS[name]
    namespace = {}
    exec(compile(imports, "<import cell>", "exec"), namespace)
    exec(compile(exercise_source, "<exercise cell>", "exec"), namespace)
    if wrong_source is not None:
        exec(compile(wrong_source, "<wrong answer>", "exec"), namespace)
    return eval(compile(check, "<check cell>", "eval"), namespace)


def test_at_least_ten_exercises_each_in_the_registry_once():
    assert len(CELLS) >= 10
    assert list(CELLS) == NAMES, "EXERCISES must list the notebooks' check cells, in notebook order"
    assert [CELLS[name][0] for name in NAMES] == [nb for _, nb, _ in EXERCISES]
    assert set(WRONG) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_the_stub(name):
    student_cell, count = make_student.stub_solutions(CELLS[name][2])
    assert count >= 1 and "raise NotImplementedError(" in student_cell and "Hint: " in student_cell
    verdict = run_check(name, student_cell)
    assert not verdict.passed and verdict.message.startswith("not written yet. Hint: "), verdict


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_on_the_solution(name):
    verdict = run_check(name, CELLS[name][2])
    assert verdict.passed, verdict
    assert str(verdict).startswith("PASS ")


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_a_typical_wrong_answer(name):
    source, phrase = WRONG[name]
    verdict = run_check(name, CELLS[name][2], source)
    assert not verdict.passed, verdict
    assert phrase in verdict.message and "Traceback" not in verdict.message, verdict


def test_readme_and_notebooks_give_each_exercise_its_minutes():
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for name, notebook, minutes in EXERCISES:
        function = CELLS[name][3][CELLS[name][3].index("(") + 1:].split(",")[0].rstrip(")")
        assert f"| `{function}` | `{notebook}` | {minutes} |" in readme, function
        markdown = [c.source for c in nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4).cells
                    if c.cell_type == "markdown" and f"`{function}`" in c.source and "Exercise" in c.source]
        assert markdown and f"(about {minutes} min)" in markdown[0], function


def test_student_notebooks_have_stubs_and_nothing_else_changed(tmp_path):
    assert make_student.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.stem for p in tmp_path.glob("*.ipynb"))
    assert written == sorted({nb for _, nb, _ in EXERCISES})
    for stem in written:
        teaching = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4).cells
        student = nbformat.read(tmp_path / f"{stem}.ipynb", as_version=4).cells
        assert len(student) == len(teaching) and make_student.STUDENT_NOTE in student[0].source
        for t, s in zip(teaching[1:], student[1:]):
            if t.cell_type == "code" and make_student.BEGIN in t.source:
                assert "### " not in s.source and "raise NotImplementedError(" in s.source
            else:
                assert s.source == t.source


@pytest.mark.parametrize("source", [
    "def f():\n    ### BEGIN SOLUTION\n    return 1\n",
    "def f():\n    ### HINT: h\n    return 1\n",
    "def f():\n    return 1\n    ### END SOLUTION\n",
    "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n",
])
def test_unbalanced_markers_are_refused(source):
    with pytest.raises(ValueError, match="line|without"):
        make_student.stub_solutions(source)


@pytest.mark.slow
def test_student_notebooks_run_and_every_check_says_fail(tmp_path, monkeypatch):
    """The whole student notebooks execute without an error, and every check cell prints FAIL."""
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    make_student.main(["--out", str(tmp_path)])
    for path in sorted(tmp_path.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], path.name
        checks = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("exercises.check_")]
        texts = [c.outputs[0]["data"]["text/plain"] for c in checks]
        assert texts and all(t.startswith("FAIL ") and "not written yet" in t for t in texts), texts
