"""minitofe: a readable NumPy reference of ToFe (lagged token freezing and reusing) for ViTs.

The public API lives in ``minitofe.model`` and is re-exported here; see the README.
"""
import os as _os

# OpenBLAS's idle threads spin for 2**28 cycles (~0.1 s) after every call before they sleep, and the fast
# path runs its own lanes (attention, element-wise kernels) between the BLAS's calls: a spinning BLAS
# thread took a core from them (DeiT-S at batch 32, 2 threads: attention at 62 GFLOP/s in the forward,
# 110-123 with the spin cut; the forward 16.5 -> 18.7 img/s). 2**16 cycles (~20 us) still bridge the short
# element-wise passes between one block's GEMMs (at batch 1, 2**6 cost ~8 % there: the threads slept and
# woke at every GEMM) and sleep through its attention. OpenBLAS reads this once, when it starts, so it
# takes effect only when minitofe is imported before NumPy (the CLI is); a value set by the user is kept.
# No effect on any result: docs/performance.md, "OpenBLAS's spinning threads".
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from .config import PRESETS, ViTConfig, get_config
from .model import (Model, add_tofe, draw_noise, load_model, load_shipped, new_model, predict, save_model,
                    teacher_forward, train_backward, train_forward, update_learned_ratios, vit_forward)
from .nn.vit import vit_backward
from .tofe.config import METHODS, ToFeConfig
from .tofe.macs import dense_macs, tofe_macs

__version__ = "0.1.0"
