"""The trainer: AdamW with warm-up + cosine schedule, gradient clipping, label smoothing, parameter groups
(backbone at a fraction of the rate, or frozen), distillation from the dense teacher, the ToFe budget loss,
tqdm progress, periodic evaluation, a JSON-lines log of every step, and atomic, resumable checkpoints.

Everything that varies between steps is a function of (seed, step): the batch order of an epoch comes
from ``default_rng([seed, epoch])`` and the Gumbel noise of a step from ``default_rng([seed, 1, step])``,
so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
"""
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from .backend import frozen_copy, read_only
from .checkpoint import check_same_run, load_checkpoint, save_checkpoint
from .model import predict, save_model, update_learned_ratios
from .nn.layers import cross_entropy_backward, cross_entropy_forward
from .nn.vit import vit_backward, vit_forward
from .optim import adamw_init, adamw_step, clip_grad_norm, cosine_lr
from .tofe.budget import evit_keep_rate
from .tofe.evit import keep_rate_at
from .tofe.gumbel import tau_at
from .tofe.training import draw_noise, teacher_forward, tofe_train_backward, tofe_train_forward


class NonFiniteLossError(RuntimeError):
    """Training stopped: a loss or gradient was NaN/inf. The last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1     # backbone lr = lr * scale; 0 freezes the backbone
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr: float = 1e-5
    clip_grad: float = 5.0             # max global gradient norm (None: no clipping)
    ratio_momentum: float = 0.99       # running mean of the per-stage keep ratios
    eval_every: int = 200
    eval_images: int = 1000
    checkpoint_every: int = 100
    log_every: int = 1
    seed: int = 0
    out_dir: str = "runs/train"
    fast: bool = True                  # blocks on the Numba kernels (minitofe.kernels) when Numba is installed
    teacher_cache: bool = False        # compute the teacher once for the whole training set (minitofe.teacher)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_images", "checkpoint_every", "log_every",
                     "warmup_steps", "seed"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"TrainConfig: {name} must be an int, got {v!r}")
            if name in ("warmup_steps", "seed") and v < 0:
                raise ValueError(f"TrainConfig: need {name} >= 0, got {v!r}")
            if name not in ("warmup_steps", "seed") and v <= 0:
                raise ValueError(f"TrainConfig: {name} must be a positive int, got {v!r}")
        if not isinstance(self.teacher_cache, bool) or not isinstance(self.fast, bool):
            raise TypeError(f"TrainConfig: teacher_cache and fast must be True or False, got "
                            f"{self.teacher_cache!r}, {self.fast!r}")
        for name in ("lr", "backbone_lr_scale", "weight_decay", "min_lr", "ratio_momentum") + (
                ("clip_grad",) if self.clip_grad is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating)) or isinstance(v, bool) or not np.isfinite(v):
                raise TypeError(f"TrainConfig: {name} must be a finite number, got {v!r}")
        if not self.lr > 0 or self.backbone_lr_scale < 0 or self.weight_decay < 0 or self.min_lr < 0:
            raise ValueError(f"TrainConfig: need lr > 0, backbone_lr_scale >= 0, weight_decay >= 0, min_lr >= 0; "
                             f"got {self.lr}, {self.backbone_lr_scale}, {self.weight_decay}, {self.min_lr}")
        if not 0 <= self.ratio_momentum < 1 or (self.clip_grad is not None and not self.clip_grad > 0):
            raise ValueError(f"TrainConfig: need 0 <= ratio_momentum < 1 and clip_grad > 0 (or None); got "
                             f"{self.ratio_momentum}, {self.clip_grad}")


def batch_indices(step, n, batch_size, seed):
    """Indices of the batch taken at ``step``: epoch-wise permutations, the last partial batch dropped."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({n} images)")
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[i * batch_size:(i + 1) * batch_size]


def _lr_scales(params, tcfg, train_cfg):
    return {k: (1.0 if k.startswith("tofe.") else train_cfg.backbone_lr_scale) for k in params}


