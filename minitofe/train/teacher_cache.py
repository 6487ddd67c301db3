"""The dense teacher's outputs for a whole training set, computed once (``TrainConfig.teacher_cache``).

The trainer distils from a frozen teacher and feeds it un-augmented images, so the teacher's outputs for
an image never change during a run: ``teacher_forward`` on every batch repeats the same work each epoch
(about a quarter of a ToFe training step). ``TeacherCache`` runs it once over the training set, in chunks
of the batch size, keeps every output (logits (n, K), the tokens at the end of each stage (n, N, C), the
final normed tokens when present) and hands out the rows of a batch. It costs memory: n * (S + 1) * N * C
numbers, ~4 GB in float32 for 55 000 Fashion-MNIST images on the 50-token backbone.
"""
import numpy as np

from .. import kernels
from ..backend import get_xp
from ..tofe.training import teacher_forward


class TeacherCache:
    """``TeacherCache(teacher_params, images, cfg, stages, chunk, fast)``; ``cache.batch(idx)`` is what
    ``teacher_forward(teacher_params, images[idx], ...)`` returns, row for row."""

    def __init__(self, teacher_params, images, cfg, stages, chunk, fast=False, progress=False):
        from tqdm.auto import tqdm
        self.logits, self.tokens, self.features = None, None, None
        n, ops = len(images), kernels.ops(fast, like=images)     # the choice of implementation, made once
        for lo in tqdm(range(0, n, chunk), desc="teacher", disable=not progress, leave=False):
            out = teacher_forward(teacher_params, images[lo:lo + chunk], cfg, stages, ops=ops)
            if self.logits is None:
                xp = get_xp(out["logits"])
                self.logits = xp.empty((n,) + out["logits"].shape[1:], out["logits"].dtype)
                self.tokens = [xp.empty((n,) + t.shape[1:], t.dtype) for t in out["tokens"]]
                if "features" in out:
                    self.features = xp.empty((n,) + out["features"].shape[1:], out["features"].dtype)
            hi = lo + len(out["logits"])
            self.logits[lo:hi] = out["logits"]
            for mine, t in zip(self.tokens, out["tokens"]):
                mine[lo:hi] = t
            if self.features is not None:
                self.features[lo:hi] = out["features"]

    def batch(self, idx):
        """The teacher's outputs for the images ``idx`` (an index array), as ``teacher_forward`` gives
        them."""
        idx = np.asarray(idx)
        out = {"logits": self.logits[idx], "tokens": [t[idx] for t in self.tokens]}
        if self.features is not None:
            out["features"] = self.features[idx]
        return out
