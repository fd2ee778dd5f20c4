"""Real image sources: digits (offline), torchvision sets offline, image folders."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from mad.config import DataConfig, DataName
from mad.data.images import DataUnavailableError, load_images


def rows(x: np.ndarray) -> list[bytes]:
    return sorted(img.tobytes() for img in x)


def test_digits_split_shapes_and_partition():
    from sklearn.datasets import load_digits

    tx, ty, rx, ry, k = load_images(DataConfig(name=DataName.digits, n_reference=500), seed=0)
    assert k == 10
    assert tx.shape == (1297, 1, 8, 8) and rx.shape == (500, 1, 8, 8)
    assert tx.dtype == np.uint8 and rx.dtype == np.uint8
    assert ty.dtype == np.int64 and ry.dtype == np.int64 and ty.shape == (1297,) and ry.shape == (500,)
    assert tx.max() == 255 and tx.min() == 0  # 0..16 grey levels stretched to the full byte range
    # train + reference is exactly the 1797 digits, each used once: a partition, nothing shared
    full = np.round(load_digits().images * 255 / 16).astype(np.uint8)[:, None]
    assert rows(np.concatenate([tx, rx])) == rows(full)
    # labels travel with their images
    lookup = {img.tobytes(): lab for img, lab in zip(full, load_digits().target)}
    assert all(lookup[img.tobytes()] == lab for img, lab in zip(rx[:50], ry[:50]))


def test_digits_split_is_a_function_of_the_seed():
    cfg = DataConfig(name=DataName.digits, n_reference=300)
    a, b, c = load_images(cfg, 1), load_images(cfg, 1), load_images(cfg, 2)
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[2], c[2])


def test_digits_resolution_16():
    tx, ty, rx, ry, k = load_images(DataConfig(name=DataName.digits, n_reference=100, resolution=16), seed=0)
    assert tx.shape == (1697, 1, 16, 16) and rx.shape == (100, 1, 16, 16) and tx.dtype == np.uint8
    # bilinear up-sampling keeps the ink where it was: the 8x8 average of a 2x2 block is close
    small, _, _, _, _ = load_images(DataConfig(name=DataName.digits, n_reference=100), seed=0)
    pooled = tx.reshape(-1, 1, 8, 2, 8, 2).mean(axis=(3, 5))
    assert np.abs(pooled - small).mean() < 20


def test_digits_reference_must_leave_training_data():
    with pytest.raises(ValueError, match="n_reference"):
        load_images(DataConfig(name=DataName.digits, n_reference=1797), seed=0)


def _internet_reachable() -> bool:
    try:
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_internet_reachable(), reason="internet reachable: torchvision would download MNIST")
def test_mnist_offline_names_the_folder(tmp_path):
    root = tmp_path / "nodata"
    with pytest.raises(DataUnavailableError) as err:
        load_images(DataConfig(name=DataName.mnist, root=str(root), n_reference=100), seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("mnist: could not download")
    assert str(root / "MNIST" / "raw") in msg


def _write(path, size, mode="L", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_folder_labels_from_subfolders(tmp_path):
    for i in range(6):
        _write(tmp_path / "cats" / f"{i}.png", (12, 12), value=10)
        _write(tmp_path / "dogs" / f"{i}.png", (12, 12), value=200)
    tx, ty, rx, ry, k = load_images(DataConfig(name=DataName.folder, root=str(tmp_path), n_reference=4), seed=0)
    assert k == 2
    assert tx.shape == (8, 1, 12, 12) and rx.shape == (4, 1, 12, 12) and tx.dtype == np.uint8
    assert ty.dtype == np.int64
    # sorted sub-folder names give the class index: cats -> 0 (dark), dogs -> 1 (bright)
    x, y = np.concatenate([tx, rx]), np.concatenate([ty, ry])
    assert (x[y == 0] == 10).all() and (x[y == 1] == 200).all()
    assert np.bincount(y).tolist() == [6, 6]
    unlabeled = load_images(DataConfig(name=DataName.folder, root=str(tmp_path), n_reference=4, labels=False), seed=0)
    assert unlabeled[1] is None and unlabeled[3] is None and unlabeled[4] == 0


def test_folder_sizes_modes_and_resolution(tmp_path):
    _write(tmp_path / "a.png", (10, 10), "L", 50)
    _write(tmp_path / "b.png", (20, 14), "RGB", 100)
    _write(tmp_path / "c.jpg", (16, 16), "RGB", 150)
    with pytest.raises(ValueError, match="differ in size"):
        load_images(DataConfig(name=DataName.folder, root=str(tmp_path), n_reference=1), seed=0)
    tx, ty, rx, ry, k = load_images(DataConfig(name=DataName.folder, root=str(tmp_path), n_reference=1, resolution=8), seed=0)
    # a flat folder has no labels; one grey image among RGB ones makes everything RGB
    assert ty is None and ry is None and k == 0
    assert tx.shape == (2, 3, 8, 8) and rx.shape == (1, 3, 8, 8)


def test_folder_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="no images"):
        load_images(DataConfig(name=DataName.folder, root=str(tmp_path), n_reference=1), seed=0)
