"""Weights in and out: timm's layout <-> minitofe's parameter dict (``timm``), and weight files
(minitofe ``.npz``, timm ``.safetensors``, torch ``.pth``) with ``convert`` between them (``weights``).

The top layer beside the CLI: it imports the config and ``nn.params``, and nothing imports it back.
"""
from .timm import from_timm_model, from_timm_state_dict, infer_config, to_timm_state_dict
from .weights import (convert, load_npz, load_safetensors, load_torch, load_weights, save_npz,
                      save_safetensors, save_weights)

__all__ = ["convert", "from_timm_model", "from_timm_state_dict", "infer_config", "load_npz",
           "load_safetensors", "load_torch", "load_weights", "save_npz", "save_safetensors",
           "save_weights", "to_timm_state_dict"]
