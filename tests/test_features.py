"""Feature networks: the digits classifier (accuracy, disk cache, determinism), the classifier
metrics through prepare_reference/evaluate, and the Inception path against clean-fid."""
import contextlib
import importlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mad.config import Features, MetricsConfig
from mad.metrics import (
    INSTALL_HINT,
    classifier_cache_key,
    evaluate,
    inception_weights_path,
    load_or_train_classifier,
    prepare_reference,
    raw_features,
    train_classifier,
)

features_module = importlib.import_module("mad.metrics.features")
evaluate_module = importlib.import_module("mad.metrics.evaluate")  # the name ``evaluate`` is the function

EPOCHS = MetricsConfig().classifier_epochs  # the default recipe is what runs use


@contextlib.contextmanager
def one_thread():
    """Training an 8x8-pixel CNN is hundreds of tiny ops: on two cores shared with other jobs,
    each OpenMP barrier waits for a descheduled thread (measured 15x slower than one thread).
    The caller decides threads; here the test is the caller (Ray workers get OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn digits as uint8 NCHW; fixed split 1297 train / 500 held-out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train, held = perm[:1297], perm[1297:]
    return x[train], y[train], x[held], y[held]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics-cache")


@pytest.fixture(scope="module")
def trained(digits, cache_dir):
    """Trained once for the module (seconds on CPU), through the cache like a run does."""
    xtr, ytr, _, _ = digits
    with one_thread():
        return load_or_train_classifier(xtr, ytr, 10, cache_dir, epochs=EPOCHS)


def test_digits_classifier_reaches_97_percent_held_out(digits, trained):
    _, _, xte, yte = digits
    assert trained.accuracy(xte, yte) >= 0.97


def test_classifier_cache_is_hit_on_second_call(digits, cache_dir, trained):
    xtr, ytr, _, _ = digits
    files = list(Path(cache_dir).glob("classifier-*.safetensors"))
    assert len(files) == 1
    assert trained.key in files[0].read_bytes()[:4096].decode("latin-1")  # metadata names the key
    mtime = files[0].stat().st_mtime_ns
    again = load_or_train_classifier(xtr, ytr, 10, cache_dir, epochs=EPOCHS)
    # loaded, not retrained: training always rewrites the file, and the weights are the same tensors' values
    assert files[0].stat().st_mtime_ns == mtime
    assert list(Path(cache_dir).iterdir()) == files  # no temporary files left behind
    for name, value in trained.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[name].cpu(), value.cpu()), name


def test_cache_key_depends_on_content_and_recipe(digits):
    xtr, ytr, _, _ = digits
    key = classifier_cache_key(xtr, ytr, 10, EPOCHS)
    flipped = ytr.copy()
    flipped[0] = (flipped[0] + 1) % 10
    assert classifier_cache_key(xtr, flipped, 10, EPOCHS) != key
    pixel = xtr.copy()
    pixel[0, 0, 0, 0] ^= 1
    assert classifier_cache_key(pixel, ytr, 10, EPOCHS) != key
    assert classifier_cache_key(xtr, ytr, 10, EPOCHS + 1) != key
    assert classifier_cache_key(xtr.copy(), ytr.copy(), 10, EPOCHS) == key


def test_training_is_deterministic_given_a_seed(digits):
    xtr, ytr, _, _ = digits
    with one_thread():
        a = train_classifier(xtr[:200], ytr[:200], 10, epochs=1, seed=3, device="cpu")
        b = train_classifier(xtr[:200], ytr[:200], 10, epochs=1, seed=3, device="cpu")
        c = train_classifier(xtr[:200], ytr[:200], 10, epochs=1, seed=4, device="cpu")
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_classifier_metrics_through_the_driver_api(digits, cache_dir, trained):
    xtr, ytr, xte, yte = digits
    cfg = MetricsConfig(features=Features.classifier, cache_dir=str(cache_dir), classifier_epochs=EPOCHS)
    ref = prepare_reference(xte, yte, xtr, ytr, cfg, 10)
    assert ref.features_kind == "classifier" and ref.feats.shape == (500, 128)
    # the reference's class histogram (the classifier's predictions on the real reference set)
    # follows the real labels' frequencies up to the classifier's few errors
    np.testing.assert_allclose(ref.class_hist, np.bincount(yte, minlength=10) / len(yte), atol=0.01)
    # workers rebuild the classifier from the pickled reference, without the disk cache
    evaluate_module._CLASSIFIERS.clear()
    ref = pickle.loads(pickle.dumps(ref))

    real = evaluate(ref, xtr[:500], ytr[:500], cfg)  # a perfect "generator": fresh real digits
    expected_keys = {"fid", "kid", "kid_se", "precision", "recall", "density", "coverage",
                     "class_entropy", "class_kl", "mean_confidence", "label_accuracy", "class_hist"}
    assert set(real) == expected_keys and all(type(v) is float for k, v in real.items() if k != "class_hist")
    # the predicted-class fractions (the report's class-drift heatmap), consistent with the entropy
    hist = np.asarray(real["class_hist"])
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0, abs=1e-5)
    nz = hist[hist > 0]
    assert -(nz * np.log(nz)).sum() == pytest.approx(real["class_entropy"], abs=1e-4)
    assert real["class_entropy"] > 0.95 * np.log(10) and real["class_kl"] < 0.02
    assert real["label_accuracy"] > 0.97 and real["mean_confidence"] > 0.9
    assert real["precision"] > 0.7 and real["recall"] > 0.7

    collapsed = xtr[ytr == 0][:100]  # a mode-collapsed "generator": only zeros
    bad = evaluate(ref, collapsed, None, cfg)
    assert "label_accuracy" not in bad
    assert bad["class_entropy"] < 0.2 and bad["class_kl"] > 2.0
    assert np.argmax(bad["class_hist"]) == 0 and bad["class_hist"][0] > 0.9
    assert bad["fid"] > 10 * real["fid"] and bad["recall"] < 0.3 and bad["coverage"] < 0.3


def test_image_inputs_are_checked(digits, trained):
    xtr, _, _, _ = digits
    with pytest.raises(ValueError, match="expected uint8 images"):
        trained.predict(xtr.astype(np.float32))
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 8, 8\)"):
        trained.predict(np.zeros((4, 1, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="class labels"):
        train_classifier(xtr[:10], None, 10, epochs=1)
    with pytest.raises(ValueError, match="out of range"):
        train_classifier(xtr[:10], np.full(10, 12), 10, epochs=1)
    np.testing.assert_array_equal(raw_features(xtr[:5]), xtr[:5].reshape(5, -1).astype(np.float64))


# ----------------------------------------------------------------------------- inception
def _inception_or_skip():
    try:
        return inception_weights_path()
    except RuntimeError as err:
        pytest.skip(str(err))


def test_missing_inception_weights_give_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(features_module, "_CLEANFID_WEIGHTS", tmp_path / "absent.pt")
    with pytest.raises(RuntimeError, match='pip install -e ".\\[inception\\]"') as err:
        prepare_reference(np.zeros((8, 3, 8, 8), np.uint8), None, None, None,
                          MetricsConfig(features=Features.inception), None)
    assert "\n" not in str(err.value) and INSTALL_HINT in str(err.value)


@pytest.mark.slow
def test_inception_fid_equals_clean_fid_compute_fid(tmp_path):
    """Same two folders, same network: our path (in-memory uint8 arrays) == clean-fid's compute_fid.
    The second folder is grayscale: clean-fid reads it as RGB, we repeat the channel."""
    _inception_or_skip()
    from PIL import Image
    from cleanfid.fid import compute_fid
    from threadpoolctl import threadpool_limits

    from mad.metrics import load_inception

    rng = np.random.default_rng(0)
    sets = {}
    for name, channels, mean in (("rgb", 3, 100), ("gray", 1, 140)):
        imgs = np.clip(rng.normal(mean, 50, (8, channels, 16, 16)), 0, 255).astype(np.uint8)
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im[0] if channels == 1 else im.transpose(1, 2, 0)).save(tmp_path / name / f"{i:03d}.png")
        sets[name] = imgs
    cfg = MetricsConfig(features=Features.inception, k=3)
    with one_thread(), threadpool_limits(1, "blas"):
        # one BLAS thread too: scipy's sqrtm of 2048x2048 in compute_fid crawls when OpenBLAS
        # threads share busy cores
        ref = prepare_reference(sets["rgb"], None, None, None, cfg, None)
        out = evaluate(ref, sets["gray"], None, cfg)
        theirs = compute_fid(str(tmp_path / "rgb"), str(tmp_path / "gray"), mode="clean",
                             custom_feat_extractor=load_inception("cpu"), num_workers=0, batch_size=32,
                             device=torch.device("cpu"), verbose=False)
    assert ref.feats.shape == (8, 2048) and ref.extractor_state == {"kind": "inception"}
    assert set(out) == {"fid", "kid", "kid_se", "precision", "recall", "density", "coverage"}
    assert out["fid"] == pytest.approx(theirs, rel=1e-3)
    assert theirs > 1.0  # the two folders differ: the comparison is not 0 == 0
