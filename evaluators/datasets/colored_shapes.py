"""A generated fine-grained set of 100 classes, the CIFAR-100 / miniImageNet analog of the offline world: each
class is a colour and a shape ("red circle"), so its prompt lists 100 labels and telling classes apart takes both
what the `colors` set and what the `shapes` set teach."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from evaluators.datasets import colors, shapes
from evaluators.datasets.generated import generated_split
from evaluators.datasets.raw import RawSplit

CLASSES = tuple(f"{colour} {shape}" for colour in colors.NAMES for shape in shapes.SHAPES)
PER_CLASS = {"train": 30, "test": 6}
GAP = 100  # luminance gap between the shape and its grey background, out of 255


def _background(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A neutral grey far from the shape's luminance, so the only colour in the image is the one named."""
    luminance = float(np.dot(colour, (0.299, 0.587, 0.114)))
    level = rng.uniform(min(255, luminance + GAP), 255) if luminance < 128 else rng.uniform(0, max(0, luminance - GAP))
    return (int(level),) * 3


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    """One 32x32 RGB image of the shape in `name`, painted a shade of the colour in `name`."""
    colour_name, shape = name.split(" ")
    colour = colors.shade(colour_name, rng)
    background = _background(colour, rng)
    side = shapes.SIZE * shapes.SCALE
    image = Image.new("RGB", (side, side), background)
    shapes.outline(ImageDraw.Draw(image), shape, side, colour, background, rng)
    return image.resize((shapes.SIZE, shapes.SIZE), Image.Resampling.LANCZOS)


def generate(split: str) -> RawSplit:
    return generated_split(draw, CLASSES, "colored_shapes", PER_CLASS[split], split)
