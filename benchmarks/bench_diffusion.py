"""Speed of mad.models.diffusion against bare diffusers loops, measured side by side.

Training: ``mad.models.diffusion.train`` (EMA, label dropout, seeded batches) against the
loop body of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
written inline below (same UNet, batch, steps, optimizer; no EMA: the strictest baseline).
Sampling: ``mad.models.diffusion.sample`` (DDIM) against a bare DDIM loop over the same
weights. Candidate and baseline alternate round by round and the median of the rounds
is reported, by process CPU time (fair on a shared CPU with one thread) and wall clock.

Then the wall-clock and CPU time of the recommended digits setting at 1 and 2 threads,
for sizing ``configs/default.yaml``.

    python benchmarks/bench_diffusion.py               # everything (~10 min on 2 idle cores)
    python benchmarks/bench_diffusion.py --quick       # a smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mad.config import DataConfig, DataName, Family, ModelConfig, SampleConfig, Scheduler, TrainConfig  # noqa: E402
from mad.data.images import load_images  # noqa: E402
from mad.models.diffusion import build_unet, sample, to_uint8, to_unit_range, train  # noqa: E402


def baseline_train(x: np.ndarray, y: np.ndarray, num_classes: int, model: ModelConfig, cfg: TrainConfig, seed: int) -> None:
    """The loop body of diffusers' train_unconditional.py, plus class labels, nothing else."""
    torch.manual_seed(seed)
    net = build_unet(model, x.shape[1:], num_classes).train()
    noise_scheduler = DDPMScheduler(num_train_timesteps=model.num_train_timesteps)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = to_unit_range(x)
    labels = torch.from_numpy(y)
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,))
        clean_images = data[idx]
        noise = torch.randn(clean_images.shape)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],)).long()
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        model_output = net(noisy_images, timesteps, class_labels=labels[idx]).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def baseline_sample(state: dict, n: int, num_classes: int, shape: tuple, model: ModelConfig, cfg: SampleConfig, seed: int) -> np.ndarray:
    """A bare conditional DDIM loop (eta = 0, no guidance: lambda = 1)."""
    net = build_unet(model, shape, num_classes)
    net.load_state_dict(state)
    net.eval()
    scheduler = DDIMScheduler(num_train_timesteps=model.num_train_timesteps, timestep_spacing="trailing")
    scheduler.set_timesteps(cfg.steps)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, cfg.batch_size):
        b = min(cfg.batch_size, n - start)
        x = torch.randn((b, *shape), generator=gen)
        cls = torch.randint(0, num_classes, (b,), generator=gen)
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t, class_labels=cls).sample, t, x).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out)


