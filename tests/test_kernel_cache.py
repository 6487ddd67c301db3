"""The kernels' Numba caches are dropped when a source they may depend on changed (``kernels.cache``)."""
from minitofe.kernels.cache import STAMP, drop_stale_caches


def _caches(d):
    (d / "__pycache__").mkdir(exist_ok=True)
    for name in ("layers._gelu-116.py311.nbi", "layers._gelu-116.py311.1.nbc"):
        (d / "__pycache__" / name).write_bytes(b"machine code")


def test_caches_go_when_any_source_changes_and_stay_while_none_does(tmp_path):
    (tmp_path / "mathf.py").write_text("A = 1\n")
    (tmp_path / "layers.py").write_text("B = 2\n")
    _caches(tmp_path)
    assert drop_stale_caches(tmp_path) == 2                         # no stamp yet: unknown age
    assert (tmp_path / "__pycache__" / STAMP).is_file()
    _caches(tmp_path)
    assert drop_stale_caches(tmp_path) == 0                         # written by these sources: kept
    assert len(list((tmp_path / "__pycache__").glob("*.nb?"))) == 2
    (tmp_path / "mathf.py").write_text("A = 3\n")                   # another file than the cached one
    assert drop_stale_caches(tmp_path) == 2
    assert not list((tmp_path / "__pycache__").glob("*.nb?"))
    (tmp_path / "softmax.py").write_text("")                        # a new source counts too
    _caches(tmp_path)
    assert drop_stale_caches(tmp_path) == 2


def test_a_package_folder_without_a_cache_folder_gets_one_with_the_stamp(tmp_path):
    (tmp_path / "mathf.py").write_text("")
    assert drop_stale_caches(tmp_path) == 0
    assert (tmp_path / "__pycache__" / STAMP).is_file() and drop_stale_caches(tmp_path) == 0
