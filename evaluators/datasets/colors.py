"""A generated offline dataset of colour swatches: a third offline eval set, so forgetting can be measured on
more datasets than a tiny experiment trains on, with no download."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from evaluators.datasets.generated import generated_split
from evaluators.datasets.raw import RawSplit

# name -> (hue in turns or None for achromatic, lightness, saturation)
COLORS = {
    "red": (0.0, 0.5, 0.85), "orange": (0.08, 0.55, 0.9), "yellow": (0.16, 0.55, 0.9), "green": (0.33, 0.4, 0.7),
    "blue": (0.62, 0.45, 0.8), "purple": (0.78, 0.4, 0.6), "pink": (0.92, 0.75, 0.7), "brown": (0.07, 0.3, 0.55),
    "black": (None, 0.08, 0.0), "white": (None, 0.94, 0.0),
}
NAMES = tuple(COLORS)
PER_CLASS = {"train": 100, "test": 40}
SIZE = 32


def shade(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    hue, light, sat = COLORS[name]
    h = (hue if hue is not None else 0.0) + rng.uniform(-0.02, 0.02)
    rgb = colorsys.hls_to_rgb(h % 1.0, np.clip(light + rng.uniform(-0.06, 0.06), 0, 1),
                              np.clip(sat + rng.uniform(-0.1, 0.1), 0, 1) if hue is not None else 0.0)
    return tuple(int(round(255 * c)) for c in rgb)


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    """A swatch of `name` with a blurred blob of a shade of the same colour and pixel noise."""
    base = shade(name, rng)
    image = Image.new("RGB", (SIZE, SIZE), base)
    r = rng.uniform(6, 12)
    cx, cy = rng.uniform(r, SIZE - r, size=2)
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=shade(name, rng))
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.int16) + rng.integers(-8, 9, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def generate(split: str) -> RawSplit:
    return generated_split(draw, NAMES, "colors", PER_CLASS[split], split)