def train_step(model, teacher_params, images, labels, step, train_cfg, teacher=None):
    """Forward + backward of one batch -> (out dict with 'loss', 'losses', ..., grads). ``teacher``: the
    teacher's outputs for this batch when they are already known (``TeacherCache``); else they are
    computed from ``teacher_params``."""
    cfg, tcfg = model.cfg, model.tofe
    if tcfg.method == "dense":
        logits, cache = vit_forward(model.params, images, cfg, fast=train_cfg.fast)
        loss, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
        _, grads = vit_backward(cross_entropy_backward(1.0, c_ce), cache)
        return {"loss": float(loss), "losses": {"cls": float(loss), "total": float(loss)}}, grads
    stages = tcfg.resolved_stages(cfg.depth)
    if not tcfg.needs_teacher:
        teacher = None
    elif teacher is None:
        teacher = teacher_forward(teacher_params, images, cfg, stages, fast=train_cfg.fast)
    noise = draw_noise(np.random.default_rng([train_cfg.seed, 1, step]), cfg, tcfg, len(images), images.dtype)
    tau = tau_at(step, train_cfg.steps, tcfg.tau, tcfg.tau_end, tcfg.tau_schedule)
    if tcfg.method == "evit":        # the keep rate annealed from 1 to its target (evit.keep_rate_at)
        rate = keep_rate_at(step, train_cfg.steps, evit_keep_rate(cfg, tcfg), tcfg.evit_warmup, tcfg.evit_anneal)
        tcfg, tau = tcfg.replace(evit_keep_rate=rate), None
    out, cache = tofe_train_forward(model.params, images, labels, cfg, tcfg, noise, teacher, tau,
                                    fast=train_cfg.fast)
    out["tau"] = tau
    if not math.isfinite(out["loss"]):
        return out, None
    _, grads = tofe_train_backward(cache)
    return out, grads


def evaluate(model, images, labels, batch_size=100, progress=False, **predict_kw):
    """Top-1, mean realised MACs and keep ratios, img/s of ``predict`` over a data set."""
    from tqdm.auto import tqdm
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"evaluate: batch_size must be a positive int, got {batch_size!r}")
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"evaluate: need as many labels as images, at least one; got {len(images)} images "
                         f"and {len(labels)} labels")
    correct, macs, kept, n = 0, [], [], len(images)
    start = time.perf_counter()
    for lo in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        logits, info = predict(model, images[lo:lo + batch_size], **predict_kw)
        correct += int((np.asarray(logits).argmax(axis=1) == labels[lo:lo + batch_size]).sum())
        macs.append(info["macs"])
        if len(info.get("kept", [])):
            kept.append(np.stack([k.mean(axis=1) for k in info["kept"]], axis=1))
    seconds = time.perf_counter() - start
    macs = np.concatenate(macs)
    return {"top1": correct / n, "n": n, "macs": float(macs.mean()), "macs_ratio": float(macs.mean() /
            _dense(model)), "keep_ratios": np.concatenate(kept).mean(axis=0).tolist() if kept else [],
            "img_per_s": n / seconds}


def _dense(model):
    from .tofe.macs import dense_macs
    return dense_macs(model.cfg)


class _stop_on_sigint:
    """Context manager: the first SIGINT sets ``requested`` (the loop checkpoints and stops after the
    current step, so no update is ever half-applied); a second one interrupts at once."""
    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _expected_meta(model, train_cfg):
    return {"model": model.cfg.to_dict(), "tofe": model.tofe.to_dict(), "train": asdict(train_cfg)}


