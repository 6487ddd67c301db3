"""minitofe.data: IDX reading, Fashion-MNIST loading, image folders, mini-batches, and every bad input.

Tiny IDX files (plain and gzipped) and tiny PNG folders are built in ``tmp_path``; the real
Fashion-MNIST test is skipped when its folder is absent, the image-folder tests when Pillow is.
"""
import gzip
import pathlib

import numpy as np
import pytest

from minitofe.data import (FASHION_MNIST_CLASSES, FASHION_MNIST_ENV, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                           fashion_mnist_root, iterate_minibatches, load_fashion_mnist, load_image_folder,
                           read_idx)


def idx_bytes(array, type_byte=0x08):
    """The IDX encoding of ``array`` (big-endian), as the official files are written."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.asarray(array, dtype).tobytes()


def write(path, data, gz):
    path = pathlib.Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fmnist(folder, n_train=6, n_test=4, gz=True, seed=0, labels_test=None):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8) if prefix == "train" or labels_test is None \
            else np.asarray(labels_test, np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(pixels), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), gz)
        out[prefix] = (pixels, labels)
    return out


# ---------------------------------------------------------------- read_idx
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("type_byte", [0x08, 0x0B, 0x0D])
def test_read_idx_roundtrip(tmp_path, gz, type_byte):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) - 5 * (type_byte != 0x08)
    got = read_idx(write(tmp_path / "a-idx3", idx_bytes(a, type_byte), gz))
    assert got.shape == (2, 3, 4) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("data, match", [
    (b"\x00\x00", "too short"),
    (b"\x00\x01\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),     # non-zero 2nd byte
    (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),     # unknown type
    (b"\x00\x00\x08\x00", "magic"),                                        # zero dims
    (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
    (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_files_name_the_file(tmp_path, data, match, gz):
    path = write(tmp_path / "bad-idx", data, gz)
    with pytest.raises(ValueError, match=match) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_missing_and_broken_gzip(tmp_path):
    with pytest.raises(ValueError, match="no such IDX file") as e:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(e.value)
    cut = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))[:40]
    path = tmp_path / "cut.gz"
    path.write_bytes(cut)
    with pytest.raises(ValueError, match="cut.gz.*decompress"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


# ---------------------------------------------------------------- load_fashion_mnist
@pytest.mark.parametrize("gz", [False, True])
def test_load_fashion_mnist_tiny(tmp_path, gz):
    ref = make_fmnist(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_fashion_mnist(split, root=tmp_path)
        pixels, labels = ref[prefix]
        assert x.dtype == np.float32 and x.shape == (len(pixels), 1, 28, 28)
        assert y.dtype == np.int64 and y.shape == (len(pixels),)
        np.testing.assert_array_equal(y, labels)
        back = x[:, 0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN
        np.testing.assert_allclose(back, pixels / 255.0, atol=1e-6)


def test_root_precedence(tmp_path, monkeypatch):
    make_fmnist(tmp_path / "env", n_test=3)
    make_fmnist(tmp_path / "arg", n_test=5)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "env"))
    assert len(load_fashion_mnist("test")[1]) == 3
    assert len(load_fashion_mnist("test", root=tmp_path / "arg")[1]) == 5
    monkeypatch.delenv(FASHION_MNIST_ENV)
    assert fashion_mnist_root() == pathlib.Path("/usr/share/datasets/fashion-mnist")


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    with pytest.raises(ValueError) as e:
        load_fashion_mnist("train", root=tmp_path)
    msg = str(e.value)
    for needle in ("train-images-idx3-ubyte", str(tmp_path), "apt-get install -y dataset-fashion-mnist",
                   "apt-get download dataset-fashion-mnist", "dpkg-deb -x", FASHION_MNIST_ENV):
        assert needle in msg
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=tmp_path)


def test_count_mismatch_and_shape_and_labels(tmp_path):
    make_fmnist(tmp_path, n_test=4)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)), True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: 3 labels but .* has 4 images"):
        load_fashion_mnist("test", root=tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 10, 2], np.uint8)), True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: label 10 at index 2 is out of range"):
        load_fashion_mnist("test", root=tmp_path)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((4, 27, 28), np.uint8)), True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: expected uint8 images"):
        load_fashion_mnist("test", root=tmp_path)
    write(tmp_path / "t10k-images-idx3-ubyte", b"\x00\x00\x08\x03" + b"\x00" * 3, True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: truncated"):
        load_fashion_mnist("test", root=tmp_path)


def test_plain_file_used_when_no_gz(tmp_path):
    make_fmnist(tmp_path, gz=False, n_test=2)
    assert load_fashion_mnist("test", root=tmp_path)[0].shape == (2, 1, 28, 28)


def test_real_fashion_mnist():
    root = fashion_mnist_root()
    if not (root / "t10k-labels-idx1-ubyte.gz").is_file() and not (root / "t10k-labels-idx1-ubyte").is_file():
        pytest.skip(f"Fashion-MNIST not in {root} (apt-get install dataset-fashion-mnist)")
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))  # balanced
    assert len(FASHION_MNIST_CLASSES) == 10
    pixels = x * FASHION_MNIST_STD + FASHION_MNIST_MEAN  # back to [0, 1]; the test set's own stats are close
    assert abs(pixels.mean() - 0.2868) < 2e-3 and abs(pixels.std() - 0.3524) < 2e-3


# ---------------------------------------------------------------- image folders
def make_png_folder(root, sizes, modes=("RGB",)):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            mode = modes[i % len(modes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image, skipped")


def test_image_folder_shapes_labels_and_normalisation(tmp_path):
    make_png_folder(tmp_path, [(8, 8), (12, 9), (9, 15)], modes=("RGB", "L"))
    x, y, classes = load_image_folder(tmp_path, 6, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    assert classes == ["cat", "dog"] and x.shape == (6, 3, 6, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    xg, _, _ = load_image_folder(tmp_path, 8, mean=0.5, std=0.5, grey=True)
    assert xg.shape == (6, 1, 8, 8)
    # an 8x8 image at img_size 8 is not resampled: normalisation only
    from PIL import Image
    ref = np.asarray(Image.open(tmp_path / "cat" / "0.png").convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(xg[0, 0], (ref - 0.5) / 0.5, atol=1e-6)


def test_image_folder_centre_crop(tmp_path):
    """A 4x8 (w x h) image with its rows numbered keeps its middle 4 rows at img_size 4."""
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    rows = np.repeat(np.arange(8, dtype=np.uint8)[:, None] * 30, 4, axis=1)  # (8, 4)
    Image.fromarray(rows, "L").save(tmp_path / "a" / "x.png")
    x, _, _ = load_image_folder(tmp_path, 4, mean=0.0, std=1.0, grey=True)
    np.testing.assert_allclose(x[0, 0, :, 0] * 255, [60, 90, 120, 150], atol=1e-4)


def test_image_folder_bad_inputs(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "missing", 4, 0.5, 0.5)
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_folder(tmp_path, 4, 0.5, 0.5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty: class folder holds no image files"):
        load_image_folder(tmp_path, 4, 0.5, 0.5)
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match=r"broken.jpg: unreadable image"):
        load_image_folder(tmp_path, 4, 0.5, 0.5)
    with pytest.raises(ValueError, match="mean and std need 1 or 3 values"):
        load_image_folder(tmp_path, 4, (0.5, 0.5), 0.5)
    with pytest.raises(ValueError, match="interpolation"):
        load_image_folder(tmp_path, 4, 0.5, 0.5, interpolation="lanczos9")


def test_image_folder_truncated_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "t.png")
    (tmp_path / "a" / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"t.png: unreadable image"):
        load_image_folder(tmp_path, 8, 0.5, 0.5)


# ---------------------------------------------------------------- mini-batches
def test_iterate_minibatches():
    x, y = np.arange(10)[:, None] * np.ones((1, 3)), np.arange(10)
    batches = list(iterate_minibatches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    got = np.concatenate([b[1] for b in iterate_minibatches(x, y, 3, np.random.default_rng(0))])
    assert sorted(got) == list(range(10)) and list(got) != list(range(10))
    again = np.concatenate([b[1] for b in iterate_minibatches(x, y, 3, np.random.default_rng(0))])
    np.testing.assert_array_equal(got, again)  # the order comes from the generator only
    for bx, by in iterate_minibatches(x, y, 3, np.random.default_rng(1)):
        np.testing.assert_array_equal(bx[:, 0], by)
    dropped = iterate_minibatches(x, y, 4, np.random.default_rng(0), drop_last=True)
    assert [len(b[1]) for b in dropped] == [4, 4]


def test_iterate_minibatches_bad_inputs():
    x, y = np.zeros((4, 2)), np.zeros(3)
    with pytest.raises(ValueError, match="differ in length"):
        list(iterate_minibatches(x, y, 2, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_minibatches(x, x, 0, np.random.default_rng(0)))
    with pytest.raises(TypeError, match="Generator"):
        list(iterate_minibatches(x, x, 2))


def test_core_does_not_import_pillow():
    import subprocess
    import sys
    code = "import sys, minitofe.data; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
