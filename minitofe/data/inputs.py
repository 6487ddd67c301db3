"""Images as a model takes them: the bundled sample images, the normalisation a config expects (the
Fashion-MNIST statistics for grey models, ImageNet's otherwise), image files read for a model, and the
names of its classes. Shared by the command line, the golden bundles and the benchmark.
"""
import pathlib

from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from .images import load_images

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_images():
    """The bundled Fashion-MNIST test images (one per class): sorted paths."""
    folder = pathlib.Path(__file__).resolve().parents[1] / "samples"
    return sorted(folder.glob("*.png"))


def sample_labels(paths):
    """The true Fashion-MNIST class index of each bundled sample image (its file name starts with it:
    ``3_dress_t10k_13.png`` is class 3, a test image's own label)."""
    return [int(pathlib.Path(p).name.split("_")[0]) for p in paths]


def normalisation(cfg):
    """-> (mean, std) for a model of config ``cfg``: Fashion-MNIST's for grey images, else ImageNet's."""
    if cfg.in_chans == 1:
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return IMAGENET_MEAN, IMAGENET_STD


def read_images(paths, model):
    """Image files as ``model`` takes them: (n, in_chans, img_size, img_size) in the params' dtype."""
    mean, std = normalisation(model.cfg)
    x = load_images(paths, model.cfg.img_size, mean, std, grey=model.cfg.in_chans == 1)
    dtype = next(iter(model.params.values())).dtype
    return x.astype(dtype)


def class_names(cfg):
    """Fashion-MNIST's class names for a 10-class grey model, else the class indices as text."""
    if cfg.num_classes == 10 and cfg.in_chans == 1:
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(cfg.num_classes)]
