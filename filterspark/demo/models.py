"""Tiny CNNs, datasets and training loops for the demo zoo (see :mod:`filterspark.demo.zoo`).

Everything here is deterministic given a ``torch.manual_seed`` and a numpy
``Generator``; all modules are TorchScript-scriptable and ONNX-exportable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- modules


class PlainCNN(nn.Module):
    """3x3 conv stack (optionally a larger first kernel) + global pooling + linear head."""

    def __init__(self, in_ch: int, n_out: int, widths: tuple[int, ...] = (8, 16, 16, 32),
                 first_kernel: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_ch
        for i, w in enumerate(widths):
            k = first_kernel if i == 0 else 3
            layers += [nn.Conv2d(prev, w, k, padding=k // 2), nn.ReLU()]
            if i == len(widths) // 2 - 1:
                layers.append(nn.MaxPool2d(2))
            prev = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(prev, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class SepCNN(nn.Module):
    """3x3 stem, then depthwise 3x3 + pointwise 1x1 blocks (MobileNet style)."""

    def __init__(self, in_ch: int, n_out: int, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU()]
        w = width
        for b in range(blocks):
            layers += [nn.Conv2d(w, w, 3, padding=1, groups=w), nn.ReLU(),
                       nn.Conv2d(w, 2 * w if b == 0 else w, 1), nn.ReLU()]
            w = 2 * w if b == 0 else w
            if b == 0:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class LargeKernelCNN(nn.Module):
    """k x k nets without a 3x3 layer (ConvNeXt / MobileNet style): a k x k stem, a
    depthwise k x k + pointwise 1x1 block, a full k x k conv, global pooling, head."""

    def __init__(self, in_ch: int, n_out: int, k: int, width: int = 8) -> None:
        super().__init__()
        w, p = width, k // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, w, k, padding=p), nn.ReLU(),
            nn.Conv2d(w, w, k, padding=p, groups=w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, k, padding=p), nn.ReLU())
        self.head = nn.Linear(2 * w, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class BranchCNN(nn.Module):
    """Stem conv, two parallel 3x3 convs on the same input concatenated, head."""

    def __init__(self, in_ch: int, n_out: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, width, 3, padding=1)
        self.branch_a = nn.Conv2d(width, width, 3, padding=1)
        self.branch_b = nn.Conv2d(width, width, 3, padding=2, dilation=2)
        self.mix = nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2)
        self.head = nn.Linear(2 * width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(torch.cat([self.branch_a(h), self.branch_b(h)], dim=1))
        h = F.relu(self.mix(h))
        return self.head(h.mean(dim=(2, 3)))


class ConvAE(nn.Module):
    """Strided conv encoder and ConvTranspose2d decoder (input side must be divisible by 4)."""

    def __init__(self, in_ch: int, widths: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        a, b = widths
        self.encoder = nn.Sequential(
            nn.Conv2d(in_ch, a, 3, padding=1), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(b, b, 3, padding=1, stride=2), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(b, b, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(b, a, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.Conv2d(a, in_ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ResidualCNN(nn.Module):
    """DnCNN-style image-to-image net: predicts a residual added to the input."""

    def __init__(self, in_ch: int, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_ch
        for _ in range(depth - 1):
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU()]
            prev = width
        layers.append(nn.Conv2d(prev, in_ch, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Inputs ``x`` (N, C, H, W) float32, targets ``y`` (labels or images), split index."""

    x: torch.Tensor
    y: torch.Tensor
    n_train: int

    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[: self.n_train], self.y[: self.n_train]

    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[self.n_train:], self.y[self.n_train:]


