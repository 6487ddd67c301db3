"""The training loop: AdamW with warm-up + cosine schedule, gradient clipping, label smoothing,
parameter groups (backbone at a fraction of the rate, or frozen), distillation from the dense teacher,
the ToFe budget loss, tqdm progress, periodic evaluation, a JSON-lines log of every step, and atomic,
resumable checkpoints.

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
from dataclasses import asdict

import numpy as np

from .checkpoint import as_now, check_same_run, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import evaluate
from .optim import adamw_init, adamw_step, clip_grad_norm, cosine_lr
from .. import kernels
from ..backend import frozen_copy, read_only
from ..heap import keep_freed_memory
from ..model import save_model, update_learned_ratios
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.vit import vit_backward, vit_forward
from .. import methods
from ..tofe.gumbel import tau_at
from ..tofe.training import draw_noise, teacher_forward

__all__ = ["NonFiniteLossError", "batch_indices", "train_step", "train", "checkpoint_path"]


class NonFiniteLossError(RuntimeError):
    """Training stopped: a loss or gradient was NaN/inf. The last good checkpoint is kept."""


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
    ops = kernels.ops(train_cfg.fast, like=images)          # the Numba twins, or None: the reference
    if tcfg.method == "dense":
        logits, cache = vit_forward(model.params, images, cfg, ops=ops)
        loss, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
        _, grads = vit_backward(cross_entropy_backward(1.0, c_ce), cache)
        return {"loss": float(loss), "losses": {"cls": float(loss), "total": float(loss)}}, grads
    stages = tcfg.resolved_stages(cfg.depth)
    if not tcfg.needs_teacher:
        teacher = None
    elif teacher is None:
        teacher = teacher_forward(teacher_params, images, cfg, stages, ops=ops)
    noise = draw_noise(np.random.default_rng([train_cfg.seed, 1, step]), cfg, tcfg, len(images), images.dtype)
    method = methods.get(tcfg.method)
    tau = tau_at(step, train_cfg.steps, tcfg.tau, tcfg.tau_end, tcfg.tau_schedule) if method.noise else None
    tcfg = method.train_schedule(cfg, tcfg, step, train_cfg.steps)     # e.g. EViT's annealed keep rate
    out, cache = methods.train_forward(model.params, images, labels, cfg, tcfg, noise, teacher, tau,
                                       ops=ops)
    out["tau"] = tau
    if not math.isfinite(out["loss"]):
        return out, None
    _, grads = methods.train_backward(cache)
    return out, grads


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
    in pieces, each resumed with ``resume=True``, to the same result as one uninterrupted run.
    The process's ``malloc`` is asked to keep freed memory for the next step (``minitofe.heap``: on glibc;
    it then keeps its peak memory)."""
    keep_freed_memory()
    teacher_params = None if teacher_params is None else frozen_copy(teacher_params)
    os.makedirs(train_cfg.out_dir, exist_ok=True)
    ckpt = checkpoint_path(train_cfg.out_dir)
    log_path = os.path.join(train_cfg.out_dir, "log.jsonl")
    opt = adamw_init(model.params)
    start = 0
    if resume and os.path.exists(ckpt):
        params, opt, meta = load_checkpoint(ckpt)
        check_same_run(ckpt, as_now(ckpt, meta, model), _expected_meta(model, train_cfg))
        if set(params) != set(model.params):
            raise ValueError(f"{ckpt}: parameter keys differ from the model's")
        model.params.update(params)
        ratios = meta.get("learned_keep_ratios")
        model.learned_keep_ratios = tuple(ratios) if ratios else None
        start = int(meta["step"])
        _trim_log(log_path, start - 1)
    elif os.path.exists(ckpt) and not resume:
        raise ValueError(f"{ckpt} exists: pass resume=True (--resume) to continue it, or choose another "
                         f"out_dir; nothing was overwritten")
    scales = _lr_scales(model.params, model.tofe, train_cfg)
    run = dict(opt=opt, start=start, ckpt=ckpt, log_path=log_path, scales=scales,
               frozen=[k for k, s in scales.items() if s == 0.0])
    writable = {k: model.params[k] for k in run["frozen"]}
    model.params.update({k: read_only(v) for k, v in writable.items()})
    try:
        return _train_loop(model, teacher_params, train_data, eval_data, train_cfg, run, progress, stop_at)
    finally:                                      # the caller gets its own (writable) arrays back
        model.params.update(writable)


def _train_loop(model, teacher_params, train_data, eval_data, train_cfg, run, progress, stop_at):
    """The steps of ``train`` from ``run['start']`` on; ``run`` holds the optimizer state, the paths, the
    per-parameter learning-rate scales and the keys they freeze (scale 0)."""
    from tqdm.auto import tqdm
    images, labels = train_data
    opt, start, ckpt, log_path = (run[k] for k in ("opt", "start", "ckpt", "log_path"))
    scales, frozen = run["scales"], run["frozen"]
    cache = None
    if train_cfg.teacher_cache and model.tofe.needs_teacher and start < train_cfg.steps:
        from .teacher_cache import teacher_cache
        cache = teacher_cache(teacher_params, images, model.cfg, model.tofe.resolved_stages(model.cfg.depth),
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
                res = evaluate(model, eval_data[0][:n], eval_data[1][:n], fast=train_cfg.fast,
                               progress=progress)
                log.write(json.dumps({"step": step, "eval": res}) + "\n")
                log.flush()
            if pause:                      # Ctrl-C or stop_at: finish the step, checkpoint it, stop cleanly
                bar.close()
                if stop.requested:
                    print(f"interrupted: checkpoint after step {step} written to {ckpt}; "
                          f"resume with --resume")
                return model
    save_model(os.path.join(train_cfg.out_dir, "final.npz"), model)
    return model