def timed_cpu(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is
    what the call would take alone, up to cache effects (and times the threads used)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(name: str, candidate, baseline, work: float, rounds: int, unit: str) -> float:
    """Throughput of both sides over alternating rounds; the ratio is the median of the
    per-round ratios, each taken from two runs seconds apart, so a neighbour's load that
    drifts over minutes cancels. Process CPU time (fair with one thread on a shared CPU)
    and wall clock are both reported.
    """
    candidate(), baseline()  # warm-up: first calls build oneDNN kernels and fill caches
    rates = {"mad": ([], []), "base": ([], [])}
    for r in range(rounds):
        # alternate which goes first so a load change within a round favours neither
        order = [("mad", candidate), ("base", baseline)] if r % 2 == 0 else [("base", baseline), ("mad", candidate)]
        for key, fn in order:
            wall, cpu = timed_cpu(fn)
            rates[key][0].append(work / wall)
            rates[key][1].append(work / cpu)
    med = {key: (statistics.median(w), statistics.median(c)) for key, (w, c) in rates.items()}
    ratio_wall = statistics.median(m / b for m, b in zip(rates["mad"][0], rates["base"][0]))
    ratio_cpu = statistics.median(m / b for m, b in zip(rates["mad"][1], rates["base"][1]))
    spread = sorted(m / b for m, b in zip(rates["mad"][1], rates["base"][1]))
    print(
        f"{name:<40} mad {med['mad'][1]:7.1f} {unit} (cpu) {med['mad'][0]:7.1f} (wall)   "
        f"baseline {med['base'][1]:7.1f} (cpu) {med['base'][0]:7.1f} (wall)   "
        f"ratio cpu {ratio_cpu:5.3f}  wall {ratio_wall:5.3f}   "
        f"(median of {rounds} paired rounds; cpu ratios {spread[0]:.2f}..{spread[-1]:.2f})"
    )
    return ratio_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that the script runs")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the side-by-side comparison")
    ap.add_argument("--sizing-threads", default="1,2", help="thread counts for the sizing section, comma-separated")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds

    tx, ty, _, _, k = load_images(DataConfig(name=DataName.digits, n_reference=500), seed=0)
    shape = tuple(tx.shape[1:])
    model = ModelConfig(family=Family.diffusion, channels=[16, 32], num_train_timesteps=1000)
    steps = 10 if args.quick else 60
    tcfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3)
    scfg = SampleConfig(scheduler=Scheduler.ddim, steps=20, batch_size=250)
    n_sample = 50 if args.quick else 500
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"digits 8x8, UNet channels {model.channels}, T={model.num_train_timesteps}, batch {tcfg.batch_size}, {steps} steps per timing\n")

    for threads in (args.threads,):
        torch.set_num_threads(threads)
        print(f"--- {threads} thread(s)")
        compare(
            "train (images/s)",
            lambda: train(tx, ty, k, model, tcfg, seed=0, device="cpu"),
            lambda: baseline_train(tx, ty, k, model, tcfg, seed=0),
            work=steps * tcfg.batch_size, rounds=rounds, unit="img/s",
        )
        # A/A control: the baseline against itself shows how far the machine's noise alone moves a ratio
        compare(
            "train A/A control (baseline vs baseline)",
            lambda: baseline_train(tx, ty, k, model, tcfg, seed=0),
            lambda: baseline_train(tx, ty, k, model, tcfg, seed=0),
            work=steps * tcfg.batch_size, rounds=rounds, unit="img/s",
        )
        state = train(tx, ty, k, model, TrainConfig(steps=2, batch_size=8), seed=0, device="cpu")
        compare(
            f"DDIM sample lambda=1, {scfg.steps} steps (images/s)",
            lambda: sample(state, n_sample, k, shape, model, scfg, seed=0, device="cpu"),
            lambda: baseline_sample(state, n_sample, k, shape, model, scfg, seed=0),
            work=n_sample, rounds=rounds, unit="img/s",
        )
        guided = SampleConfig(scheduler=Scheduler.ddim, steps=20, batch_size=250, bias=0.5)
        wall, cpu = timed_cpu(lambda: sample(state, n_sample, k, shape, model, guided, seed=0, device="cpu"))
        print(f"{'DDIM sample lambda=0.5 (CFG, 2x batch)':<40} mad {n_sample / cpu:7.1f} img/s (cpu) {n_sample / wall:7.1f} (wall)")

    if args.quick:
        return
    # Wall-clock of whole calls in the recommended digits setting, for sizing the default config.
    print("\n--- sizing: one train() and one sample() call, recommended digits setting")
    # train time is linear in steps, so 250 steps timed and scaled to 1000 keeps the run short
    sizing_steps = 250
    recommended = TrainConfig(steps=sizing_steps, batch_size=32, lr=1e-3)
    for threads in (int(t) for t in args.sizing_threads.split(",")):
        torch.set_num_threads(threads)
        wall, cpu = timed_cpu(lambda: train(tx[:1000], ty[:1000], k, model, recommended, seed=0, device="cpu"))
        scale = 1000 / sizing_steps
        print(f"{threads} thread(s): {'train n=1000 batch=32, per 1000 steps':<42} wall {wall * scale:6.1f} s   cpu {cpu * scale:6.1f} s", flush=True)
        state = train(tx, ty, k, model, TrainConfig(steps=2, batch_size=8), seed=0, device="cpu")
        for lam in (1.0, 0.5):
            cfg = SampleConfig(scheduler=Scheduler.ddim, steps=20, batch_size=250, bias=lam)
            wall, cpu = timed_cpu(lambda: sample(state, 1000, k, shape, model, cfg, seed=0, device="cpu"))
            print(f"{threads} thread(s): {f'sample n=1000 DDIM 20 steps lambda={lam}':<42} wall {wall:6.1f} s   cpu {cpu:6.1f} s", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
