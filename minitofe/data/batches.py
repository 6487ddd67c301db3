"""Mini-batches over arrays held in memory; randomness is passed in (docs/contributing.md §8)."""
import numpy as np


def iterate_minibatches(images, labels, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield ``(images[idx], labels[idx])`` batches covering the data once. With ``shuffle`` the order
    is drawn from ``rng`` (a ``numpy.random.Generator``, required then); the last batch may be
    smaller unless ``drop_last``."""
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"shuffle=True needs rng, a numpy.random.Generator; got {type(rng).__name__}")
    order = rng.permutation(len(images)) if shuffle else np.arange(len(images))
    stop = len(images) - len(images) % batch_size if drop_last else len(images)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]
