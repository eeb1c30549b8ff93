"""A generated offline RGB dataset of ten shapes, the CIFAR-10 analog of the offline world: ten object classes
in random colours, sizes, positions and tilts, so the object-prompt path runs with no download.

Rows are drawn on demand by `evaluators.datasets.generated`; `outline` is shared with the 100-class
`colored_shapes` set, which names a shape and its colour.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from evaluators.datasets.generated import generated_split
from evaluators.datasets.raw import RawSplit

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "arrow")
PER_CLASS = {"train": 200, "test": 50}
SIZE = 32
SCALE = 4  # drawn 4x larger, then downsampled: smooth edges at 32x32
MIN_CONTRAST = 120  # luminance gap between shape and background, out of 255

Point = tuple[float, float]


def _polygon(cx: float, cy: float, radii: list[float], rotation: float) -> list[Point]:
    """One vertex per entry of `radii`, evenly spaced in angle from the top (equal radii: a regular polygon)."""
    n = len(radii)
    return [
        (cx + radius * math.sin(rotation + 2 * math.pi * k / n), cy - radius * math.cos(rotation + 2 * math.pi * k / n))
        for k, radius in enumerate(radii)
    ]


def _luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A random background and a random shape colour that stands out from it."""
    while True:
        background, shape = rng.integers(0, 256, size=(2, 3))
        if abs(_luminance(background) - _luminance(shape)) >= MIN_CONTRAST:
            return tuple(int(v) for v in background), tuple(int(v) for v in shape)


def outline(pen: ImageDraw.ImageDraw, name: str, side: int, colour, background, rng: np.random.Generator) -> None:
    """Draw shape `name` in `colour` over `background` with a random size, position and (where the name survives
    it) tilt, on a square canvas of `side` pixels."""
    r = rng.uniform(0.3, 0.44) * side
    cx, cy = side / 2 + rng.uniform(-1, 1, size=2) * min(0.12 * side, side / 2 - r - 2)
    tilt = rng.uniform(-0.3, 0.3)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        pen.ellipse(box, fill=colour)
    elif name == "ring":
        inner = r * rng.uniform(0.5, 0.7)
        pen.ellipse(box, fill=colour)
        pen.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=background)
    elif name == "crescent":
        pen.ellipse(box, fill=colour)
        dx, dy = r * 0.55 * np.array([np.cos(tilt * 10), np.sin(tilt * 10)])
        pen.ellipse((cx - r + dx, cy - r + dy, cx + r + dx, cy + r + dy), fill=background)
    elif name == "square":
        h = r * 0.8
        pen.rectangle((cx - h, cy - h, cx + h, cy + h), fill=colour)
    elif name == "diamond":
        pen.polygon(_polygon(cx, cy, [r, r * 0.7] * 2, 0.0), fill=colour)
    elif name == "triangle":
        pen.polygon(_polygon(cx, cy, [r] * 3, tilt), fill=colour)
    elif name == "hexagon":
        pen.polygon(_polygon(cx, cy, [r] * 6, tilt), fill=colour)
    elif name == "star":
        pen.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, tilt), fill=colour)
    elif name == "cross":
        arm = r * rng.uniform(0.25, 0.35)
        pen.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=colour)
        pen.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=colour)
    elif name == "arrow":  # a head and a shaft, pointing any way
        angle = rng.uniform(0, 2 * math.pi)
        u, v = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        centre, w = np.array([cx, cy]), r * 0.22
        points = [(-r, -w), (0.1 * r, -w), (0.1 * r, -2.4 * w), (r, 0.0), (0.1 * r, 2.4 * w), (0.1 * r, w), (-r, w)]
        pen.polygon([tuple(centre + a * u + b * v) for a, b in points], fill=colour)
    else:
        raise ValueError(f"no drawing for shape '{name}'")


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    """One 32x32 RGB image of shape `name` in a random colour that stands out from a random background."""
    side = SIZE * SCALE
    background, colour = _colours(rng)
    image = Image.new("RGB", (side, side), background)
    outline(ImageDraw.Draw(image), name, side, colour, background, rng)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def generate(split: str) -> RawSplit:
    """The shapes split `split`: PER_CLASS[split] images of every shape."""
    return generated_split(draw, SHAPES, "", PER_CLASS[split], split)
