"""``ViTConfig``: the backbone's hyper-parameters, with timm's field names, and named presets.

A config is plain data (a frozen dataclass). It round-trips through a JSON dict so that minitofe's
``.npz`` weight files can carry it inside (see ``minitofe.io.weights``).
"""
from dataclasses import asdict, dataclass, fields, replace

LN_EPS = 1e-6  # timm's ViT uses LayerNorm(eps=1e-6) everywhere


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: object = None      # LayerScale init value; None = no LayerScale (timm's default)
    class_token: bool = True
    global_pool: str = "token"      # "token" (class-token head) or "avg" (mean of patch tokens + fc_norm)
    distilled: bool = False         # DeiT distillation token + second head, averaged at inference

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ViTConfig: {msg}")
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f"{name} must be a positive int, got {v!r}")
        if self.img_size % self.patch_size:
            bad(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        hidden = self.mlp_ratio * self.embed_dim
        if self.mlp_ratio <= 0 or hidden != int(hidden):
            bad(f"mlp_ratio {self.mlp_ratio} * embed_dim {self.embed_dim} must be a positive integer")
        if self.global_pool not in ("token", "avg"):
            bad(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            bad("global_pool='token' needs class_token=True")
        if self.distilled and not (self.class_token and self.global_pool == "token"):
            bad("distilled=True needs class_token=True and global_pool='token'")
        if self.init_values is not None and not (isinstance(self.init_values, (int, float)) and self.init_values > 0):
            bad(f"init_values must be None or a positive number, got {self.init_values!r}")

    # ---- derived sizes (DESIGN.md notation) ----
    @property
    def grid_size(self):
        return self.img_size // self.patch_size

    @property
    def num_patches(self):  # P
        return self.grid_size ** 2

    @property
    def num_prefix_tokens(self):  # T
        return int(self.class_token) + int(self.distilled)

    @property
    def num_tokens(self):  # N = T + P
        return self.num_prefix_tokens + self.num_patches

    @property
    def mlp_hidden(self):
        return int(self.mlp_ratio * self.embed_dim)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ViTConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes):
        return replace(self, **changes)


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
