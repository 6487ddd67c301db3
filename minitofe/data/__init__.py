"""Data: Fashion-MNIST from its four official IDX files (``fashion_mnist``), an ImageNet-style image
folder or a list of image files (``images``), images as a model takes them (``inputs``: the bundled
samples, normalisation, class names), mini-batches (``batches``). Nothing here downloads anything.
"""
from .batches import iterate_minibatches
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_ENV,
                            FASHION_MNIST_MEAN, FASHION_MNIST_STD, SPLITS, VAL_FRACTION, VAL_SEED,
                            fashion_mnist_root, fashion_mnist_val_indices, load_fashion_mnist, read_idx)
from .images import IMAGE_EXTENSIONS, load_image_folder, load_images
from .inputs import IMAGENET_MEAN, IMAGENET_STD, class_names, normalisation, read_images, sample_images

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_ENV",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD",
           "SPLITS", "VAL_FRACTION", "VAL_SEED", "class_names", "fashion_mnist_root",
           "fashion_mnist_val_indices", "iterate_minibatches", "load_fashion_mnist", "load_image_folder",
           "load_images", "normalisation", "read_idx", "read_images", "sample_images"]