def _trim_log(path, last_step):
    """Keep only log lines of steps <= last_step (steps after the checkpoint are redone on resume)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", -1) <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def checkpoint_path(out_dir):
    return os.path.join(out_dir, "checkpoint.npz")


def train(model, teacher_params, train_data, eval_data=None, train_cfg=TrainConfig(), resume=False,
          progress=True, stop_at=None):
    """Train ``model`` (updated in place) on ``train_data = (images, labels)``; returns the model.

    ``teacher_params``: the dense teacher's backbone weights (L_kd, L_approx). The trainer takes its own
    read-only copy of them, so the teacher stays what it was when ``train`` was called even when the
    caller passes the student's own arrays (``model.backbone_params()``). Parameters the schedule
    freezes (``backbone_lr_scale=0``) are read-only views while training runs: a stray in-place write
    raises instead of passing silently.

    Files in ``train_cfg.out_dir``: ``checkpoint.npz`` (resumable), ``log.jsonl`` (one line per step,
    plus ``eval`` lines), ``final.npz`` (the weights with their configs and learned keep ratios).
    ``stop_at``: checkpoint and return after that many steps (of ``train_cfg.steps``): a long run is done
    in pieces, each resumed with ``resume=True``, to the same result as one uninterrupted run."""
    teacher_params = None if teacher_params is None else frozen_copy(teacher_params)
    os.makedirs(train_cfg.out_dir, exist_ok=True)
    ckpt = checkpoint_path(train_cfg.out_dir)
    log_path = os.path.join(train_cfg.out_dir, "log.jsonl")
    opt = adamw_init(model.params)
    start = 0
    if resume and os.path.exists(ckpt):
        params, opt, meta = load_checkpoint(ckpt)
        check_same_run(ckpt, meta, _expected_meta(model, train_cfg))
        if set(params) != set(model.params):
            raise ValueError(f"{ckpt}: parameter keys differ from the model's")
        model.params.update(params)
        model.learned_keep_ratios = tuple(meta["learned_keep_ratios"]) if meta.get("learned_keep_ratios") else None
        start = int(meta["step"])
        _trim_log(log_path, start - 1)
    elif os.path.exists(ckpt) and not resume:
        raise ValueError(f"{ckpt} exists: pass resume=True (--resume) to continue it, or choose another "
                         f"out_dir; nothing was overwritten")
    run = dict(opt=opt, start=start, ckpt=ckpt, log_path=log_path,
               scales=_lr_scales(model.params, model.tofe, train_cfg))
    frozen = {k for k, s in run["scales"].items() if s == 0.0}
    writable = {k: model.params[k] for k in frozen}
    model.params.update({k: read_only(v) for k, v in writable.items()})
    try:
        return _train_loop(model, teacher_params, train_data, eval_data, train_cfg, run, progress, stop_at)
    finally:                                      # the caller gets its own (writable) arrays back
        model.params.update(writable)


def _train_loop(model, teacher_params, train_data, eval_data, train_cfg, run, progress, stop_at):
    """The steps of ``train`` from ``run['start']`` on; ``run`` holds the optimizer state, the paths and
    the per-parameter learning-rate scales (0: frozen)."""
    from tqdm.auto import tqdm
    images, labels = train_data
    opt, start, ckpt, log_path, scales = (run[k] for k in ("opt", "start", "ckpt", "log_path", "scales"))
    frozen = [k for k, s in scales.items() if s == 0.0]
    cache = None
    if train_cfg.teacher_cache and model.tofe.needs_teacher and start < train_cfg.steps:
        from .teacher import TeacherCache
        cache = TeacherCache(teacher_params, images, model.cfg, model.tofe.resolved_stages(model.cfg.depth),
                             train_cfg.batch_size, fast=train_cfg.fast, progress=progress)

    def save(step):
        meta = dict(_expected_meta(model, train_cfg), step=step,
                    learned_keep_ratios=list(model.learned_keep_ratios or []))
        save_checkpoint(ckpt, model.params, opt, meta)

    bar = tqdm(range(start, train_cfg.steps), desc=f"train {model.tofe.method}", disable=not progress,
               initial=start, total=train_cfg.steps)
    with open(log_path, "a") as log, _stop_on_sigint() as stop:
        for step in bar:
            t0 = time.perf_counter()
            idx = batch_indices(step, len(images), train_cfg.batch_size, train_cfg.seed)
            known = {} if cache is None else {"teacher": cache.batch(idx)}
            out, grads = train_step(model, teacher_params, images[idx], labels[idx], step, train_cfg, **known)
            if grads is None or not all(np.all(np.isfinite(g)) for g in grads.values()):
                what = "loss" if grads is None else "gradient"
                raise NonFiniteLossError(f"step {step}: non-finite {what} (loss {out['loss']}); stopped. "
                                         f"The last good checkpoint is kept at {ckpt}")
            for k in frozen:
                grads.pop(k, None)
            gnorm = clip_grad_norm(grads, train_cfg.clip_grad)
            lr = cosine_lr(step, train_cfg.steps, train_cfg.lr, train_cfg.warmup_steps, train_cfg.min_lr)
            adamw_step(model.params, grads, opt, lr, weight_decay=train_cfg.weight_decay, lr_scale=scales)
            rec = {"step": step, "lr": lr, "grad_norm": gnorm, **out["losses"],
                   "seconds": time.perf_counter() - t0}
            if "keep_ratios" in out:
                update_learned_ratios(model, out["keep_ratios"], train_cfg.ratio_momentum)
                rec.update(tau=out["tau"], macs_ratio=float(np.mean(out["macs_ratio"])),
                           keep_ratios=[float(r) for r in out["keep_ratios"]])
            if step % train_cfg.log_every == 0:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{out['loss']:.3f}", macs=f"{rec.get('macs_ratio', 1.0):.2f}")
            done = step + 1
            pause = stop.requested or done == stop_at
            if done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps or pause:
                save(done)
            if eval_data is not None and (done % train_cfg.eval_every == 0 or done == train_cfg.steps):
                n = min(train_cfg.eval_images, len(eval_data[0]))
                res = evaluate(model, eval_data[0][:n], eval_data[1][:n], fast=train_cfg.fast, progress=progress)
                log.write(json.dumps({"step": step, "eval": res}) + "\n")
                log.flush()
            if pause:                      # Ctrl-C or stop_at: finish the step, checkpoint it, stop cleanly
                bar.close()
                if stop.requested:
                    print(f"interrupted: checkpoint after step {step} written to {ckpt}; resume with --resume")
                return model
    save_model(os.path.join(train_cfg.out_dir, "final.npz"), model)
    return model
