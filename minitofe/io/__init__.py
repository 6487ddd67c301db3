"""Weights in and out: timm's layout <-> minitofe's parameter dict (``timm``), which config a timm state
dict or live timm model is (``timm_config``, ``timm_model``), and weight files (minitofe ``.npz``, timm
``.safetensors``, torch ``.pth``) with ``convert`` between them (``weights``; ``npz``, ``files``).

The top layer beside the CLI: it imports the config and ``nn``, and nothing below imports it back.
"""
from .timm import from_timm_state_dict, to_timm_state_dict
from .timm_config import infer_config
from .timm_model import from_timm_model, read_timm_module
from .weights import (convert, load_npz, load_safetensors, load_torch, load_weights, save_npz,
                      save_safetensors, save_weights)

__all__ = ["convert", "from_timm_model", "from_timm_state_dict", "infer_config", "load_npz",
           "load_safetensors", "load_torch", "load_weights", "read_timm_module", "save_npz",
           "save_safetensors", "save_weights", "to_timm_state_dict"]
