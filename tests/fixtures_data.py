"""Data the data tests draw themselves: the released IN-9 layout in miniature, drawn photos with boxes, stores.

Imported by tests/test_ingest.py, test_extract.py and test_variants.py (plain functions; the fixtures that use
them live in those modules).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from advbg.data import segment as segment
from advbg.data.labels import IN9_CLASSES, IN9_FOLDERS
from advbg.data.writer import write_store

SIZE = 32  # released images are 224x224; small ones keep the tests fast


def _photo(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """A photo: a noisy background of a random colour and a flat ellipse of another colour; (image, mask, box)."""
    base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    ax, ay = rng.integers(size // 6, size // 4, 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1, -1)
    img[mask > 0] = (255 - base).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    return img, mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _save_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", quality=95)


@dataclass
class Released:
    """A miniature release: ``root`` is its bg_challenge folder."""

    root: Path
    stems: list[str] = field(default_factory=list)     # in store order (class folder, then file name)
    labels: list[int] = field(default_factory=list)
    mixed_next_bg: dict[str, str] = field(default_factory=dict)   # fg stem -> true bg stem of mixed_next
    mixed_rand_bg: dict[str, str] = field(default_factory=dict)   # fg stem -> true bg stem of mixed_rand


def make_released(dest: Path, per_class: int = 2, size: int = SIZE, seed: int = 0) -> Released:
    """Write ``dest/bg_challenge`` in the exact released layout (class folders with spaces, .npy masks, JPEGs).

    Variants: original, fg_mask, only_bg_t, only_bg_b, no_fg, only_fg, mixed_same, mixed_next and mixed_rand;
    mixed_rand files carry the mixed_next names (as in the real release), so their names lie about the bg.
    """
    rng = np.random.default_rng(seed)
    root = dest / "bg_challenge"
    rel = Released(root)
    photos = {}
    for label, folder in enumerate(IN9_FOLDERS):
        for i in range(per_class):
            stem = f"n{label:08d}_{100 + i}"
            img, mask, box = _photo(rng, size)
            photos[stem] = (label, folder, img, mask, box)
            rel.stems.append(stem)
            rel.labels.append(label)
    bgs = {s: segment.only_bg_t(img, box) for s, (_, _, img, _, box) in photos.items()}
    by_class = {k: [s for s in rel.stems if photos[s][0] == k] for k in range(9)}
    for stem, (label, folder, img, mask, box) in photos.items():
        _save_jpeg(root / "original" / "val" / folder / f"{stem}.JPEG", img)
        (root / "fg_mask" / "val" / folder).mkdir(parents=True, exist_ok=True)
        np.save(root / "fg_mask" / "val" / folder / f"{stem}.npy", mask.astype(np.float32))
        _save_jpeg(root / "only_bg_t" / "val" / folder / f"{stem}.JPEG", bgs[stem])
        _save_jpeg(root / "only_bg_b" / "val" / folder / f"{stem}.JPEG", segment.only_bg_b(img, box))
        _save_jpeg(root / "no_fg" / "val" / folder / f"{stem}.JPEG", img * (1 - mask[..., None]))
        _save_jpeg(root / "only_fg" / "val" / folder / f"{stem}.JPEG", img * mask[..., None])
        same = by_class[label][(by_class[label].index(stem) + 1) % per_class]
        nxt = by_class[(label + 1) % 9][int(rng.integers(per_class))]
        rand = by_class[int(rng.integers(9))][int(rng.integers(per_class))]
        m = mask[..., None].astype(bool)
        _save_jpeg(root / "mixed_same" / "val" / folder / f"fg_{stem}_bg_{same}.JPEG", np.where(m, img, bgs[same]))
        _save_jpeg(root / "mixed_next" / "val" / folder / f"fg_{stem}_bg_{nxt}.JPEG", np.where(m, img, bgs[nxt]))
        _save_jpeg(root / "mixed_rand" / "val" / folder / f"fg_{stem}_bg_{nxt}.JPEG", np.where(m, img, bgs[rand]))
        rel.mixed_next_bg[stem], rel.mixed_rand_bg[stem] = nxt, rand
    return rel


def corrupt_released(rel: Released) -> dict[str, str]:
    """Break four items of a miniature release; returns {file relative to root: expected problem text}."""
    r = rel.root
    f = IN9_FOLDERS
    s = {k: rel.stems[rel.labels.index(k)] for k in range(4)}
    np.save(r / "fg_mask" / "val" / f[0] / f"{s[0]}.npy", np.zeros((SIZE, SIZE + 3), np.float32))
    (r / "original" / "val" / f[1] / f"{s[1]}.JPEG").write_bytes(b"this is not a jpeg")
    (r / "fg_mask" / "val" / f[2] / f"{s[2]}.npy").unlink()
    _save_jpeg(r / "original" / "val" / f[3] / f"{s[3]}.JPEG", np.zeros((SIZE + 8, SIZE, 3), np.uint8))
    return {
        f"fg_mask/val/{f[0]}/{s[0]}.npy": "has shape (32, 35)",
        f"original/val/{f[1]}/{s[1]}.JPEG": "not a readable image",
        f"original/val/{f[2]}/{s[2]}.JPEG": "missing mask",
        f"original/val/{f[3]}/{s[3]}.JPEG": "image is 32x40",
    }


# --------------------------------------------------------------------------------------------- drawn photos
def draw_object(rng: np.random.Generator, h: int, w: int, box: tuple[int, int, int, int],
                shape: str = "ellipse") -> tuple[np.ndarray, np.ndarray]:
    """A textured background (stripes + noise) with a flat-ish object of ``shape`` filling ``box``."""
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (np.sin(xx / 3.0 + yy / 7.0) * 30).astype(np.float32)
    bg = np.stack([60 + stripes, 140 - stripes, 90 + stripes / 2], -1) + rng.normal(0, 12, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    if shape == "ellipse":
        cv2.ellipse(mask, ((x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2), ((x1 - x0) // 2 - 1, (y1 - y0) // 2 - 1),
                    0, 0, 360, 1, -1)
    else:  # a diamond
        pts = np.array([[(x0 + x1) // 2, y0], [x1 - 1, (y0 + y1) // 2], [(x0 + x1) // 2, y1 - 1],
                        [x0, (y0 + y1) // 2]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    obj = np.array([230, 40, 200], np.float32) + rng.normal(0, 8, (h, w, 3))
    img = np.where(mask[..., None] > 0, obj, bg)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def write_csv(path: Path, rows: list[tuple[str, int, int, int, int, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "xmin", "ymin", "xmax", "ymax", "label"])
        w.writerows(rows)
    return path


def write_voc(path: Path, filename: str, size: tuple[int, int],
              objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """A PASCAL VOC annotation; ``objects`` boxes are 0-based exclusive, written 1-based inclusive."""
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>" for n, (x0, y0, x1, y1) in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[1]}</width>"
                    f"<height>{size[0]}</height><depth>3</depth></size>{objs}</annotation>")


# --------------------------------------------------------------------------------------------- stores
def make_store(path: Path, per_class: int = 3, size: int = 24, n_classes: int = 9, seed: int = 0,
               unlabelled_bgs: int = 0) -> Path:
    """A store whose every photo gives a foreground and its Only-BG-T background (same source id)."""
    rng = np.random.default_rng(seed)
    fi, fm, fl, fb, bi, bl, src, bsrc = [], [], [], [], [], [], [], []
    for label in range(n_classes):
        for i in range(per_class):
            img, mask, box = _photo(rng, size)
            fi.append(img), fm.append(mask), fl.append(label), fb.append(box), src.append(f"c{label}_{i}")
            bi.append(segment.only_bg_t(img, box)), bl.append(label), bsrc.append(f"c{label}_{i}")
    for t in range(unlabelled_bgs):
        bi.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), bl.append(-1), bsrc.append(f"tex{t}")
    names = IN9_CLASSES if n_classes == 9 else tuple(f"class{k}" for k in range(n_classes))
    return write_store(path, class_names=names, fg_images=np.stack(fi), fg_masks=np.stack(fm), fg_labels=fl,
                       bg_images=np.stack(bi), bg_labels=bl, fg_source_ids=src, bg_source_ids=bsrc,
                       fg_boxes=np.array(fb))


def run_cli(args: list[str]) -> int:
    """Run the real CLI (advbg.cli.main) and return its exit code (0 when it returns normally)."""
    from advbg.cli import main

    try:
        main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
