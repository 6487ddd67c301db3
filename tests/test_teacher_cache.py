"""The teacher's outputs stored between runs (``MINITOFE_TEACHER_CACHE_DIR``): the same arrays bit for bit,
read-only, under a key that changes with anything they depend on; training from them trains the same."""
import json
import os

import numpy as np
import pytest

import minitofe
import minitofe.train.teacher_cache as tc
from minitofe.config import ViTConfig
from minitofe.train import TrainConfig, train

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2,
                mlp_ratio=2.0)
STAGES = (1, 2)


def _model():
    tcfg = minitofe.ToFeConfig(method="tofe", stages=STAGES, keep_ratios=(0.5, 0.5), target_ratio=0.6)
    return minitofe.new_model(CFG, tcfg, np.random.default_rng(0), np.float32)


def _images(n=20):
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(tc.TEACHER_CACHE_DIR, str(tmp_path / "teacher"))
    return tmp_path / "teacher"


def _arrays(cache):
    return [cache.logits, *cache.tokens]


def test_a_stored_cache_is_the_computed_one_bit_for_bit_and_read_only(store, monkeypatch):
    params, images = _model().backbone_params(), _images()
    computed = tc.teacher_cache(params, images, CFG, STAGES, chunk=8)
    (folder,) = store.iterdir()
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask             # not mkdtemp's private 0700

    def no_forward(*a, **k):
        raise AssertionError("the teacher was run again")
    monkeypatch.setattr(tc, "teacher_forward", no_forward)
    stored = tc.teacher_cache(params, images, CFG, STAGES, chunk=8)
    assert len(_arrays(computed)) == len(_arrays(stored)) == 1 + len(STAGES)
    for a, b in zip(_arrays(computed), _arrays(stored)):
        assert np.array_equal(a, b) and a.dtype == b.dtype and not b.flags.writeable
    idx = np.array([19, 2, 2])
    for a, b in zip(computed.batch(idx)["tokens"], stored.batch(idx)["tokens"]):
        assert np.array_equal(a, b)


def test_the_key_changes_with_what_the_outputs_depend_on():
    params, images = _model().backbone_params(), _images()
    key = tc.cache_key(params, images, CFG, STAGES, 8, True)
    assert tc.cache_key(dict(params), images.copy(), CFG, STAGES, 8, True) == key
    other_image = images.copy()
    other_image[3, 0, 1, 1] += 1e-3
    other_param = dict(params, **{"head.bias": params["head.bias"] + np.float32(1e-6)})
    keys = {tc.cache_key(params, other_image, CFG, STAGES, 8, True),
            tc.cache_key(other_param, images, CFG, STAGES, 8, True),
            tc.cache_key(params, images, CFG, (1, 3), 8, True),
            tc.cache_key(params, images, CFG, STAGES, 4, True),
            tc.cache_key(params, images, CFG, STAGES, 8, False),
            tc.cache_key(params, images[:-1], CFG, STAGES, 8, True)}
    assert key not in keys and len(keys) == 6


def test_a_damaged_store_is_named_and_a_half_written_one_is_ignored(store):
    params, images = _model().backbone_params(), _images()
    folder = store / tc.cache_key(params, images, CFG, STAGES, 8, False)
    store.mkdir()
    (store / f".{folder.name}-half").mkdir()                            # a run killed while writing
    tc.teacher_cache(params, images, CFG, STAGES, chunk=8)
    assert folder.is_dir() and {p.name for p in store.iterdir()} == {folder.name, f".{folder.name}-half"}
    (folder / "tokens1.npy").unlink()
    with pytest.raises(ValueError, match=f"{folder}: a stored teacher cache that cannot be read"):
        tc.teacher_cache(params, images, CFG, STAGES, chunk=8)
    names = json.loads((folder / "arrays.json").read_text())
    assert names == {"tokens": ["tokens0", "tokens1"], "features": True}


def test_training_from_a_stored_cache_trains_as_from_the_one_computed_in_the_run(tmp_path, monkeypatch):
    model = _model()
    data = (_images(24), np.random.default_rng(1).integers(0, 3, 24))
    runs = {}
    for name, store in (("memory", None), ("first", tmp_path / "t"), ("stored", tmp_path / "t")):
        if store is None:
            monkeypatch.delenv(tc.TEACHER_CACHE_DIR, raising=False)
        else:
            monkeypatch.setenv(tc.TEACHER_CACHE_DIR, str(store))
        cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, fast=False, teacher_cache=True,
                          out_dir=str(tmp_path / name))
        runs[name] = train(_model(), model.backbone_params(), data, None, cfg, progress=False)
    assert len(list((tmp_path / "t").iterdir())) == 1
    for k in runs["memory"].params:
        assert np.array_equal(runs["stored"].params[k], runs["memory"].params[k]), k
        assert np.array_equal(runs["first"].params[k], runs["memory"].params[k]), k
