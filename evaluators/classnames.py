"""Class names of the four EMT datasets, in the label-index order of their standard HF hub parquet datasets.

Kept here, not read from the datasets, so that prompts and judges work without downloading anything and a
label index always means the same class: MNIST `ylecun/mnist`, CIFAR-10 `uoft-cs/cifar10`, CIFAR-100
`uoft-cs/cifar100` (fine labels, the original `meta` order, which is alphabetical) and miniImageNet
`timm/mini-imagenet`.
"""
from __future__ import annotations

MNIST: tuple[str, ...] = tuple(str(d) for d in range(10))

CIFAR10: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

CIFAR100: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# Ravi & Larochelle (2017) split: 64 train + 16 val + 20 test classes. `timm/mini-imagenet` names its ClassLabel
# by synset id in sorted synset order (checked against its dataset card), so that is the label order here.
MINIIMAGENET_SYNSETS: tuple[tuple[str, str], ...] = (
    ("n01532829", "house_finch"), ("n01558993", "robin"), ("n01704323", "triceratops"),
    ("n01749939", "green_mamba"), ("n01770081", "harvestman"), ("n01843383", "toucan"),
    ("n01855672", "goose"), ("n01910747", "jellyfish"), ("n01930112", "nematode"),
    ("n01981276", "king_crab"), ("n02074367", "dugong"), ("n02089867", "Walker_hound"),
    ("n02091244", "Ibizan_hound"), ("n02091831", "Saluki"), ("n02099601", "golden_retriever"),
    ("n02101006", "Gordon_setter"), ("n02105505", "komondor"), ("n02108089", "boxer"),
    ("n02108551", "Tibetan_mastiff"), ("n02108915", "French_bulldog"), ("n02110063", "malamute"),
    ("n02110341", "dalmatian"), ("n02111277", "Newfoundland"), ("n02113712", "miniature_poodle"),
    ("n02114548", "white_wolf"), ("n02116738", "African_hunting_dog"), ("n02120079", "Arctic_fox"),
    ("n02129165", "lion"), ("n02138441", "meerkat"), ("n02165456", "ladybug"),
    ("n02174001", "rhinoceros_beetle"), ("n02219486", "ant"), ("n02443484", "black-footed_ferret"),
    ("n02457408", "three-toed_sloth"), ("n02606052", "rock_beauty"), ("n02687172", "aircraft_carrier"),
    ("n02747177", "ashcan"), ("n02795169", "barrel"), ("n02823428", "beer_bottle"),
    ("n02871525", "bookshop"), ("n02950826", "cannon"), ("n02966193", "carousel"),
    ("n02971356", "carton"), ("n02981792", "catamaran"), ("n03017168", "chime"),
    ("n03047690", "clog"), ("n03062245", "cocktail_shaker"), ("n03075370", "combination_lock"),
    ("n03127925", "crate"), ("n03146219", "cuirass"), ("n03207743", "dishrag"),
    ("n03220513", "dome"), ("n03272010", "electric_guitar"), ("n03337140", "file"),
    ("n03347037", "fire_screen"), ("n03400231", "frying_pan"), ("n03417042", "garbage_truck"),
    ("n03476684", "hair_slide"), ("n03527444", "holster"), ("n03535780", "horizontal_bar"),
    ("n03544143", "hourglass"), ("n03584254", "iPod"), ("n03676483", "lipstick"),
    ("n03770439", "miniskirt"), ("n03773504", "missile"), ("n03775546", "mixing_bowl"),
    ("n03838899", "oboe"), ("n03854065", "organ"), ("n03888605", "parallel_bars"),
    ("n03908618", "pencil_box"), ("n03924679", "photocopier"), ("n03980874", "poncho"),
    ("n03998194", "prayer_rug"), ("n04067472", "reel"), ("n04146614", "school_bus"),
    ("n04149813", "scoreboard"), ("n04243546", "slot"), ("n04251144", "snorkel"),
    ("n04258138", "solar_dish"), ("n04275548", "spider_web"), ("n04296562", "stage"),
    ("n04389033", "tank"), ("n04418357", "theater_curtain"), ("n04435653", "tile_roof"),
    ("n04443257", "tobacco_shop"), ("n04509417", "unicycle"), ("n04515003", "upright"),
    ("n04522168", "vase"), ("n04596742", "wok"), ("n04604644", "worm_fence"),
    ("n04612504", "yawl"), ("n06794110", "street_sign"), ("n07584110", "consomme"),
    ("n07613480", "trifle"), ("n07697537", "hotdog"), ("n07747607", "orange"),
    ("n09246464", "cliff"), ("n09256479", "coral_reef"), ("n13054560", "bolete"),
    ("n13133613", "ear"),
)
MINIIMAGENET: tuple[str, ...] = tuple(name for _, name in MINIIMAGENET_SYNSETS)


def _require_unique(dataset: str, values: tuple[str, ...], n: int) -> None:
    """Fail at import if a hand-typed list lost, doubled or mistyped an entry: every label index depends on it."""
    if len(values) != n or len(set(values)) != n:
        raise RuntimeError(
            f"{dataset} must list exactly {n} unique names, got {len(values)} ({len(set(values))} unique)"
        )


_require_unique("MNIST", MNIST, 10)
_require_unique("CIFAR-10", CIFAR10, 10)
_require_unique("CIFAR-100", CIFAR100, 100)
_require_unique("miniImageNet", MINIIMAGENET, 100)
_require_unique("miniImageNet synsets", tuple(s for s, _ in MINIIMAGENET_SYNSETS), 100)
if [s for s, _ in MINIIMAGENET_SYNSETS] != sorted(s for s, _ in MINIIMAGENET_SYNSETS):
    raise RuntimeError("miniImageNet synsets must be in sorted order, the label order of timm/mini-imagenet")
