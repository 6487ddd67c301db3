"""The trainer: resumable to the same result, atomic checkpoints, non-finite stop, configs, logs."""
import json

import numpy as np
import pytest

import minitofe
from minitofe.train.checkpoint import load_checkpoint
from minitofe.config import ViTConfig
from minitofe.train import NonFiniteLossError, TrainConfig, evaluate, train

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=3, num_heads=2,
                mlp_ratio=2.0)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


def _lines(path):
    return path.read_text().splitlines()


def _model(method="tofe"):
    tcfg = minitofe.ToFeConfig(method=method, stages=(1, 2), keep_ratios=(0.5, 0.5), target_ratio=0.6)
    return minitofe.new_model(CFG, tcfg, np.random.default_rng(0), np.float32)


def _tcfg(tmp_path, name, **kw):
    base = dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=3, eval_images=8,
                checkpoint_every=2, out_dir=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["tofe", "dense"])
def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, method):
    """Bit for bit within one machine (here one process): the checkpoint holds every float of the state
    exactly (weights, optimizer moments, step; the batch order and the Gumbel noise are drawn afresh from
    the seed and the epoch / step), and the resumed steps make the same calls on the same arrays with the
    same BLAS kernel. Across machines the bits are not compared (another CPU's kernel rounds differently)."""
    data = _data()
    teacher = _model().backbone_params()
    full = train(_model(method), teacher, data, data, _tcfg(tmp_path, "full"), progress=False)
    part = train(_model(method), teacher, data, data, _tcfg(tmp_path, "part"), progress=False, stop_at=3)
    assert load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))[2]["step"] == 3
    resumed = train(_model(method), teacher, data, data, _tcfg(tmp_path, "part"), resume=True, progress=False)
    assert all(np.array_equal(full.params[k], resumed.params[k]) for k in full.params)
    assert full.learned_keep_ratios == resumed.learned_keep_ratios
    steps = [json.loads(l)["step"] for l in _lines(tmp_path / "part" / "log.jsonl") if "eval" not in l]
    assert steps == list(range(6))
    m2 = minitofe.load_model(str(tmp_path / "full" / "final.npz"))
    assert m2.tofe == full.tofe and m2.learned_keep_ratios == pytest.approx(full.learned_keep_ratios)
    assert part is not None


def test_training_moves_and_logs(tmp_path):
    data = _data()
    model = _model()
    before = {k: v.copy() for k, v in model.params.items()}
    train(model, model.backbone_params(), data, data, _tcfg(tmp_path, "r", backbone_lr_scale=0.0),
          progress=False)
    moved = [k for k in model.params if not np.array_equal(before[k], model.params[k])]
    assert moved and all(k.startswith("tofe.") for k in moved)   # backbone frozen at scale 0
    lines = [json.loads(l) for l in _lines(tmp_path / "r" / "log.jsonl")]
    rec = lines[0]
    for key in ("total", "cls", "kd", "approx", "flops", "macs_ratio", "keep_ratios", "lr"):
        assert key in rec
    evals = [l["eval"] for l in lines if "eval" in l]
    assert len(evals) == 2 and 0.0 <= evals[0]["top1"] <= 1.0 and evals[0]["macs_ratio"] < 1.0


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    data = _data()
    cfg = _tcfg(tmp_path, "r", steps=2)
    model = _model()
    train(model, model.backbone_params(), data, None, cfg, progress=False)
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match="exists: pass resume=True"):
        train(_model(), model.backbone_params(), data, None, cfg, progress=False)
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before


def test_resume_from_another_config_is_refused(tmp_path):
    data = _data()
    model = _model()
    train(model, model.backbone_params(), data, None, _tcfg(tmp_path, "r", steps=2), progress=False)
    other = minitofe.new_model(CFG, minitofe.ToFeConfig(method="tofe", stages=(1, 2), keep_ratios=(0.5, 0.5),
                                                        target_ratio=0.3), np.random.default_rng(0), np.float32)
    with pytest.raises(ValueError, match=r"tofe.target_ratio is 0.6 in the checkpoint but 0.3 now"):
        train(other, model.backbone_params(), data, None, _tcfg(tmp_path, "r", steps=2), resume=True,
              progress=False)


def _rewrite_meta(path, edit):
    """The checkpoint at ``path`` with its metadata passed through ``edit`` (as another version wrote it)."""
    from minitofe.train.checkpoint import save_checkpoint
    params, opt, meta = load_checkpoint(path)
    edit(meta)
    meta.pop("opt_step")
    save_checkpoint(path, params, opt, meta)


def test_a_run_started_by_an_older_minitofe_resumes(tmp_path):
    """A checkpoint written before a config field existed (the selector and approximator kinds, the fused
    token, the last stage's rule) holds no value for it: it resumes with the field's default, the only
    behaviour its code had; a field today's configs do not know is refused, naming it."""
    data = _data()
    model = _model()
    train(model, model.backbone_params(), data, None, _tcfg(tmp_path, "old", steps=2), progress=False)
    ckpt = tmp_path / "old" / "checkpoint.npz"
    added = ("selector", "approximator", "fuse_frozen", "last_stage")
    _rewrite_meta(ckpt, lambda meta: [meta["tofe"].pop(k) for k in added])
    out = train(_model(), model.backbone_params(), data, None, _tcfg(tmp_path, "old", steps=4), resume=True,
                progress=False)
    assert load_checkpoint(ckpt)[2]["step"] == 4 and out.tofe.selector == "mlp"
    _rewrite_meta(ckpt, lambda meta: meta["tofe"].update(gone_field=1))
    with pytest.raises(ValueError, match=r"checkpoint.npz: cannot resume: its 'tofe' config does not read: "
                                         r".*gone_field"):
        train(_model(), model.backbone_params(), data, None, _tcfg(tmp_path, "old", steps=6), resume=True,
              progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import minitofe.train.loop as trainer
    real_step = trainer.train_step

    def poisoned(model, teacher, images, labels, step, cfg):
        if step == 3:                                   # the weights blow up at step 3
            model.params["head.bias"][0] = np.nan
        return real_step(model, teacher, images, labels, step, cfg)
    monkeypatch.setattr(trainer, "train_step", poisoned)
    data = _data()
    model = _model()
    with pytest.raises((NonFiniteLossError, ValueError), match="step 3"):
        train(model, model.backbone_params(), data, None, _tcfg(tmp_path, "r", checkpoint_every=2),
              progress=False)
    params, _, meta = load_checkpoint(str(tmp_path / "r" / "checkpoint.npz"))
    assert meta["step"] == 2 and all(np.all(np.isfinite(v)) for v in params.values())


def test_evaluate_reports_top1_macs_and_ratios():
    images, labels = _data(12)
    model = _model()
    res = evaluate(model, images, labels, batch_size=5)
    assert res["n"] == 12 and len(res["keep_ratios"]) == 2 and res["img_per_s"] > 0
