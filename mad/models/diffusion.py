"""Denoising diffusion (DDPM) on images: MAD's conditional diffusion model family.

A ``diffusers.UNet2DModel`` predicts the noise; training follows diffusers'
``examples/unconditional_image_generation/train_unconditional.py`` (noise, random
timesteps, ``add_noise``, MSE on the noise) with diffusers' ``EMAModel`` of the weights,
and the EMA weights are what sampling uses.

MAD's sampling bias lambda (``sample.bias``, 1 = unbiased):

* conditional model (trained with label dropout): classifier-free guidance with
  weight ``w = 1/lambda - 1``, ``eps = eps_uncond + (1 + w) (eps_cond - eps_uncond)``;
* unconditional model: the sampler started from ``N(0, lambda I)`` instead of ``N(0, I)``,
  which needs ``sample.scheduler=ddim`` (deterministic, eta = 0, i.e. the probability-flow ODE);
  ancestral DDPM with lambda < 1 is refused, never swapped for DDIM.

The sampler is ``sample.scheduler`` for every lambda.

Images enter as uint8 NCHW and are scaled to [-1, 1]; samples leave as uint8 NCHW.
Weights travel as a flat CPU ``state_dict`` (safetensors-ready), never as pickles.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from mad import seeding
from mad.divergence import DivergedError
from mad.config import ModelConfig, SampleConfig, Scheduler, TrainConfig, sampling_steps
from mad.pixels import resolve_device as _resolve_device, to_uint8, to_unit_range
from mad.progress import progress_bar
from mad.models.training import index_batches, make_ema

__all__ = ["build_unet", "evaluate_loss", "is_conditional", "train", "sample", "to_unit_range", "to_uint8"]


# ----------------------------------------------------------------------------- model
def is_conditional(model: ModelConfig, num_classes: int) -> bool:
    """Class-conditional exactly when the data has labels and the config asks for it."""
    return bool(model.conditional) and num_classes > 0


def _norm_groups(channels: list[int]) -> int:
    """The largest group count <= 32 that divides every width (GroupNorm needs it).

    Up blocks normalise concatenations of widths; a divisor of all widths divides
    their sums too, so one number serves every GroupNorm in the UNet.
    """
    g = 0
    for c in channels:
        g = math.gcd(g, int(c))
    return max(d for d in range(1, min(32, g) + 1) if g % d == 0)


def build_unet(model: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    """A UNet2DModel sized by ``model`` for images of shape (C, H, W).

    One resolution level per entry of ``model.channels``; every level but the last
    halves the resolution, so H and W must be divisible by 2**(len(channels)-1).
    With ``model.attention`` the lowest-resolution level (and the mid block) get
    self-attention; otherwise the net is purely convolutional, which is what tiny
    CPU runs want.
    """
    c, h, w = (int(v) for v in image_shape)
    channels = [int(v) for v in model.channels]
    if not channels or any(v <= 0 for v in channels):
        raise ValueError(f"model.channels must be a non-empty list of positive widths, got {channels}")
    factor = 2 ** (len(channels) - 1)
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}x{w} is not divisible by 2**(len(model.channels)-1) = {factor}; "
            f"use fewer levels in model.channels (now {channels}) or set data.resolution to a multiple of {factor}"
        )
    n_levels = len(channels)
    down = ["DownBlock2D"] * n_levels
    up = ["UpBlock2D"] * n_levels
    if model.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=(h, w) if h != w else h,
        in_channels=c,
        out_channels=c,
        block_out_channels=tuple(channels),
        layers_per_block=int(model.layers_per_block),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=_norm_groups(channels),
        add_attention=bool(model.attention),
        # the extra embedding (index num_classes) is the null label of classifier-free guidance
        num_class_embeds=num_classes + 1 if is_conditional(model, num_classes) else None,
    )


def _load_unet(state: dict[str, torch.Tensor], model: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    net = build_unet(model, image_shape, num_classes)
    has_labels = "class_embedding.weight" in state
    if has_labels != is_conditional(model, num_classes):
        kind = "class-conditional" if has_labels else "unconditional"
        raise ValueError(
            f"the weights are {kind} but model.conditional={model.conditional} with num_classes={num_classes} asks otherwise"
        )
    net.load_state_dict(state, strict=True)
    return net




# ----------------------------------------------------------------------------- training
LOSS_CHECK_EVERY = 100  # steps between checks that the training loss is finite


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) inside a torch.distributed process group (e.g. Ray Train's), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's part of a global batch: contiguous, the sizes differing by at most one."""
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def train(
    x: np.ndarray,
    y: np.ndarray | None,
    num_classes: int,
    model: ModelConfig,
    train: TrainConfig,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    device: str | None = None,
) -> dict[str, torch.Tensor]:
    """Train a DDPM on uint8 NCHW images ``x`` (labels ``y`` or None); return the EMA weights.

    ``init_state`` fine-tunes from earlier weights (``train.init=previous``); None starts
    from a fresh, seeded initialisation. The result is a flat CPU state dict of
    contiguous tensors, ready for ``safetensors.torch.save_file``.

    Inside a torch.distributed process group (``mad.distributed`` runs one under Ray Train)
    the UNet is wrapped in DistributedDataParallel: every rank draws the same global batch
    of ``train.batch_size`` indices and trains on its own slice of it, with its own noise;
    DDP averages the gradients, so the weights, and hence the EMA, stay identical on all
    ranks and each returns the same state dict, with the single-process keys.

    Raises ``mad.divergence.DivergedError`` when the loss is non-finite at a check (every
    ``LOSS_CHECK_EVERY`` steps and at the last step; single process only).
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"x must be uint8 NCHW images, got dtype {x.dtype} and shape {x.shape}")
    if len(x) == 0:
        raise ValueError("x holds no images")
    conditional = is_conditional(model, num_classes)
    if conditional:
        if y is None:
            raise ValueError("a class-conditional model needs labels y")
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    rank, world_size = _distributed_rank()
    if train.batch_size < world_size:
        raise ValueError(f"train.batch_size ({train.batch_size}) must be at least the number of "
                         f"data-parallel workers ({world_size}): every worker needs a sample per step")
    dev = _resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # DDP needs the index
    image_shape = tuple(int(v) for v in x.shape[1:])

    # Build on CPU under a forked RNG: the initialisation is a function of the seed
    # and the caller's global torch RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_seed64(seed, 0))
        net = build_unet(model, image_shape, num_classes)
    if init_state is not None:
        net.load_state_dict(init_state, strict=True)
    net.to(dev).train()
    forward = net
    if world_size > 1:
        # DDP broadcasts rank 0's weights once, then all-reduces (averages) the gradients each step;
        # the optimizer and the EMA keep working on the plain ``net``, whose names carry no "module." prefix.
        forward = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)

    noise_scheduler = DDPMScheduler(num_train_timesteps=model.num_train_timesteps)
    optimizer = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    params = list(net.parameters())
    ema = make_ema(params, train.ema_decay)

    # Images stay uint8 on the device (4x smaller than float); each batch is scaled on the fly.
    data = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    labels = torch.from_numpy(y.astype(np.int64)).to(dev) if conditional else None
    # The index stream is the same on every rank (the single-process one): the ranks split each global
    # batch between them, so an epoch still shows every image once, whatever the number of workers.
    index_gen = torch.Generator().manual_seed(seeding.derive_seed64(seed, 1))
    # noise, timesteps and label dropout come from a generator on the device, so no host->device copies per step;
    # each rank has its own stream, or two ranks would add the same noise to their images
    rank_keys = (rank,) if world_size > 1 else ()
    gen = torch.Generator(device=dev).manual_seed(seeding.derive_seed64(seed, 2, *rank_keys))
    batches = index_batches(len(x), train.batch_size, index_gen)
    mine = _rank_slice(train.batch_size, rank, world_size)
    # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global batch
    # makes that average the gradient of the global-batch mean even when the split is uneven
    share = (mine.stop - mine.start) * world_size / train.batch_size
    T = noise_scheduler.config.num_train_timesteps

    for step in progress_bar(range(train.steps), "train", progress and rank == 0):
        idx = next(batches)[mine].to(dev)
        clean = to_unit_range(data[idx])
        noise = torch.randn(clean.shape, generator=gen, device=dev)
        timesteps = torch.randint(0, T, (clean.shape[0],), generator=gen, device=dev)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        if conditional:
            cls = labels[idx]
            # label dropout teaches the null label, which classifier-free guidance needs at sampling time
            drop = torch.rand(cls.shape, generator=gen, device=dev) < model.label_dropout
            cls = torch.where(drop, torch.full_like(cls, num_classes), cls)
            pred = forward(noisy, timesteps, class_labels=cls).sample
        else:
            pred = forward(noisy, timesteps).sample
        loss = F.mse_loss(pred.float(), noise.float())
        # Every LOSS_CHECK_EVERY steps (a host sync each) and at the end: a diverged run stops early
        # instead of training on for hours. Not under DDP, where ranks leaving the loop at different
        # steps would deadlock the all-reduce; the task layer's weight check stops those runs.
        if (world_size == 1 and (step % LOSS_CHECK_EVERY == 0 or step == train.steps - 1)
                and not torch.isfinite(loss).item()):
            raise DivergedError(f"the training loss became {loss.item()} at step {step + 1} of {train.steps}",
                                "train.lr")
        if world_size > 1:
            loss = loss * share
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(params)

    names = [name for name, _ in net.named_parameters()]
    state = {name: e.detach().to("cpu").contiguous() for name, e in zip(names, ema.shadow_params)}
    # UNet2DModel has no buffers today; copy any that appear so the state dict stays complete
    for name, buf in net.named_buffers():
        state[name] = buf.detach().to("cpu").contiguous()
    return state


@torch.no_grad()
def evaluate_loss(
    state: dict[str, torch.Tensor],
    x: np.ndarray,
    y: np.ndarray | None,
    num_classes: int,
    model: ModelConfig,
    seed: int,
    batch_size: int = 256,
    device: str | None = None,
) -> float:
    """The training objective (noise-prediction MSE, labels kept) of ``state`` on ``x``.

    Noise and timesteps are drawn from ``seed``, so two weight sets compared with the
    same seed see exactly the same noisy inputs.
    """
    dev = _resolve_device(device)
    x = np.asarray(x)
    conditional = is_conditional(model, num_classes)
    net = _load_unet(state, model, tuple(x.shape[1:]), num_classes).to(dev).eval()
    scheduler = DDPMScheduler(num_train_timesteps=model.num_train_timesteps)
    gen = torch.Generator().manual_seed(seeding.derive_seed64(seed, 0))
    total = 0.0
    for start in range(0, len(x), batch_size):
        clean = to_unit_range(x[start : start + batch_size])
        noise = torch.randn(clean.shape, generator=gen)
        t = torch.randint(0, model.num_train_timesteps, (clean.shape[0],), generator=gen)
        noisy = scheduler.add_noise(clean, noise, t).to(dev)
        cls = torch.from_numpy(np.asarray(y[start : start + batch_size], dtype=np.int64)).to(dev) if conditional else None
        pred = net(noisy, t.to(dev), class_labels=cls).sample
        total += F.mse_loss(pred.float().cpu(), noise, reduction="sum").item()
    return total / float(x.size)


# ----------------------------------------------------------------------------- sampling
def _make_scheduler(model: ModelConfig, sample: SampleConfig, conditional: bool) -> tuple[DDIMScheduler | DDPMScheduler, bool]:
    """The sampling scheduler, ``sample.scheduler`` whatever lambda is, and whether it is the
    deterministic DDIM (eta = 0).

    ``sample.clip`` is diffusers' ``clip_sample``: the predicted x0 clipped to [-1, 1] at every
    step, as in Ho et al.'s DDPM sampler, which MAD used. On the default config's generation-1
    model at lambda = 1 (``benchmarks/bench_sampler.py``, BENCHMARKS.md "Sampler", 3 sampling
    seeds), the full-T ancestral DDPM with clipping gave precision 0.93, recall 0.90, coverage
    0.86, FID 34; ancestral DDPM with 50-250 steps, clipped or not, stayed within 0.04 of that
    in precision, recall and coverage (density 0.76-0.83 against 0.82, FID 33-37). The deterministic DDIM did not: with clipping 20 steps gave
    precision 0.85, coverage 0.62, FID 73 (50 steps: coverage 0.46, FID 112), without it
    precision 0.74 and recall 0.93, i.e. the sampler alone moved precision against recall.

    The sampler never depends on lambda: a lambda sweep that switched samplers would measure the
    sampler with the bias. The unconditional model's lambda < 1 (the latent started from
    N(0, lambda I)) is defined for DDIM only, so there ancestral DDPM is refused (at load time by
    ``mad.config.check_sampler``; here for direct callers). With DDIM clipping does not wash the
    latent's scale out (at t ~ T the predicted x0 saturates whatever lambda is, but the scale
    travels through the eps term).
    """
    clip = bool(sample.clip)
    T = model.num_train_timesteps
    if sample.scheduler == Scheduler.ddpm and not conditional and sample.bias < 1.0:
        raise ValueError(f"sample.scheduler: ddpm with sample.bias={sample.bias} on an unconditional model: its "
                         "lambda < 1 is defined for the deterministic sampler started from N(0, lambda I) only; "
                         "use sample.scheduler=ddim")
    steps = sampling_steps(model, sample)
    # "trailing" spacing starts the reverse chain at t = T-1, where x_T ~ N(0, I) is the
    # right prior (Lin et al. 2024); "leading" would start below T-1 with few steps.
    if sample.scheduler == Scheduler.ddpm:
        # with steps < T diffusers' step() goes from each timestep to the next one of the spacing
        # through the posterior q(x_t' | x_t, x0): ancestral sampling of the shorter chain
        sched = DDPMScheduler(num_train_timesteps=T, clip_sample=clip, timestep_spacing="trailing")
        sched.set_timesteps(steps)
        return sched, False
    sched = DDIMScheduler(num_train_timesteps=T, clip_sample=clip, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    return sched, True


def _draw_labels(n: int, num_classes: int, class_probs: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if class_probs is None:
        return rng.integers(0, num_classes, size=n, dtype=np.int64)
    p = np.asarray(class_probs, dtype=np.float64)
    if p.shape != (num_classes,) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"class_probs must be {num_classes} non-negative weights, got {class_probs!r}")
    return rng.choice(num_classes, size=n, p=p / p.sum()).astype(np.int64)


@torch.no_grad()
def sample(
    state: dict[str, torch.Tensor],
    n: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    model: ModelConfig,
    sample: SampleConfig,
    seed: int,
    class_probs: np.ndarray | None = None,
    progress: bool = False,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``n`` images (uint8 NCHW) and their labels (int64, or None when unconditional).

    Deterministic for the same weights, seed and batch size. Labels are uniform over the
    classes unless ``class_probs`` (e.g. the real class histogram) is given.
    """
    if not (0.0 < sample.bias <= 1.0):
        raise ValueError(f"sample.bias must be in (0, 1], got {sample.bias}")
    dev = _resolve_device(device)
    conditional = is_conditional(model, num_classes)
    net = _load_unet(state, model, image_shape, num_classes).to(dev).eval()
    rng = seeding.rng(seed, 0)
    labels = _draw_labels(n, num_classes, class_probs, rng) if conditional else None
    # initial latents from a CPU generator: the same seed gives the same latents on any device
    latent_gen = torch.Generator().manual_seed(seeding.derive_seed64(seed, 1))
    step_gen = torch.Generator(device=dev).manual_seed(seeding.derive_seed64(seed, 2))  # DDPM's per-step noise
    guidance = 1.0 / sample.bias - 1.0 if conditional else 0.0
    # unconditional bias: the latent is drawn from N(0, lambda I), i.e. scaled by sqrt(lambda)
    latent_scale = 1.0 if conditional else math.sqrt(sample.bias)

    scheduler, deterministic = _make_scheduler(model, sample, conditional)  # stateless steps: reused by all batches
    out = np.empty((n, *image_shape), dtype=np.uint8)
    batches = range(0, n, sample.batch_size)
    for start in progress_bar(batches, "sample", progress):
        stop = min(start + sample.batch_size, n)
        xt = torch.randn((stop - start, *image_shape), generator=latent_gen).mul_(latent_scale).to(dev)
        cls = torch.from_numpy(labels[start:stop]).to(dev) if conditional else None
        if conditional and guidance > 0:
            # one forward pass for both branches: conditional labels, then the null label
            cls_pair = torch.cat([cls, torch.full_like(cls, num_classes)])
        for t in scheduler.timesteps:
            if not conditional:
                eps = net(xt, t).sample
            elif guidance == 0.0:
                eps = net(xt, t, class_labels=cls).sample  # w = 0: the unconditional branch has weight 0
            else:
                eps_cond, eps_uncond = net(torch.cat([xt, xt]), t, class_labels=cls_pair).sample.chunk(2)
                eps = eps_uncond + (1.0 + guidance) * (eps_cond - eps_uncond)
            if deterministic:
                xt = scheduler.step(eps, t, xt, eta=0.0).prev_sample
            else:
                xt = scheduler.step(eps, t, xt, generator=step_gen).prev_sample
        out[start:stop] = to_uint8(xt)
    return out, labels
