"""Framing swaps: transforms of a film that change its framing and nothing a radiologist reads (issue 19).

In the Kermany training set pneumonia films are tightly framed with a large laterality marker and burnt-in
text, normal films wider with a small marker. A model that reads the framing flips its answer when a
normal film is zoomed in or given a big marker, or a pneumonia film is zoomed out onto a black border;
a model that reads the lungs does not. These swaps turn one's own validation films into that test, so no
other hospital's films are needed to see the shortcut (pneumoscan.evaluation.framing scores them).

Each swap maps uint8 films (N, 1, S, S) to uint8 films of the same shape, deterministically.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

ZOOM_IN_FACTORS = (1.15, 1.33, 1.5)  # applied to normal films: their specificity must hold
ZOOM_OUT_FACTORS = (0.85, 0.75)  # applied to pneumonia films, onto black: their sensitivity must hold
MARKER_TEXTS = ("PORTABLE", "AP SUPINE", "ERECT", "L", "R")  # burnt-in text pasted with the marker
NORMAL, PNEUMONIA = 0, 1


@dataclass(frozen=True)
class FramingSwap:
    """One swap: its family (zoom_in, zoom_out, marker), its factor, and the class whose films it changes."""

    name: str
    family: str
    factor: float
    target: int  # NORMAL: normals are swapped and their specificity measured; PNEUMONIA: sensitivity

    def apply(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if self.family == "zoom_in":
            return zoom_in(images, self.factor)
        if self.family == "zoom_out":
            return zoom_out(images, self.factor)
        if self.family == "marker":
            return paste_markers(images, seed)
        raise ValueError(f"unknown framing swap family '{self.family}'")


FRAMING_SWAPS: tuple[FramingSwap, ...] = (
    *(FramingSwap(f"zoom_in_{f:g}", "zoom_in", f, NORMAL) for f in ZOOM_IN_FACTORS),
    *(FramingSwap(f"zoom_out_{f:g}", "zoom_out", f, PNEUMONIA) for f in ZOOM_OUT_FACTORS),
    FramingSwap("marker", "marker", 1.0, NORMAL),
)
SWAP_FAMILIES = ("zoom_in", "zoom_out", "marker")


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def zoom_in(images: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre 1/factor of each side, resized back: the lungs fill more of the frame."""
    height, width = images.shape[-2:]
    top, left = round(height * (1 - 1 / factor) / 2), round(width * (1 - 1 / factor) / 2)
    centre = images[..., top:height - top, left:width - left]
    return _to_uint8(_resize(centre, (height, width)))


def zoom_out(images: torch.Tensor, factor: float, fill: int = 0) -> torch.Tensor:
    """The film shrunk to `factor` of each side and centred on a border of level `fill` (black by default): the
    lungs fill less of the frame."""
    height, width = images.shape[-2:]
    small_h, small_w = round(height * factor), round(width * factor)
    out = torch.full_like(images, fill)
    top, left = (height - small_h) // 2, (width - small_w) // 2
    out[..., top:top + small_h, left:left + small_w] = _to_uint8(_resize(images, (small_h, small_w)))
    return out


def paste_markers(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A large laterality marker ("R" or "L", 10-16 % of the side) in an upper corner and a line of burnt-in text
    near the top or bottom edge, white, as on the tightly framed films; positions drawn from `seed`."""
    rng = np.random.default_rng(seed)
    out = images.clone()
    side = images.shape[-1]
    for index in range(images.shape[0]):
        film = Image.fromarray(images[index, 0].numpy())
        draw = ImageDraw.Draw(film)
        marker = ImageFont.load_default(size=max(6, round(side * rng.uniform(0.10, 0.16))))
        x = side * (rng.uniform(0.03, 0.12) if rng.random() < 0.5 else rng.uniform(0.80, 0.88))
        draw.text((x, side * rng.uniform(0.03, 0.15)), str(rng.choice(["R", "L"])), fill=255, font=marker)
        text = ImageFont.load_default(size=max(5, round(side * 0.05)))
        y = side * (rng.uniform(0.02, 0.06) if rng.random() < 0.5 else rng.uniform(0.90, 0.93))
        draw.text((side * rng.uniform(0.25, 0.45), y), str(rng.choice(MARKER_TEXTS)), fill=255, font=text)
        out[index, 0] = torch.from_numpy(np.array(film))
    return out
