"""Train the shipped Fashion-MNIST backbone with timm + torch, then save it in timm's layout.

The model is one of minitofe's Fashion-MNIST presets built by timm (default ``vit_fmnist_patch4_28``:
``VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=12,
num_heads=3, mlp_ratio=4, qkv_bias=True)``, 50 tokens). Data come from ``minitofe.data`` (normalised with
the Fashion-MNIST train mean/std), so minitofe sees the same inputs at inference. The model is fitted on
the 55 000-image "train" split; every epoch is scored on the 5 000-image "val" split (the choices of the
recipe are made on it); the test set is scored once, at the end, for the record.

Recipe: AdamW (wd 0.05, no decay on biases/norms/pos-embed/cls-token), linear warm-up then cosine per
step, label smoothing 0.1, augmentation in torch on tensors (random crop with 2 px padding of the
black level, horizontal flip), batch 128. With ``--distill cnn`` (the default), DeiT's answer for small
data: a small convnet is trained first on the same split (``RUN_DIR/cnn.pt``, its own checkpoint, a few
minutes) and the ViT learns from ``(1 - a) * CE(labels) + a * CE(teacher's hard label)`` on the same
augmented images (``a = --distill-alpha``, 0.5 as in DeiT's hard distillation); the ViT stays a plain
timm ViT (no distillation token). ``--epochs`` may be fractional. Every epoch: val top-1 and one JSON
line in ``RUN_DIR/log.jsonl``. Every epoch and every ``--ckpt-every`` steps: an atomic checkpoint
``RUN_DIR/ckpt.pt`` (model, optimizer, scheduler, epoch, position in the epoch with its permutation,
RNG states, args); ``--resume`` continues from it exactly where it stopped. At the end:
``weights/<model>.safetensors`` (``model.state_dict()``, metadata ``{'format': 'pt'}``; after
``--extend-epochs E``: E more epochs from the finished run, a second cosine from ``--extend-lr``, their own
checkpoint ``RUN_DIR/ckpt_extend.pt``), and ``--verify``
compares timm's and minitofe's predictions on the whole test set (float32 both; ``RUN_DIR/verify.json``).

Runs in an environment with torch and timm:
    python scripts/train_backbone_timm.py --bench 20            # measure img/s, write nothing
    nohup python scripts/train_backbone_timm.py --epochs E --verify > runs/backbone/train.log 2>&1 &
    nohup python scripts/train_backbone_timm.py --resume --verify >> runs/backbone/train.log 2>&1 &
    python scripts/train_backbone_timm.py --verify-only          # timm vs minitofe on the test set
"""
import argparse
import contextlib
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from minitofe.config import get_config
from minitofe.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]
BLACK = -FASHION_MNIST_MEAN / FASHION_MNIST_STD  # a 0 pixel after normalisation: the padding value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_fmnist_patch4_28", help="a minitofe Fashion-MNIST preset")
    p.add_argument("--epochs", type=float, default=1.0, help="may be fractional: the last epoch stops early")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=50, help="also checkpoint every N steps mid-epoch")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--distill", choices=["none", "cnn"], default="cnn",
                   help="hard distillation from a small convnet trained first (DeiT's recipe)")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the teacher's hard label")
    p.add_argument("--cnn-epochs", type=int, default=8, help="epochs of the convnet teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype for training")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: minitofe.data's)")
    p.add_argument("--run-dir", default=str(REPO / "runs" / "backbone"))
    p.add_argument("--out", default=None, help="default: weights/<model>.safetensors")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt (its args win)")
    p.add_argument("--extend-epochs", type=float, default=0.0,
                   help="after the run, E more epochs with a fresh AdamW, no warm-up, cosine from "
                        "--extend-lr to --min-lr (RUN_DIR/ckpt_extend.pt, resumable; given with --resume)")
    p.add_argument("--extend-lr", type=float, default=2e-4, help="peak learning rate of --extend-epochs")
    p.add_argument("--bench", type=int, default=0, metavar="STEPS", help="time STEPS training steps and exit")
    p.add_argument("--verify", action="store_true", help="after training, compare timm and minitofe")
    p.add_argument("--verify-only", action="store_true", help="only compare timm and minitofe on --out")
    return p.parse_args(argv)


