"""Cost of FID per generation: the reference prepared once (features, mean, covariance and its
square root cached in ``Reference``) against clean-fid's way of recomputing both sides every
generation (features of the real and the generated set, both covariances, ``scipy.linalg.sqrtm``).

    python benchmarks/bench_fid.py                      # classifier features of digits
    python benchmarks/bench_fid.py --inception 32       # also Inception-v3 at 32 images per set

Digits: the held-out 500 are the reference; each "generation" is 500 training digits with random
pixel noise (a stand-in for a generator's output: the cost does not depend on where samples come
from). The classifier is trained once (or loaded from the cache) before timing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import warnings

import numpy as np
import torch


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    b = load_digits()
    x = np.round(b.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[:1297]], b.target[perm[:1297]], x[perm[1297:]], b.target[perm[1297:]]


def noisy(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = x[rng.integers(0, len(x), n)].astype(np.int16)
    return np.clip(pick + rng.integers(-40, 41, pick.shape), 0, 255).astype(np.uint8)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(name: str, ref_x, gens, cfg, train_x=None, train_y=None) -> None:
    from cleanfid.fid import frechet_distance as clean_frechet

    from mad.metrics import Reference, evaluate, extract_features, feature_stats, fid_to_reference, prepare_reference

    t_prep, ref = timed(lambda: prepare_reference(ref_x, None, train_x, train_y, cfg,
                                                  10 if train_y is not None else None))
    assert isinstance(ref, Reference)
    kind = cfg.features
    cached, recompute, full = [], [], []
    values = []
    for x in gens:
        # ours: only the generated side is new
        def ours():
            feats, _ = extract_features(kind, x, ref.extractor_state)
            return fid_to_reference(ref.mu, ref.sigma, ref.sigma_sqrt, feats)

        # clean-fid style: features of both sets, both covariances, sqrtm of their product
        def theirs():
            f_real, _ = extract_features(kind, ref_x, ref.extractor_state)
            f_gen, _ = extract_features(kind, x, ref.extractor_state)
            # scipy warns on singular products (dead ReLU units, n < d); the value is still used
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(clean_frechet(*feature_stats(f_real), *feature_stats(f_gen)))

        t1, a = timed(ours)
        t2, b = timed(theirs)
        t3, _ = timed(lambda: evaluate(ref, x, None, cfg))
        cached.append(t1)
        recompute.append(t2)
        full.append(t3)
        values.append((a, b))
    c, r, f = statistics.median(cached), statistics.median(recompute), statistics.median(full)
    worst = max(abs(a - b) / abs(b) for a, b in values)
    print(f"\n## {name}: reference {len(ref_x)} images, {len(gens)} generations of {len(gens[0])} images, "
          f"{ref.feats.shape[1]}-d features")
    print(f"prepare_reference (once per run): {t_prep:.2f} s")
    print(f"FID per generation, cached reference      : {c:.3f} s (median)")
    print(f"FID per generation, recompute both sides  : {r:.3f} s (median)")
    print(f"ratio recompute / cached: {r / c:.1f}x   largest relative FID difference: {worst:.1e}")
    print(f"full evaluate() per generation (FID + precision/recall/density/coverage + class metrics): {f:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--n", type=int, default=500, help="generated samples per generation (digits)")
    ap.add_argument("--inception", type=int, default=0, help="also time Inception features at N images per set")
    ap.add_argument("--cache-dir", default=".cache/mad")
    args = ap.parse_args()
    from mad.config import Features, MetricsConfig

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    xtr, ytr, xte, _ = digits()
    cfg = MetricsConfig(features=Features.classifier, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    from mad.metrics import load_or_train_classifier

    load_or_train_classifier(xtr, ytr, 10, args.cache_dir, epochs=cfg.classifier_epochs)
    print(f"classifier trained or loaded from {args.cache_dir}: {time.perf_counter() - t0:.1f} s (before timing)")
    gens = [noisy(xtr, args.n, g) for g in range(args.generations)]
    run("classifier features (digits)", xte, gens, cfg, xtr, ytr)

    if args.inception:
        from mad.metrics import inception_weights_path

        try:
            inception_weights_path()
        except RuntimeError as err:
            print(f"\n## inception: skipped ({err})")
            return
        n = args.inception
        ref_x = np.repeat(xte[:n], 3, axis=1)
        gens_i = [np.repeat(noisy(xtr, n, 100 + g), 3, axis=1) for g in range(min(args.generations, 2))]
        run(f"inception features ({n} images per set, CPU)", ref_x, gens_i,
            MetricsConfig(features=Features.inception, k=3))


if __name__ == "__main__":
    main()
