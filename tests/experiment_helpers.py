"""What the experiment driver's end-to-end tests train on: tiny Fashion-MNIST-format files and a tiny
dense ViT backbone, each made in a few milliseconds (``tests/test_experiment.py``,
``tests/test_experiment_cluster.py``)."""
import gzip
import struct

import numpy as np

import minitofe
from minitofe.config import ViTConfig

# 28x28 grey images in 7x7 patches (16 + 1 tokens), 4 blocks of width 16: a training step takes ms
TINY_VIT = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=4,
                     num_heads=2)


def fashion_mnist(root, n_train=132, n_test=40):
    """Write Fashion-MNIST IDX files (gzip) of ``n_train`` + ``n_test`` images into the new folder ``root``:
    label ``k`` brightens its images by ``19 k``, so the classes can be learned. Returns ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, count in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(count) % 10
        images = (rng.integers(0, 60, (count, 28, 28)) + 19 * labels[:, None, None]).astype(np.uint8)
        for kind, arr, magic in (("images-idx3", images, 0x803),
                                 ("labels-idx1", labels.astype(np.uint8), 0x801)):
            with gzip.open(root / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
                        + arr.tobytes())
    return root


def tiny_backbone(path, cfg=TINY_VIT):
    """Save a randomly initialised dense ViT of ``cfg`` (seed 0) to ``path`` (``.npz``); returns ``path``."""
    minitofe.save_model(path, minitofe.new_model(cfg, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(0), np.float32))
    return path
