"""minitofe's trainer and what measures its results: fine-tune ToFe, a baseline or the dense backbone.

    loop.py           ``train`` (resumable, periodic evaluation, a JSON-lines log) and ``train_step``
    config.py         ``TrainConfig``: every setting of the trainer, validated on construction
    optim.py          AdamW, gradient clipping, the warm-up + cosine learning rate
    checkpoint.py     parameters, AdamW moments and configs in one ``.npz``, written atomically
    teacher_cache.py  the dense teacher's outputs for a whole training set, computed once
    evaluation.py     ``evaluate``: top-1, realised MACs, keep ratios and img/s of ``predict``
    diagnostics.py    ``stage_errors``: where a reduced model departs from its teacher, stage by stage

``from minitofe.train import TrainConfig, train`` is the way in (README, ``minitofe train``).
"""
from .config import TrainConfig
from .evaluation import evaluate
from .loop import NonFiniteLossError, batch_indices, checkpoint_path, train, train_step

__all__ = ["TrainConfig", "NonFiniteLossError", "batch_indices", "train_step", "train", "evaluate",
           "checkpoint_path"]
