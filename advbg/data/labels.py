"""Label spaces: the nine ImageNet-9 classes and the reference ImageNet-1k -> IN-9 map."""
from __future__ import annotations

import re

import numpy as np

from advbg.errors import AdvbgError

IN9_CLASSES: tuple[str, ...] = (
    "dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument", "primate", "fish",
)
# Folder names of the released data (index = sorted folder order; note the spaces).
IN9_FOLDERS: tuple[str, ...] = (
    "00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
    "06_musical instrument", "07_primate", "08_fish",
)


def _r(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


# ImageNet-1k indices per IN-9 class (370 of 1000; the rest map to "none").
IN9_IMAGENET_INDICES: dict[str, list[int]] = {
    "dog": _r(151, 170) + _r(173, 268),
    "bird": _r(7, 24) + _r(87, 100) + _r(127, 146),
    "vehicle": [407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612, 627,
                656, 661, 665, 670, 671, 675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817, 820, 829,
                847, 864, 866, 867, 870, 880],
    "reptile": _r(33, 68),
    "carnivore": _r(269, 280) + _r(286, 299) + _r(356, 362) + [387, 388],
    "insect": _r(300, 326),
    "instrument": [401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642,
                   683, 684, 687, 699, 776, 822, 875, 881, 889],
    "primate": _r(365, 384),
    "fish": _r(0, 6) + _r(389, 397),
}

UNMAPPED = -1


def imagenet_to_in9() -> np.ndarray:
    """int64[1000]: the IN-9 index of each ImageNet-1k class, or -1 (unmapped: always a wrong answer)."""
    table = np.full(1000, UNMAPPED, dtype=np.int64)
    for k, name in enumerate(IN9_CLASSES):
        table[IN9_IMAGENET_INDICES[name]] = k
    return table


def class_slug(name: str) -> str:
    """A class name as a file or folder name: lower case, each run of characters other than letters and digits
    one '_' ("wheeled vehicle" -> "wheeled_vehicle"); never empty, never a path."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "class"


def class_index(name_or_index: str | int, class_names: tuple[str, ...] | list[str]) -> int:
    """Resolve a class given by name (case-insensitive, IN-9 folder names accepted) or index."""

    names = [n.lower() for n in class_names]
    s = str(name_or_index).strip().lower()
    if s.isdigit() and int(s) < len(names):
        return int(s)
    for cand in (s, s.split("_", 1)[-1]):
        if cand in names:
            return names.index(cand)
    raise AdvbgError(f"unknown class {name_or_index!r}; known classes: {', '.join(class_names)}")
