"""``evaluate``: top-1, realised MACs, keep ratios and throughput of ``predict`` over a data set (used by
the trainer's periodic evaluations, ``minitofe eval`` and the experiment's report)."""
import time

import numpy as np

from ..model import predict


def evaluate(model, images, labels, batch_size=100, progress=False, **predict_kw):
    """Top-1, mean realised MACs and keep ratios, img/s of ``predict`` over a data set."""
    from tqdm.auto import tqdm
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"evaluate: batch_size must be a positive int, got {batch_size!r}")
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"evaluate: need as many labels as images, at least one; got {len(images)} images "
                         f"and {len(labels)} labels")
    correct, macs, kept, n = 0, [], [], len(images)
    start = time.perf_counter()
    for lo in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        logits, info = predict(model, images[lo:lo + batch_size], **predict_kw)
        correct += int((np.asarray(logits).argmax(axis=1) == labels[lo:lo + batch_size]).sum())
        macs.append(info["macs"])
        if len(info.get("kept", [])):
            kept.append(np.stack([k.mean(axis=1) for k in info["kept"]], axis=1))
    seconds = time.perf_counter() - start
    macs = np.concatenate(macs)
    return {"top1": correct / n, "n": n, "macs": float(macs.mean()), "macs_ratio": float(macs.mean() /
            _dense(model)), "keep_ratios": np.concatenate(kept).mean(axis=0).tolist() if kept else [],
            "img_per_s": n / seconds}


def _dense(model):
    from ..tofe.macs import dense_macs
    return dense_macs(model.cfg)