def build_model(name):
    """timm's ``VisionTransformer`` for the minitofe preset ``name`` (same fields, same names)."""
    cfg = get_config(name)
    return VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                             num_classes=cfg.num_classes, embed_dim=cfg.embed_dim, depth=cfg.depth,
                             num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias)


def build_cnn():
    """The distillation teacher: a small VGG-style convnet, ~22 M MACs per 28x28 image (a third of the
    patch-4 ViT's), which learns Fashion-MNIST far faster than a ViT does."""
    def unit(c_in, c_out):
        return [torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(inplace=True)]
    return torch.nn.Sequential(*unit(1, 32), *unit(32, 32), torch.nn.MaxPool2d(2),
                               *unit(32, 64), *unit(64, 64), torch.nn.MaxPool2d(2),
                               *unit(64, 128), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(128, 10))


def param_groups(model, weight_decay):
    """timm's rule: no weight decay on 1-d parameters (biases, LayerNorm) nor on pos_embed/cls_token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(step, warmup_steps, total_steps, base_lr, min_lr):
    """Factor on ``base_lr``: linear warm-up from ~0, then cosine down to ``min_lr``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))) / base_lr


def augment(x, gen):
    """Random 28x28 crop of the image padded by 2 px (black), then a horizontal flip with p=0.5.
    x: (B, 1, 28, 28); every image draws its own offsets from ``gen``."""
    B, _, Hh, W = x.shape
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), value=BLACK)  # (B, 1, Hh+4, W+4)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(Hh))[:, :, None]  # (B, Hh, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]   # (B, 1, W)
    out = xp[torch.arange(B)[:, None, None], 0, rows, cols][:, None]  # (B, 1, Hh, W)
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def evaluate(model, images, labels, batch_size=500):
    """-> (top-1 accuracy, mean cross-entropy, predictions) on float32 tensors."""
    model.eval()
    preds, loss = [], 0.0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size])
        loss += F.cross_entropy(logits, labels[i:i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    preds = torch.cat(preds)
    return (preds == labels).float().mean().item(), loss / len(images), preds


def save_checkpoint(path, state):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log(msg):
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC] {msg}", flush=True)


def verify(out_path, model_name, data_root, batch_size=250):
    """timm vs minitofe (both float32) on the whole test set, from the saved file: prediction
    disagreements (must be 0) and the largest logit difference."""
    from safetensors.torch import load_file
    from minitofe.io.weights import load_safetensors
    from minitofe.nn.vit import vit_forward
    x_np, y_np = load_fashion_mnist("test", root=data_root)
    model = build_model(model_name)
    model.load_state_dict(load_file(out_path))
    model.eval()
    params, cfg, _ = load_safetensors(out_path, model=model_name, dtype="float32")
    if cfg != get_config(model_name):
        raise ValueError(f"{out_path}: config {cfg} is not the preset {model_name}")
    t0, pred_timm, pred_mt, max_diff = time.time(), [], [], 0.0
    for i in range(0, len(x_np), batch_size):
        xb = x_np[i:i + batch_size]
        with torch.no_grad():
            logits_timm = model(torch.from_numpy(xb)).numpy()
        logits_mt = vit_forward(params, xb, cfg)[0]
        pred_timm.append(logits_timm.argmax(1))
        pred_mt.append(logits_mt.argmax(1))
        max_diff = max(max_diff, float(np.abs(logits_timm - logits_mt).max()))
    pred_timm, pred_mt = np.concatenate(pred_timm), np.concatenate(pred_mt)
    result = {"file": str(out_path), "n": len(y_np), "timm_top1": float((pred_timm == y_np).mean()),
              "minitofe_top1": float((pred_mt == y_np).mean()),
              "disagreements": int((pred_timm != pred_mt).sum()), "max_abs_logit_diff": max_diff,
              "seconds": round(time.time() - t0, 1)}
    log(f"verify: {result}")
    return result


def train_loop(name, model, args, epochs, data, ckpt_path, log_path, teacher=None, bench=0):
    """Train ``model`` for ``epochs`` epochs of ``data['train']``, resumably (``ckpt_path``), scoring
    ``data['val']`` after every epoch. ``teacher``: a frozen model whose hard labels on the same
    augmented images are mixed into the loss with weight ``args.distill_alpha``."""
    x_train, y_train = data["train"]
    gen = torch.Generator().manual_seed(args.seed)  # shuffling + augmentation
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total, warmup = round(epochs * steps_per_epoch), round(args.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, warmup, total, args.lr, args.min_lr))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.amp == "bf16" \
        else contextlib.nullcontext
    # progress of the current epoch: kept in the checkpoint so that a resume continues mid-epoch
    run = {"step": 0, "perm": None, "seen": 0, "loss_sum": 0.0, "correct": 0, "epoch_seconds": 0.0,
           "wall_seconds": 0.0}
    if ckpt_path.is_file() and not bench:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        run = ckpt["run"]
        log(f"{name}: resumed from {ckpt_path} at step {run['step']} of {total}")
    log(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, {steps_per_epoch} steps/epoch, "
        f"{total} steps, {torch.get_num_threads()} threads, teacher={teacher is not None}")

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "args": vars(args), "run": run,
                                    "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()}})

    model.train()
    t_last = time.time()
    for step in range(run["step"], total):
        epoch, k = divmod(step, steps_per_epoch)
        if k == 0:
            run.update(perm=torch.randperm(len(x_train), generator=gen), seen=0, loss_sum=0.0, correct=0,
                       epoch_seconds=0.0)
        idx = run["perm"][k * args.batch_size:(k + 1) * args.batch_size]
        x, y = augment(x_train[idx], gen), y_train[idx]
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
        if teacher is not None:
            with torch.no_grad():
                y_teacher = teacher(x).argmax(1)
            loss = (1 - args.distill_alpha) * loss + args.distill_alpha * F.cross_entropy(logits.float(), y_teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run["seen"] += len(y)
        run["loss_sum"] += loss.item() * len(y)
        run["correct"] += (logits.argmax(1) == y).sum().item()
        now = time.time()
        run["epoch_seconds"] += now - t_last
        run["wall_seconds"] += now - t_last
        run["step"] = step + 1
        t_last = now
        if bench and step + 1 == 3:
            t_bench = now  # skip the first (warm-up) steps
        if bench and step + 1 == bench + 3:
            ips = bench * args.batch_size / (now - t_bench)
            log(f"bench {name}: {ips:.1f} img/s training (amp={args.amp}, threads={args.threads}) -> "
                f"{len(x_train) / ips / 60:.1f} min per epoch of {len(x_train)} images")
            return None
        train_msg = (f"loss {run['loss_sum'] / run['seen']:.4f} acc {run['correct'] / run['seen']:.4f} "
                     f"lr {sched.get_last_lr()[0]:.2e} {run['seen'] / run['epoch_seconds']:.1f} img/s")
        if k + 1 == steps_per_epoch or step + 1 == total:  # end of an epoch (or of a fractional last one)
            t_eval = time.time()
            val_acc, val_loss, _ = evaluate(model, *data["val"])
            model.train()
            rec = {"model": name, "epoch": epoch, "step": step + 1, "images": run["seen"],
                   "train_loss": run["loss_sum"] / run["seen"], "train_acc": run["correct"] / run["seen"],
                   "val_top1": val_acc, "val_loss": val_loss, "lr": sched.get_last_lr()[0],
                   "train_seconds": round(run["epoch_seconds"], 1),
                   "eval_seconds": round(time.time() - t_eval, 1),
                   "img_per_s": round(run["seen"] / run["epoch_seconds"], 1),
                   "wall_seconds": round(run["wall_seconds"] + time.time() - t_eval, 1),
                   "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            run["wall_seconds"] += time.time() - t_eval
            t_last = time.time()
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            checkpoint()
            log(f"{name} epoch {epoch} done: {json.dumps(rec)}")
        elif (step + 1) % args.ckpt_every == 0:
            checkpoint()
            log(f"{name} epoch {epoch} step {k + 1}/{steps_per_epoch} {train_msg}; checkpoint")
        elif (step + 1) % 20 == 0:
            log(f"{name} epoch {epoch} step {k + 1}/{steps_per_epoch} {train_msg}")
    return run


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = pathlib.Path(args.run_dir)
    out = pathlib.Path(args.out or REPO / "weights" / f"{args.model}.safetensors")
    if args.verify_only:
        res = verify(out, args.model, args.data_root)
        print(json.dumps(res))
        return 0 if res["disagreements"] == 0 else 1
    if args.resume:
        saved = run_dir / "args.json"
        if not saved.is_file():
            raise SystemExit(f"--resume: no {saved}: nothing to resume in {run_dir}")
        keep = {k: getattr(args, k) for k in ("resume", "bench", "verify", "verify_only", "threads",
                                              "extend_epochs", "extend_lr")}
        args = argparse.Namespace(**{**json.loads(saved.read_text()), **keep})
    elif not args.bench:
        if (run_dir / "args.json").exists():
            raise SystemExit(f"{run_dir} holds a run already: --resume it or choose another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "args.json").write_text(json.dumps(vars(args), indent=1))
    log(f"args {vars(args)}")
    torch.manual_seed(args.seed)
    data = {s: tuple(torch.from_numpy(a) for a in load_fashion_mnist(s, root=args.data_root))
            for s in ("train", "val")}
    teacher = None
    if args.distill == "cnn":
        teacher = build_cnn()
        cnn_args = argparse.Namespace(**{**vars(args), "lr": 2e-3, "label_smoothing": 0.0})
        train_loop("cnn", teacher, cnn_args, args.cnn_epochs, data, run_dir / "cnn.pt", run_dir / "log.jsonl",
                   bench=args.bench)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    model = build_model(args.model)
    run = train_loop(args.model, model, args, args.epochs, data, run_dir / "ckpt.pt", run_dir / "log.jsonl",
                     teacher=teacher, bench=args.bench)
    if args.bench:
        return 0
    if args.extend_epochs > 0:
        ext = argparse.Namespace(**{**vars(args), "lr": args.extend_lr, "warmup_epochs": 0.0})
        more = train_loop(f"{args.model} extended", model, ext, args.extend_epochs, data,
                          run_dir / "ckpt_extend.pt", run_dir / "log.jsonl", teacher=teacher)
        run = {**more, "wall_seconds": run["wall_seconds"] + more["wall_seconds"]}

    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    os.replace(tmp, out)
    x_test, y_test = (torch.from_numpy(a) for a in load_fashion_mnist("test", root=args.data_root))
    final = {"model": args.model, "final": True, "val_top1": evaluate(model, *data["val"])[0],
             "test_top1": evaluate(model, x_test, y_test)[0],
             "minutes": round(run["wall_seconds"] / 60, 1), "file": out.name}
    if teacher is not None:
        final["teacher_val_top1"] = evaluate(teacher, *data["val"])[0]
        final["teacher_test_top1"] = evaluate(teacher, x_test, y_test)[0]
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(final) + "\n")
    log(f"saved {out}: {final}")
    if args.verify:
        res = verify(out, args.model, args.data_root)
        with open(run_dir / "verify.json", "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
