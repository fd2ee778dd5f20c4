"""A small DCGAN on images: MAD's GAN family, with its sampling bias as truncation in latent space.

Generator: ``z ~ N(0, I_latent)`` -> a linear layer to a (4w, H/4, W/4) map -> two
nearest-neighbour upsamplings with 3x3 convolutions (batch norm, ReLU) -> ``tanh`` to [-1, 1].
Discriminator: two stride-2 convolutions (LeakyReLU) and a linear logit. Trained with the
non-saturating logistic loss and Adam (beta1 = 0.5), one discriminator step per generator step,
on images scaled to [-1, 1]; H and W must be divisible by 4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
Unconditional: labels are ignored and samples carry none.

MAD's bias lambda (``sample.bias``) is the truncation psi of StyleGAN as MAD's Figure 1 uses it,
``w' = w_avg + psi (w - w_avg)``, applied to the latent: without a mapping network the average
latent is 0, so samples are ``G(psi z)``: psi < 1 trades diversity for quality.

State: the generator under ``gen.*`` (what sampling needs) and the discriminator under ``disc.*``
(so ``train.init=previous`` fine-tunes both), flat CPU tensors.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from mad import seeding
from mad.config import ModelConfig, SampleConfig, TrainConfig
from mad.pixels import resolve_device, to_uint8, to_unit_range
from mad.progress import progress_bar
from mad.models.training import index_batches, sub_state


class Generator(nn.Module):
    def __init__(self, latent_dim: int, width: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        self.base = (4 * width, h // 4, w // 4)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 4 * width * (h // 4) * (w // 4)), nn.ReLU())
        self.net = nn.Sequential(
            nn.BatchNorm2d(4 * width),
            nn.Upsample(scale_factor=2), nn.Conv2d(4 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], *self.base))


class Discriminator(nn.Module):
    def __init__(self, width: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * ((h + 3) // 4) * ((w + 3) // 4), 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _check_shape(shape: tuple) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in shape)
    if h % 4 or w % 4:
        raise ValueError(f"gan needs image sides divisible by 4, got {h}x{w}; set data.resolution")
    return c, h, w


def train(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig, train: TrainConfig,
          seed: int, init_state: Optional[dict[str, torch.Tensor]] = None, progress: bool = False,
          device: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Train G and D on uint8 NCHW images ``x`` for ``train.steps`` steps; labels are ignored."""
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) == 0:
        raise ValueError(f"gan needs uint8 NCHW images, got dtype {x.dtype} and shape {x.shape}")
    shape = _check_shape(x.shape[1:])
    cfg = model.gan
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_seed64(seed, 0))
        g, d = Generator(cfg.latent_dim, cfg.width, shape), Discriminator(cfg.width, shape)
    if init_state is not None:
        g.load_state_dict(sub_state(init_state, "gen."))
        d.load_state_dict(sub_state(init_state, "disc."))
    g.to(dev).train()
    d.to(dev).train()
    opt_g = torch.optim.Adam(g.parameters(), lr=train.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=train.lr, betas=(0.5, 0.999))
    data = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    batches = index_batches(len(x), train.batch_size, torch.Generator().manual_seed(seeding.derive_seed64(seed, 1)))
    gen = torch.Generator(device=dev).manual_seed(seeding.derive_seed64(seed, 2))
    for _ in progress_bar(range(train.steps), "train", progress):
        real = to_unit_range(data[next(batches).to(dev)])
        z = torch.randn((real.shape[0], cfg.latent_dim), generator=gen, device=dev)
        fake = g(z)
        # D: real -> 1, fake -> 0;  G: the non-saturating loss -log D(G(z))
        loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-d(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    state = {f"gen.{k}": v.detach().to("cpu").contiguous() for k, v in g.state_dict().items()}
    state.update({f"disc.{k}": v.detach().to("cpu").contiguous() for k, v in d.state_dict().items()})
    return state


@torch.no_grad()
def sample(state: dict[str, torch.Tensor], n: int, num_classes: int, image_shape: tuple, model: ModelConfig,
           sample: SampleConfig, seed: int, class_probs=None, progress: bool = False,
           device: Optional[str] = None) -> tuple[np.ndarray, None]:
    """``n`` uint8 NCHW images ``G(psi z)`` with psi = lambda = ``sample.bias``; no labels."""
    if not (0.0 < sample.bias <= 1.0):
        raise ValueError(f"sample.bias must be in (0, 1], got {sample.bias}")
    shape = _check_shape(image_shape)
    cfg = model.gan
    dev = resolve_device(device)
    g = Generator(cfg.latent_dim, cfg.width, shape)
    g.load_state_dict(sub_state(state, "gen."))
    g.to(dev).eval()  # batch norm in inference mode: a sample does not depend on its batch mates
    latent_gen = torch.Generator().manual_seed(seeding.derive_seed64(seed, 1))
    out = np.empty((n, *shape), dtype=np.uint8)
    for start in progress_bar(range(0, n, sample.batch_size), "sample", progress):
        stop = min(start + sample.batch_size, n)
        z = torch.randn((stop - start, cfg.latent_dim), generator=latent_gen) * sample.bias
        out[start:stop] = to_uint8(g(z.to(dev)))
    return out, None
