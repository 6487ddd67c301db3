"""minitofe: a readable NumPy reference of ToFe (lagged token freezing and reusing) for ViTs.

The public API lives in ``minitofe.model`` and is re-exported here; see the README.
"""
from .config import PRESETS, ViTConfig, get_config
from .model import (Model, add_tofe, draw_noise, load_model, load_shipped, new_model, predict, save_model,
                    teacher_forward, train_backward, train_forward, update_learned_ratios, vit_forward)
from .nn.vit import vit_backward
from .tofe.config import METHODS, ToFeConfig
from .tofe.macs import dense_macs, tofe_macs

__version__ = "0.1.0"
