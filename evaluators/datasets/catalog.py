"""The datasets EMT knows by name: the paper's four (on the HF hub) and an offline world shaped like them.

Offline: `digits` (real handwriting, the MNIST analog), `shapes` (10 objects, the CIFAR-10 analog),
`colored_shapes` (100 fine-grained classes with a long label list, the CIFAR-100 / miniImageNet analog) and
`colors` (10 colours, one more RGB set to forget on).
"""
from __future__ import annotations

from evaluators import classnames
from evaluators.datasets import colored_shapes, colors, digits, shapes
from evaluators.datasets.spec import DatasetSpec
from serving.registry import Registry

DATASETS: Registry[DatasetSpec] = Registry("dataset")

for _spec in (
    DatasetSpec(
        name="mnist",
        classes=classnames.MNIST,
        kind="number",
        description="MNIST handwritten digits, 28x28 grayscale (60k train / 10k test).",
        hub_id="ylecun/mnist",
    ),
    DatasetSpec(
        name="cifar10",
        classes=classnames.CIFAR10,
        kind="object",
        description="CIFAR-10, 32x32 colour photos of 10 objects (50k train / 10k test).",
        hub_id="uoft-cs/cifar10",
        image_column="img",
    ),
    DatasetSpec(
        name="cifar100",
        classes=classnames.CIFAR100,
        kind="object",
        description="CIFAR-100 fine labels, 32x32 colour photos of 100 objects (50k train / 10k test).",
        hub_id="uoft-cs/cifar100",
        image_column="img",
        label_column="fine_label",
    ),
    DatasetSpec(
        name="miniimagenet",
        classes=classnames.MINIIMAGENET,
        kind="object",
        description="miniImageNet, 100 ImageNet classes at full resolution (50k train / 10k validation / 5k test).",
        hub_id="timm/mini-imagenet",
        splits={"train": "train", "validation": "validation", "test": "test"},
        synsets=tuple(synset for synset, _ in classnames.MINIIMAGENET_SYNSETS),
        sort_prompt_labels=True,
    ),
    DatasetSpec(
        name="digits",
        classes=classnames.MNIST,
        kind="number",
        description="scikit-learn's 1797 8x8 digits upscaled to MNIST-like 28x28 PNGs, fixed 80/20 split (offline).",
        generate=digits.generate,
    ),
    DatasetSpec(
        name="shapes",
        classes=shapes.SHAPES,
        kind="object",
        description=(
            f"Generated 32x32 RGB shapes, {len(shapes.SHAPES)} classes, "
            f"{shapes.PER_CLASS['train']}/{shapes.PER_CLASS['test']} per class in train/test (offline)."
        ),
        generate=shapes.generate,
    ),
    DatasetSpec(
        name="colors",
        classes=colors.NAMES,
        kind="object",
        description=(
            f"Generated 32x32 colour swatches, {len(colors.NAMES)} colours, "
            f"{colors.PER_CLASS['train']}/{colors.PER_CLASS['test']} per class in train/test (offline)."
        ),
        generate=colors.generate,
    ),
    DatasetSpec(
        name="colored_shapes",
        classes=colored_shapes.CLASSES,
        kind="object",
        description=(
            f"Generated 32x32 RGB shapes named by colour and shape, {len(colored_shapes.CLASSES)} classes, "
            f"{colored_shapes.PER_CLASS['train']}/{colored_shapes.PER_CLASS['test']} per class in train/test (offline)."
        ),
        generate=colored_shapes.generate,
    ),
):
    DATASETS.register(_spec.name, _spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as `name`; UnknownNameError with a did-you-mean otherwise."""
    return DATASETS.get(name)


def describe() -> list[dict]:
    """One row per dataset for `emt datasets`: name, kind, class count, default source, description."""
    return [
        {
            "name": spec.name,
            "kind": spec.kind,
            "classes": len(spec.classes),
            "source": spec.hub_id or "generated offline",
            "description": spec.description,
        }
        for spec in map(get_spec, DATASETS.names())
    ]
