"""Data: Fashion-MNIST from its four official IDX files (``fashion_mnist``), an ImageNet-style image
folder or a list of image files (``images``), mini-batches (``batches``). Nothing here downloads anything.
"""
from .batches import iterate_minibatches
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_ENV,
                            FASHION_MNIST_MEAN, FASHION_MNIST_STD, SPLITS, VAL_FRACTION, VAL_SEED,
                            fashion_mnist_root, fashion_mnist_val_indices, load_fashion_mnist, read_idx)
from .images import IMAGE_EXTENSIONS, load_image_folder, load_images

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_ENV",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGE_EXTENSIONS", "SPLITS", "VAL_FRACTION",
           "VAL_SEED", "fashion_mnist_root", "fashion_mnist_val_indices", "iterate_minibatches",
           "load_fashion_mnist", "load_image_folder", "load_images", "read_idx"]
