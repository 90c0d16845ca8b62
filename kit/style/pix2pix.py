"""pix2pix (Isola et al. 2017) as nucleAIzer used it: nucleus layout → image of one style cluster.

nucleAIzer (Hollandi et al. 2020; see docs/references.md) trains one generator per style cluster.

- `Generator`: U-Net, `depth` stride-2 4×4 convolutions down and transposed convolutions up with skip
  connections, dropout in the innermost decoder blocks, tanh output. Input: the 3-channel
  `kit.style.layouts.condition_image` scaled to [-1, 1]; output: C channels in [-1, 1].
- `PatchDiscriminator`: a PatchGAN that scores overlapping patches of (condition, image) pairs.
- Loss: generator = adversarial (BCE on patch logits) + `l1_weight` × L1 to the real image;
  discriminator = mean of BCE on real and on generated pairs (Adam, lr 2e-4, betas (0.5, 0.999)).

GroupNorm replaces pix2pix's BatchNorm, so a generator behaves the same in train and eval mode and
for any batch size. Images are normalised with `kit.data.normalize.normalize_image` before training,
as every kit model input is; `render` returns such a uint8 image.

A generator is saved in kit's one checkpoint format (`kit.models.checkpoint`): `save_generator` and
`load_generator` are `save_checkpoint` / `load_checkpoint` with the fit's `Pix2PixConfig` as config and
the caller's metadata as extra. The generator is not in the model registry, whose models are
segmentation models (a task, target channels, an encoder); it carries the same ``kit_cfg`` and rebuilds
through its own `create_generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.data.torch_dataset import random_crop
from kit.errors import ConfigError, DataError, KitError
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.style.layouts import condition_image, dihedral
from kit.visualize import save_png

CONDITION_CHANNELS = 3
GENERATOR_NAME = "pix2pix_generator"  # `model_name` of a generator checkpoint


@dataclass
class Pix2PixConfig:
    """Architecture and optimisation of one fit (the architecture part is stored with the generator)."""

    channels: int = 1
    base_channels: int = 32
    depth: int = 5
    disc_layers: int = 3
    crop: int = 128
    batch_size: int = 4
    steps: int = 1000
    lr: float = 2e-4
    l1_weight: float = 100.0
    log_every: int = 25
    sample_every: int = 250

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"pix2pix channels must be 1 or 3, got {self.channels}")
        if self.crop % 2**self.depth:
            raise ConfigError(f"pix2pix crop {self.crop} must be a multiple of 2**depth = {2**self.depth}")
        if min(self.base_channels, self.depth, self.disc_layers, self.batch_size, self.steps) < 1:
            raise ConfigError("pix2pix base_channels, depth, disc_layers, batch_size and steps must be >= 1")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class Generator(nn.Module):
    """U-Net generator: (N, 3, H, W) condition in [-1, 1] → (N, out_channels, H, W) in [-1, 1]; H and W
    must be multiples of 2**depth."""

    def __init__(self, out_channels: int = 1, base_channels: int = 32, depth: int = 5) -> None:
        super().__init__()
        self.kit_cfg = {
            "model_name": GENERATOR_NAME,
            "model_kwargs": {"out_channels": out_channels, "base_channels": base_channels, "depth": depth},
        }
        widths = [base_channels * min(2**i, 8) for i in range(depth)]
        self.multiple = 2**depth
        self.down = nn.ModuleList()
        previous = CONDITION_CHANNELS
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(previous, width, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(_norm(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            previous = width
        self.up = nn.ModuleList()
        for i in reversed(range(1, depth)):
            skip = 1 if i == depth - 1 else 2  # the innermost block has no skip concatenated yet
            layers = [
                nn.ConvTranspose2d(widths[i] * skip, widths[i - 1], 4, 2, 1, bias=False),
                _norm(widths[i - 1]),
            ]
            if i >= depth - 2 and depth > 2:
                layers.append(nn.Dropout(0.5))
            layers.append(nn.ReLU(inplace=True))
            self.up.append(nn.Sequential(*layers))
        self.head = nn.Sequential(
            nn.ConvTranspose2d(widths[0] * (2 if depth > 1 else 1), out_channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        skips = []
        x = condition
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.head(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (condition, image) pair → (N, 1, h, w) real/fake logits, one per overlapping patch."""

    def __init__(self, image_channels: int = 1, base_channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(CONDITION_CHANNELS + image_channels, base_channels, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for i in range(1, layers + 1):
            out = base_channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [
                nn.Conv2d(width, out, 4, stride, 1, bias=False),
                _norm(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))


@dataclass
class Pix2PixResult:
    """A finished fit: the two networks, the config and the logged losses (one dict per log step)."""

    generator: Generator
    discriminator: PatchDiscriminator
    config: Pix2PixConfig
    history: list[dict[str, float]] = field(default_factory=list)


def crop_batch(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], size: int, n: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random (condition, image) crops of `size`² with random flips/rotations, both in [-1, 1]:
    (n, 3, size, size) and (n, C, size, size). `pairs` hold uint8 H×W×C images and H×W label images."""
    conditions, images = [], []
    for _ in range(n):
        image, labels = pairs[int(rng.integers(len(pairs)))]
        image, labels = random_crop(image, labels, size, rng)
        element = int(rng.integers(8))
        conditions.append(condition_image(dihedral(labels, element)))
        images.append(dihedral(image, element).astype(np.float32) / 255.0)
    return _to_tensor(np.stack(conditions)), _to_tensor(np.stack(images))


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) float in [0, 1] → (N, C, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).mul_(2.0).sub_(1.0)


def train_pix2pix(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    config: Pix2PixConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_sample: Callable[[int, Generator], None] | None = None,
) -> Pix2PixResult:
    """Fit a generator/discriminator pair on (image uint8 H×W×C, labels H×W) pairs of one style.

    Every `config.log_every` steps `on_log(step, losses)` gets the mean ``loss_d``, ``loss_g_adv`` and
    ``loss_g_l1`` since the last log; every `config.sample_every` steps (and after the last)
    `on_sample(step, generator)` may render previews (the generator is in eval mode during the call).
    """
    if not pairs:
        raise DataError("pix2pix needs at least one (image, labels) pair")
    bad = [
        img.shape
        for img, _ in pairs
        if img.ndim != 3 or img.shape[2] != config.channels or img.dtype != np.uint8
    ]
    if bad:
        raise DataError(f"pix2pix images must be uint8 H×W×{config.channels}, got shape {bad[0]}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = Generator(config.channels, config.base_channels, config.depth).to(device)
    discriminator = PatchDiscriminator(config.channels, config.base_channels, config.disc_layers).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    result = Pix2PixResult(generator, discriminator, config)
    sums = {"loss_d": 0.0, "loss_g_adv": 0.0, "loss_g_l1": 0.0}
    for step in range(1, config.steps + 1):
        condition, real = (t.to(device) for t in crop_batch(pairs, config.crop, config.batch_size, rng))
        fake = generator(condition)

        real_logits = discriminator(condition, real)
        fake_logits = discriminator(condition, fake.detach())
        loss_d = 0.5 * (
            bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        fooled = discriminator(condition, fake)
        loss_adv = bce(fooled, torch.ones_like(fooled))
        loss_l1 = (fake - real).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        (loss_adv + config.l1_weight * loss_l1).backward()
        opt_g.step()

        for key, value in zip(sums, (loss_d, loss_adv, loss_l1), strict=True):
            sums[key] += float(value.detach())
        if step % config.log_every == 0 or step == config.steps:
            count = step - (result.history[-1]["step"] if result.history else 0)
            record = {key: value / count for key, value in sums.items()}
            result.history.append({"step": step, **record})
            sums = dict.fromkeys(sums, 0.0)
            if on_log is not None:
                on_log(step, record)
        if on_sample is not None and (step % config.sample_every == 0 or step == config.steps):
            generator.eval()
            on_sample(step, generator)
            generator.train()
    generator.eval()
    return result


@torch.no_grad()
def render(generator: Generator, labels: np.ndarray) -> np.ndarray:
    """uint8 H×W×C image that `generator` draws for an H×W label image (any size; padded internally)."""
    labels = np.asarray(labels)
    height, width = labels.shape
    multiple = generator.multiple
    padded = np.pad(labels, ((0, -height % multiple), (0, -width % multiple)))
    device = next(generator.parameters()).device
    condition = _to_tensor(condition_image(padded)[None]).to(device)
    was_training = generator.training
    generator.eval()
    out = generator(condition)[0, :, :height, :width]
    generator.train(was_training)
    unit = (out.permute(1, 2, 0).cpu().numpy() + 1.0) / 2.0
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def sample_grid(
    generator: Generator, pairs: Sequence[tuple[np.ndarray, np.ndarray]], path: str | Path
) -> Path:
    """PNG with one row per (image, labels) pair: condition image, real image, generated image (real and
    generated on the same intensity scale, as the model sees them)."""
    rows = []
    for image, labels in pairs:
        condition = (condition_image(labels) * 255).astype(np.uint8)
        real, fake = (np.broadcast_to(x, (*x.shape[:2], 3)) for x in (image, render(generator, labels)))
        rows.append(np.concatenate([condition, real, fake], axis=1))
    return save_png(path, np.concatenate(rows, axis=0))


def create_generator(name: str, **kwargs: Any) -> Generator:
    """The `Generator` a checkpoint names (``model_name`` `GENERATOR_NAME`, ``model_kwargs`` its
    arguments): the ``create`` of `load_checkpoint` for generators. `KitError` for any other model."""
    if name != GENERATOR_NAME:
        raise KitError(f"it holds model {name!r}, not {GENERATOR_NAME!r}")
    try:
        return Generator(**kwargs)
    except TypeError as error:
        raise KitError(f"bad generator arguments {kwargs} ({error})") from None


def save_generator(generator: Generator, config: Pix2PixConfig, path: str | Path, **meta: Any) -> Path:
    """Write the generator as a kit checkpoint: its weights, `config` as the checkpoint's config and
    `meta` (e.g. style, dataset; plain values) as its extra."""
    return save_checkpoint(path, generator, asdict(config), meta)


def load_generator(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    """(generator in eval mode, meta) from a `save_generator` file; `DataError` if it is not one."""
    try:
        generator, _, meta = load_checkpoint(path, map_location, create=create_generator)
    except KitError as error:
        raise DataError(f"{path}: not a kit pix2pix generator ({error})") from None
    return generator, dict(meta)
