"""Method ``evit-drop``: training-free pruning (docs/method.md, "Baselines"). Each stage keeps the top-K
patches by the class token's attention among those still alive (``cls_attention``); the rest are dropped
for good (no fusion)."""
from .cls_attention import CLS_ATTENTION
from .idle import scored_by

EVIT_DROP = scored_by(CLS_ATTENTION, "evit-drop", "training-free: class-attention top-K, the rest dropped",
                      reuses=False)
