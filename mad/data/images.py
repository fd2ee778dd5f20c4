"""Real image data: the training pool and the held-out reference set.

Sources (``DataConfig.name``):

* ``digits``: scikit-learn's 1797 real 8x8 handwritten digits (bundled, works offline);
  grey levels 0..16 become 0..255.
* ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision, stored under ``data.root``; the
  official train split is the pool, the reference set is drawn from the official test split.
* ``folder``: every image under ``data.root`` (PIL); class labels from the names of the
  first-level sub-folders when ``data.labels`` and the images sit in sub-folders.

Everything is returned as uint8 NCHW. ``data.resolution`` resizes to a square side with
bilinear, antialiased interpolation (``torch.nn.functional.interpolate``; PIL's bilinear
filter for folders, which antialiases the same way). Resizing rather than zero-padding
was chosen so that one rule serves every source, including non-square photographs; it
blurs up-scaled digits a little, which every generation sees alike.
"""
from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Optional
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F

from mad.data import DataError, DataUnavailableError  # noqa: F401  (re-exported)
from mad.config import DataConfig, DataName

__all__ = ["DataError", "DataUnavailableError", "load_images", "resize_images", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_DOWNLOAD_TIMEOUT_S = 10.0  # offline, a download attempt must fail fast rather than hang

# torchvision class and where its files must lie when they cannot be downloaded
_TORCHVISION = {
    DataName.mnist: ("MNIST", "MNIST/raw"),
    DataName.fashion_mnist: ("FashionMNIST", "FashionMNIST/raw"),
    DataName.cifar10: ("CIFAR10", "cifar-10-batches-py (or cifar-10-python.tar.gz directly in it)"),
}




# (train_x, train_y, ref_x, ref_y, num_classes)
Split = tuple[np.ndarray, Optional[np.ndarray], np.ndarray, Optional[np.ndarray], int]


def load_images(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, int]:
    """Return (train_x, train_y, ref_x, ref_y, num_classes).

    Images are uint8 NCHW; labels int64 or None; ``num_classes`` is 0 when unlabeled.
    The ``cfg.n_reference`` reference images never appear in the training pool, and the
    split depends only on ``seed``.
    """
    name = DataName(cfg.name)
    if name == DataName.digits:
        return _load_digits(cfg, seed)
    if name in _TORCHVISION:
        return _load_torchvision(cfg, name, seed)
    if name == DataName.folder:
        return _load_folder(cfg, seed)
    raise ValueError(f"data.name={name.value} is not an image data set")


def resize_images(x: np.ndarray, resolution: int | None) -> np.ndarray:
    """Resize uint8 NCHW images to ``resolution`` x ``resolution`` (bilinear, antialiased)."""
    if resolution is None or (x.shape[2] == resolution and x.shape[3] == resolution):
        return x
    out = np.empty((len(x), x.shape[1], resolution, resolution), dtype=np.uint8)
    for start in range(0, len(x), 4096):  # chunks bound the float copy for 60k-image sets
        chunk = torch.from_numpy(x[start : start + 4096]).float()
        chunk = F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _split(n: int, n_reference: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < n_reference < n:
        raise DataError(f"data.n_reference={n_reference} must leave training images out of the {n} images of {what}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_reference:]), np.sort(perm[:n_reference])


def _load_digits(cfg: DataConfig, seed: int) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    x = resize_images(x, cfg.resolution)
    train_idx, ref_idx = _split(len(x), cfg.n_reference, seed, "digits")
    return x[train_idx], y[train_idx], x[ref_idx], y[ref_idx], 10


def _load_torchvision(cfg: DataConfig, name: DataName, seed: int) -> Split:
    import torchvision

    cls_name, where = _TORCHVISION[name]
    dataset_cls = getattr(torchvision.datasets, cls_name)
    root = Path(cfg.root)

    def fetch(train: bool):
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        created = _missing_paths(root)
        try:
            return dataset_cls(str(root), train=train, download=True)
        except (URLError, RuntimeError, OSError) as err:
            _remove_created(root, created)
            raise DataUnavailableError(
                f"{name.value}: could not download to {root}/ (no internet?); "
                f"place the torchvision {cls_name} files under {root / where}"
            ) from err
        finally:
            socket.setdefaulttimeout(old)

    pool, test = fetch(True), fetch(False)
    train_x, train_y = _as_nchw(pool.data), np.asarray(pool.targets, dtype=np.int64)
    test_x, test_y = _as_nchw(test.data), np.asarray(test.targets, dtype=np.int64)
    if not 0 < cfg.n_reference <= len(test_x):
        raise DataError(f"data.n_reference={cfg.n_reference} must be in [1, {len(test_x)}] (the {cls_name} test split)")
    ref_idx = np.sort(np.random.default_rng(seed).permutation(len(test_x))[: cfg.n_reference])
    ref_x, ref_y = test_x[ref_idx], test_y[ref_idx]
    return resize_images(train_x, cfg.resolution), train_y, resize_images(ref_x, cfg.resolution), ref_y, len(pool.classes)


def _missing_paths(root: Path) -> tuple[bool, set[str]]:
    """(whether root existed, its top-level entries): what a failed download must not touch."""
    if not root.is_dir():
        return False, set()
    return True, {p.name for p in root.iterdir()}


def _remove_created(root: Path, before: tuple[bool, set[str]]) -> None:
    """Undo what a failed download created (torchvision makes its folders before it fetches):
    the whole root if it did not exist, else the top-level entries that are new."""
    existed, entries = before
    if not existed:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in root.iterdir():
        if p.name not in entries:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _as_nchw(data) -> np.ndarray:
    arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    arr = arr.astype(np.uint8, copy=False)
    if arr.ndim == 3:  # MNIST-like: N x H x W
        return np.ascontiguousarray(arr[:, None])
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))  # CIFAR: N x H x W x C


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _load_folder(cfg: DataConfig, seed: int) -> Split:
    from PIL import Image, ImageOps

    root = Path(cfg.root)
    if not root.is_dir():
        raise DataUnavailableError(f"folder: {root}/ is not a directory of images (set data.root)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataUnavailableError(f"folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/")
    top_level = [p for p in files if p.parent == root]
    nested = len(top_level) < len(files)
    labeled = cfg.labels and nested
    if labeled and top_level:
        raise DataError(
            f"folder: {root}/ mixes images at the top level ({top_level[0].name}, ...) with class sub-folders; "
            "move them into a sub-folder or set data.labels=false"
        )

    # first pass reads headers only (cheap): the common mode and whether sizes agree
    modes, sizes = set(), set()
    for p in files:
        try:
            with Image.open(p) as im:
                modes.add(im.mode)
                sizes.add(im.size)
        except Exception as err:  # PIL raises several types; the user needs the file's name
            raise DataError(f"folder: {p}: not a readable image ({_one_line(err)})") from None
    # one channel count for all: grey only if every image is grey, else everything becomes RGB
    mode = "L" if modes <= _GREY_MODES else "RGB"
    if cfg.resolution is None and len(sizes) > 1:
        raise DataError(f"folder: images under {root}/ differ in size ({len(sizes)} sizes, e.g. {sorted(sizes)[:3]}); set data.resolution")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)  # decodes the pixels: a truncated or corrupt file fails here
        except Exception as err:
            raise DataError(f"folder: {p}: not a readable image ({_one_line(err)})") from None
        if cfg.resolution is not None and im.size != (cfg.resolution, cfg.resolution):
            # centre-crop to square, then bilinear resize (PIL antialiases when shrinking)
            im = ImageOps.fit(im, (cfg.resolution, cfg.resolution), method=Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = np.ascontiguousarray(np.stack(arrays))

    if labeled:
        class_names = sorted({p.relative_to(root).parts[0] for p in files})
        index = {name: i for i, name in enumerate(class_names)}
        y = np.array([index[p.relative_to(root).parts[0]] for p in files], dtype=np.int64)
        num_classes = len(class_names)
    else:
        y, num_classes = None, 0
    train_idx, ref_idx = _split(len(x), cfg.n_reference, seed, f"folder {root}/")
    if y is None:
        return x[train_idx], None, x[ref_idx], None, 0
    return x[train_idx], y[train_idx], x[ref_idx], y[ref_idx], num_classes