def _split(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
           test_share: float = 0.2) -> Dataset:
    order = rng.permutation(len(x))
    xt = torch.from_numpy(np.ascontiguousarray(x[order], dtype=np.float32))
    yv = y[order]
    yt = torch.from_numpy(yv.astype(np.int64) if yv.ndim == 1 else
                          np.ascontiguousarray(yv, dtype=np.float32))
    return Dataset(xt, yt, int(round(len(x) * (1 - test_share))))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0)[:, None].astype(np.float32), d.target.astype(np.int64)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as (N, 1, 8, 8) in [0, 1] and labels (fresh copies)."""
    x, y = _digits()
    return x.copy(), y.copy()


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images
    return tuple(im.astype(np.float32) / 255.0 for im in load_sample_images().images)


def photo_patches(n: int, size: int, gray: bool,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random patches from the two sklearn sample photos; label = source photo."""
    imgs = _photos()
    src = rng.integers(0, len(imgs), n)
    out = np.empty((n, 1 if gray else 3, size, size), np.float32)
    for i, s in enumerate(src):
        im = imgs[s]
        r = rng.integers(0, im.shape[0] - size)
        c = rng.integers(0, im.shape[1] - size)
        p = im[r:r + size, c:c + size].transpose(2, 0, 1)
        out[i] = p.mean(0, keepdims=True) if gray else p
    return out, src.astype(np.int64)


def _draw_shape(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One gray image: 0 filled rectangle, 1 line, 2 circle outline."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size), np.float32)
    val = rng.uniform(0.5, 1.0)
    if kind == 0:
        r0, c0 = rng.integers(0, size - 4, 2)
        h, w = rng.integers(3, size - max(r0, c0) + 1, 2)
        img[r0:r0 + h, c0:c0 + w] = val
    elif kind == 1:
        p0, p1 = rng.uniform(0, size - 1, (2, 2))
        t = np.linspace(0.0, 1.0, 4 * size)[:, None]
        pts = np.rint(p0 + t * (p1 - p0)).astype(int)
        img[pts[:, 0], pts[:, 1]] = val
    else:
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        rad = rng.uniform(2.5, size * 0.4)
        d = np.hypot(yy - cy, xx - cx)
        img[np.abs(d - rad) < 0.7] = val
    return img


def shape_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Procedural 'synthetic shapes' images with a little noise and shape labels."""
    kinds = rng.integers(0, 3, n)
    x = np.stack([_draw_shape(int(k), size, rng) for k in kinds])[:, None]
    x += rng.normal(0.0, 0.05, x.shape).astype(np.float32)
    return x.astype(np.float32), kinds.astype(np.int64)


def classification_data(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Dataset:
    return _split(x, y, rng)


def reconstruction_data(clean: np.ndarray, rng: np.random.Generator,
                        corrupt: str = "none") -> Dataset:
    """Image-to-image pairs: ``corrupt`` is "none", "noise" (Gaussian) or "mask" (holes)."""
    x = clean.copy()
    if corrupt == "noise":
        x += rng.normal(0.0, 0.15, x.shape).astype(np.float32)
    elif corrupt == "mask":
        n, _, h, w = x.shape
        s = max(2, h // 4)
        rows, cols = rng.integers(0, h - s, n), rng.integers(0, w - s, n)
        for i in range(n):
            x[i, :, rows[i]:rows[i] + s, cols[i]:cols[i] + s] = 0.0
    return _split(x, clean, rng)


# --------------------------------------------------------------------------- training


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out, y) if y.dtype == torch.int64 else F.mse_loss(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> dict[str, float]:
    """Held-out loss, plus accuracy for classification data."""
    model.eval()
    x, y = data.test()
    out = model(x)
    if y.dtype == torch.int64:
        return {"test_loss": float(F.cross_entropy(out, y)),
                "test_accuracy": float((out.argmax(1) == y).float().mean())}
    return {"test_loss": float(F.mse_loss(out, y))}


def train(model: nn.Module, data: Dataset, epochs: int, lr: float = 5e-3,
          batch: int = 64, seed: int = 0) -> tuple[dict[str, float], torch.optim.Optimizer]:
    """Adam minibatch training; returns held-out metrics (before/after, seconds) and the
    optimizer (for checkpoint dicts)."""
    t0 = time.perf_counter()
    before = evaluate(model, data)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.train()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            _loss(model, x[idx], y[idx]).backward()
            opt.step()
    after = evaluate(model, data)
    metrics = {f"initial_{k}": v for k, v in before.items()}
    metrics.update(after)
    metrics.update(epochs=epochs, train_seconds=round(time.perf_counter() - t0, 3))
    return metrics, opt
