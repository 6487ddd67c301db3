"""``TrainConfig``: every setting of minitofe's trainer (``minitofe.train.train``), validated on
construction."""
from dataclasses import dataclass

import numpy as np


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
    fast: bool = True                  # blocks on the Numba kernels (minitofe.kernels), when installed
    teacher_cache: bool = False        # the teacher once for the whole training set (teacher_cache.py)

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
            raise ValueError(f"TrainConfig: need lr > 0, backbone_lr_scale >= 0, weight_decay >= 0, "
                             f"min_lr >= 0; got {self.lr}, {self.backbone_lr_scale}, {self.weight_decay}, "
                             f"{self.min_lr}")
        if not 0 <= self.ratio_momentum < 1 or (self.clip_grad is not None and not self.clip_grad > 0):
            raise ValueError(f"TrainConfig: need 0 <= ratio_momentum < 1 and clip_grad > 0 (or None); got "
                             f"{self.ratio_momentum}, {self.clip_grad}")
