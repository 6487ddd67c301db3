"""``ViTConfig``: the backbone's hyper-parameters, with timm's field names, and named presets.

A config is plain data (a frozen dataclass). It round-trips through a JSON dict so that minitofe's
``.npz`` and ``.safetensors`` weight files can carry it inside (see ``minitofe.io.weights``).

Every field is an argument of timm's ``VisionTransformer`` (``distilled`` stands for timm's
``VisionTransformerDistilled``) with timm's meaning, restricted to the values minitofe computes exactly;
anything else is refused here with the field's name. The fields added after the first release default
to the behaviour minitofe always had, so older weight files read back unchanged.
"""
import numbers
from dataclasses import asdict, dataclass, fields, replace

LN_EPS = 1e-6  # timm's ViT default: LayerNorm(eps=1e-6); CLIP-style models use 1e-5 (``norm_eps``)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")   # the MLP activations timm names (``act_layer``)
POOLS = ("token", "avg")


@dataclass(frozen=True)
class ViTConfig:
    img_size: object = 224          # int (square images) or (height, width)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000         # 0: no classifier (timm's head-less backbone): outputs pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: object = None      # LayerScale init value; None = no LayerScale (timm's default)
    class_token: bool = True
    global_pool: str = "token"      # "token" (the class token) or "avg" (mean of the patch tokens)
    distilled: bool = False         # DeiT distillation token + second head, averaged at inference
    reg_tokens: int = 0             # register tokens: prefix tokens after the class token (DINOv2-reg)
    no_embed_class: bool = False    # pos_embed covers the patches only; prefix tokens get none (DeiT-III)
    pre_norm: bool = False          # LayerNorm ``norm_pre`` after the embedding, no patch bias (CLIP)
    fc_norm: object = None          # norm after pooling instead of before; None: timm's rule (iff avg)
    final_norm: bool = True         # False: neither ``norm`` nor ``fc_norm``
    pool_include_prefix: bool = False   # avg pooling over all tokens, prefix tokens included
    norm_eps: float = LN_EPS        # every LayerNorm's eps
    act_layer: str = "gelu"         # MLP activation: exact-erf "gelu", "gelu_tanh" or "quick_gelu"

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ViTConfig: {msg}")
        if isinstance(self.img_size, (tuple, list)):
            hw = tuple(self.img_size)
            object.__setattr__(self, "img_size",
                               hw[0] if len(hw) == 2 and hw[0] == hw[1] else hw)  # square: int
        sizes = self.img_size if isinstance(self.img_size, tuple) else (self.img_size,)
        if len(sizes) not in (1, 2) or any(not _is_int(v) or v <= 0 for v in sizes):
            bad(f"img_size must be a positive int or a (height, width) pair, got {self.img_size!r}")
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                bad(f"{name} must be a positive int, got {v!r}")
        for name in ("num_classes", "reg_tokens"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                bad(f"{name} must be an int >= 0, got {v!r}")
        if any(s % self.patch_size for s in sizes):
            bad(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        hidden = self.mlp_ratio * self.embed_dim       # a ratio read from weights may be off by an ulp
        if self.mlp_ratio <= 0 or abs(hidden - round(hidden)) > 1e-9 * hidden:
            bad(f"mlp_ratio {self.mlp_ratio} * embed_dim {self.embed_dim} must be a positive integer")
        for name in ("qkv_bias", "class_token", "distilled", "no_embed_class", "pre_norm", "final_norm",
                     "pool_include_prefix"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
            bad(f"fc_norm must be None, True or False, got {self.fc_norm!r}")
        # one config per computation: settings that change nothing are stored as their defaults
        if not self.final_norm or self.fc_norm == (self.global_pool == "avg"):
            object.__setattr__(self, "fc_norm", None)
        if self.global_pool == "token":
            object.__setattr__(self, "pool_include_prefix", False)
        if self.global_pool not in POOLS:
            bad(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            bad("global_pool='token' needs class_token=True")
        if self.distilled and not (self.class_token and self.global_pool == "token"):
            bad("distilled=True needs class_token=True and global_pool='token'")
        if self.distilled and (self.reg_tokens or self.no_embed_class or self.fc_norm):
            bad("distilled=True (timm's VisionTransformerDistilled) does not combine with reg_tokens, "
                "no_embed_class or fc_norm: timm's distilled model ignores them or fails")
        if (self.init_values is not None
                and not (isinstance(self.init_values, (int, float)) and self.init_values > 0)):
            bad(f"init_values must be None or a positive number, got {self.init_values!r}")
        if (not isinstance(self.norm_eps, numbers.Real) or isinstance(self.norm_eps, bool)
                or not self.norm_eps > 0):
            bad(f"norm_eps must be a positive number, got {self.norm_eps!r}")
        if self.act_layer not in ACTIVATIONS:
            bad(f"act_layer must be one of {list(ACTIVATIONS)}, got {self.act_layer!r}")

    # ---- derived sizes: B, N = T + P tokens, C, H ----
    @property
    def img_hw(self):  # (height, width)
        return self.img_size if isinstance(self.img_size, tuple) else (self.img_size, self.img_size)

    @property
    def grid_hw(self):  # patches per column and per row
        return tuple(s // self.patch_size for s in self.img_hw)

    @property
    def grid_size(self):
        """Patches per side of a square image (a non-square one has ``grid_hw``)."""
        gh, gw = self.grid_hw
        if gh != gw:
            raise ValueError(f"ViTConfig: img_size {self.img_size} is not square: its patch grid is "
                             f"{gh}x{gw} (grid_hw), there is no single grid_size")
        return gh

    @property
    def num_patches(self):  # P
        gh, gw = self.grid_hw
        return gh * gw

    @property
    def num_prefix_tokens(self):  # T: class token, register tokens, distillation token
        return int(self.class_token) + self.reg_tokens + int(self.distilled)

    @property
    def num_tokens(self):  # N = T + P
        return self.num_prefix_tokens + self.num_patches

    @property
    def embed_len(self):  # positions in pos_embed
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def mlp_hidden(self):
        return int(round(self.mlp_ratio * self.embed_dim))

    @property
    def use_fc_norm(self):
        """The final LayerNorm comes after pooling (``fc_norm``) rather than before (``norm``)."""
        return self.final_norm and (self.global_pool == "avg" if self.fc_norm is None else self.fc_norm)

    @property
    def use_norm(self):
        return self.final_norm and not self.use_fc_norm

    @property
    def default_block(self):
        """timm's default block maths (LayerNorm eps 1e-6, exact GELU): what the Numba kernels and the
        ToFe stages implement."""
        return self.norm_eps == LN_EPS and self.act_layer == "gelu"

    def to_dict(self):
        d = asdict(self)
        if isinstance(self.img_size, tuple):
            d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise TypeError(f"ViTConfig.from_dict needs a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ViTConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes):
        return replace(self, **changes)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_DEIT = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, depth=12, mlp_ratio=4.0)
PRESETS = {
    "deit_tiny_patch16_224": ViTConfig(embed_dim=192, num_heads=3, **_DEIT),
    "deit_small_patch16_224": ViTConfig(embed_dim=384, num_heads=6, **_DEIT),
    "deit_base_patch16_224": ViTConfig(embed_dim=768, num_heads=12, **_DEIT),
    "deit_tiny_distilled_patch16_224": ViTConfig(embed_dim=192, num_heads=3, distilled=True, **_DEIT),
    "deit_small_distilled_patch16_224": ViTConfig(embed_dim=384, num_heads=6, distilled=True, **_DEIT),
    "deit_base_distilled_patch16_224": ViTConfig(embed_dim=768, num_heads=12, distilled=True, **_DEIT),
    # Fashion-MNIST: 28x28 grey images cut into 2x2 patches -> 196 patches + 1 class token = 197 tokens,
    # the same token count as DeiT at 224/16, so keep ratios and MACs ratios mean what they mean there.
    "vit_fmnist_patch2_28": ViTConfig(img_size=28, patch_size=2, in_chans=1, num_classes=10,
                                      embed_dim=96, depth=12, num_heads=3, mlp_ratio=4.0),
    # Fashion-MNIST, 4x4 patches: 49 patches + 1 class token = 50 tokens, about a fifth of the MACs of
    # the 2x2 preset; the shipped default backbone (weights/README.md says why).
    "vit_fmnist_patch4_28": ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                      embed_dim=96, depth=12, num_heads=3, mlp_ratio=4.0),
}


def get_config(name):
    """Return the preset called ``name``; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known presets: {sorted(PRESETS)}") from None
