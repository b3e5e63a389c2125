"""Generated inputs that are not frontal chest X-rays, to measure the out-of-distribution guard.

Seeded and built from nothing but numpy and PIL, so the measurement needs no outside data: noise,
flat images, gradients, natural-image-like textures (1/f noise), cartoon shapes, rendered text,
and real X-rays turned into something else (inverted, rotated).
"""

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_WORDS = ("invoice", "total", "patient", "report", "meeting", "Tuesday", "pneumonia", "lorem", "ipsum", "2026",
          "chest", "window", "coffee", "table", "summary", "page", "order", "number")


def _uint8(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return ((array - low) / max(high - low, 1e-9) * 255).astype(np.uint8)


def _uniform_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _gaussian_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(10, 60), (size, size)), 0, 255).astype(np.uint8)


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.full((size, size), rng.integers(0, 256), dtype=np.uint8)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        return _uint8(np.cos(angle) * xx + np.sin(angle) * yy)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    return _uint8(-np.hypot(xx - cx, yy - cy))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """1/f^beta noise: the power spectrum of natural images (clouds, foliage, rock)."""
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / np.maximum(
        frequency, 1 / size) ** rng.uniform(0.8, 1.6)
    return _uint8(np.real(np.fft.ifft2(spectrum)))


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 12)):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = x0 + rng.integers(size // 10, size // 2), y0 + rng.integers(size // 10, size // 2)
        box = (int(x0), int(y0), int(x1), int(y1))
        shade = int(rng.integers(0, 256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=shade)
    return np.asarray(image)


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    dark = rng.random() < 0.5
    image = Image.new("L", (size, size), 20 if dark else 235)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.05, 0.09))))
    y = int(size * 0.05)
    while y < size * 0.9:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
        draw.text((int(size * 0.05), y), line, fill=235 if dark else 20, font=font)
        y += int(size * rng.uniform(0.08, 0.14))
    return np.asarray(image)


GENERATED: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "uniform noise": _uniform_noise, "gaussian noise": _gaussian_noise, "flat": _flat, "gradient": _gradient,
    "texture (1/f)": _texture, "shapes": _shapes, "text": _text,
}


def probe_images(xrays: np.ndarray, per_kind: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """{kind: uint8 images (n, S, S)}; `xrays` (N, S, S) are real X-rays to invert and rotate."""
    size = xrays.shape[-1]
    rng = np.random.default_rng(seed)
    probes = {kind: np.stack([make(rng, size) for _ in range(per_kind)]) for kind, make in GENERATED.items()}
    chosen = xrays[rng.choice(len(xrays), size=min(per_kind, len(xrays)), replace=False)]
    probes["inverted X-ray"] = 255 - chosen
    probes["rotated X-ray (90/180/270)"] = np.stack([np.rot90(x, k=int(k)) for x, k in
                                                     zip(chosen, rng.integers(1, 4, len(chosen)), strict=True)])
    return probes
