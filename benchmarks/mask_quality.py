"""Mask quality: true masks against GrabCut on the same boxes, and what the difference does to a model's numbers.

Two data sets whose true masks are known, each written as a folder of photos + true masks + a CSV of boxes (the
masks' tight bounds), then built into a store twice with ``advbg.data.extract.extract``: once with the true
masks (``masks=``), once with GrabCut on the boxes (``boxes=``, the IN-9 recipe). Same photos, same boxes, so
the Only-BG-T backgrounds are identical; only the foreground masks differ.

  synth   ``advbg synth`` photos (its shapes, backgrounds and exact masks; seed 1) at --size px, --classes x
          --per-class photos, background style tied to the class with strength --correlation (0.9: the style is the
          class's in 92.5% of photos; 0: independent), in --fills:
            flat        the shape in one flat colour far from the background's mean, as ``advbg synth`` paints it
            textured    the shape filled with the texture of another class's background style
            camouflage  the shape filled with a fresh draw of the photo's own background style (same hue and
                        texture kind, other phase, angle and frequency): GrabCut's colour models overlap, as
                        they often do on real photos
          Model: timm's ``test_resnet`` trained from scratch with ``advbg.train.finetune`` (policy "original",
          --epochs) on --train-per-class photos per class of the same kind (seed 0, true masks), then loaded
          back like ``--model CKPT``; one model per fill, the same model for both stores of that fill.
          advbg/lite0 cannot be scored here: its label map is ImageNet -> IN-9, and shapes are no IN-9 class.
          Measured on both stores: mask IoU against the truth; only_fg, mixed_same, mixed_rand top-1 and
          BG-Gap (``advbg.analysis.evaluate``, generated variants, seed 0); worst-case fooling rate, criteria
          any and bg-class, every foreground x every background of the store (``advbg.search.runner.search``).
  quokka  the one natural photo with an outline that installs from a wheel: imgaug 0.4.0's quokka.jpg and the
          polygon in quokka_annotations.json (read as files; imgaug is not imported:
          ``pip install --no-deps imgaug==0.4.0``). Reference geometry (resize 256, crop 224). Measured: mask
          IoU, and advbg/lite0's ImageNet top-1 on the photo and on its only_fg image with each mask.

    python benchmarks/mask_quality.py                 # 12 minutes on a 2-core CPU at load 10-14 (two trainings)
    python benchmarks/mask_quality.py --epochs 0      # mask IoU only: seconds
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import torch
from PIL import Image

from advbg._compat import import_timm
from advbg.analysis.evaluate import EvalConfig, evaluate
from advbg.data.extract import ExtractConfig, extract
from advbg.data.segment import only_bg_t
from advbg.data.store import Store
from advbg.data.synth import SynthConfig, render_photo, style_background
from advbg.data.variants import make_variant
from advbg.data.writer import StoreWriter
from advbg.models.loading import load_classifier
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import load_outcome
from advbg.search.runner import search
from advbg.train.finetune import FinetuneConfig, finetune


# --------------------------------------------------------------------------------------------- data folders
def _write(root: Path, sid: str, image: np.ndarray, mask: np.ndarray) -> None:
    for sub, arr in (("images", image), ("masks", mask * np.uint8(255))):
        p = root / sub / f"{sid}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _write_boxes(root: Path, rows: list[tuple]) -> Path:
    with open(root / "boxes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "xmin", "ymin", "xmax", "ymax", "label"])
        w.writerows(rows)
    return root / "boxes.csv"


def synth_photos(cfg: SynthConfig, fill: str):
    """(image, exact mask, label) of ``advbg synth`` photos (its generator and seed); ``fill="textured"`` paints
    the shape with the texture of another class's background style instead of a flat colour (harder for GrabCut,
    whose colour models then overlap)."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_classes
    for i in range(n * cfg.n_per_class):
        ph = render_photo(cfg, i % n, rng)
        image = ph.image
        if fill != "flat":  # textured: another class's style; camouflage: the photo's own style, drawn anew
            style = ph.style if fill == "camouflage" else (ph.style + 1 + int(rng.integers(n - 1))) % n
            tex = style_background(style, n, rng, cfg.image_size)
            image = np.where(ph.mask[..., None].astype(bool), tex, ph.clean_background)
        yield image, ph.mask, ph.label


def synth_train_store(path: Path, cfg: SynthConfig, fill: str) -> Path:
    """A training store of the same kind of photos, true masks (as ``advbg synth`` writes them)."""
    with StoreWriter(path, class_names=cfg.class_names, image_size=(cfg.image_size, cfg.image_size)) as w:
        for i, (img, mask, y) in enumerate(synth_photos(cfg, fill)):
            w.add_foreground(img, mask, y, f"t{i}", _box(mask))
            w.add_background(only_bg_t(img, _box(mask)), y, f"t{i}")
    return path


def synth_folder(root: Path, cfg: SynthConfig, fill: str) -> dict[str, np.ndarray]:
    """Synthetic photos, exact masks and boxes as files; returns {source id: true mask}."""
    truth, rows = {}, []
    for i, (img, mask, y) in enumerate(synth_photos(cfg, fill)):
        sid = f"{cfg.class_names[y]}/p{i:04d}"
        _write(root, sid, img, mask)
        rows.append((f"{sid}.png", *_box(mask), cfg.class_names[y]))
        truth[sid] = mask
    _write_boxes(root, rows)
    return truth


def imgaug_folder() -> Path | None:
    """Where the imgaug wheel's files are (the package is never imported), None when it is not installed."""
    spec = importlib.util.find_spec("imgaug")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    return pkg if (pkg / "quokka_annotations.json").is_file() else None


def quokka_folder(root: Path, pkg: Path) -> np.ndarray:
    """imgaug's quokka photo and its polygon filled as the true mask (at the photo's own size)."""
    image = np.asarray(Image.open(pkg / "quokka.jpg").convert("RGB"))
    ann = json.loads((pkg / "quokka_annotations.json").read_text())
    pts = np.array([[p["x"], p["y"]] for p in ann["polygons"][0]["keypoints"]], np.float64)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    for sub in ("images", "masks"):
        (root / sub / "quokka").mkdir(parents=True)
    shutil.copy(pkg / "quokka.jpg", root / "images" / "quokka" / "quokka.jpg")   # the photo's own bytes
    Image.fromarray(mask * np.uint8(255)).save(root / "masks" / "quokka" / "quokka.png")
    _write_boxes(root, [("quokka/quokka.jpg", *_box(mask), "quokka")])
    return mask


def build_pair(root: Path, cfg: ExtractConfig, classes: tuple[str, ...] | None = None) -> dict[str, Path]:
    """The same photos built twice: true masks, and GrabCut on the masks' boxes.

    ``classes`` keeps the generator's class order (extract's default is the sorted names, and an identity
    label map is matched to the store's classes by index only)."""
    out = {}
    for kind, kw in (("true", dict(boxes=None, masks=root / "masks")), ("grabcut", dict(boxes=root / "boxes.csv"))):
        path = root / f"{kind}.h5"
        t0 = time.perf_counter()
        s = extract(root / "images", kw.pop("boxes"), path, **kw, classes=classes, config=cfg, workers=1,
                    progress=False)
        print(f"  {root.name}/{kind}: {s.foregrounds} foregrounds, {s.backgrounds} backgrounds of {s.images} photos, "
              f"dropped {dict(s.reasons) or 'none'} ({time.perf_counter() - t0:.1f} s)", flush=True)
        out[kind] = path
    return out


def true_on_kept(root: Path, stores: dict[str, Path], cfg: ExtractConfig, classes) -> Path | None:
    """True masks on exactly the foregrounds GrabCut kept (None when it kept all): boxes + the true masks of the
    kept photos only; the other photos fall back to GrabCut, which drops them again (same seed, same pixels)."""
    with Store(stores["true"]) as t, Store(stores["grabcut"]) as g:
        kept = set(g.foregrounds.source_ids)
        if len(kept) == len(t.foregrounds):
            return None
    for sid in kept:
        dest = root / "masks_kept" / f"{sid}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "masks" / f"{sid}.png", dest)
    path = root / "true_kept.h5"
    extract(root / "images", root / "boxes.csv", path, masks=root / "masks_kept", classes=classes, config=cfg,
            workers=1, progress=False)
    with Store(path) as s, Store(stores["grabcut"]) as g:
        assert s.foregrounds.source_ids == g.foregrounds.source_ids
        assert s.backgrounds.source_ids == g.backgrounds.source_ids
    return path


def _masks(path: Path) -> dict[str, np.ndarray]:
    with Store(path) as s:
        return {sid: s.foregrounds.read_masks([i])[0] for i, sid in enumerate(s.foregrounds.source_ids)}


def mask_iou(stores: dict[str, Path]) -> np.ndarray:
    """IoU of GrabCut's mask with the true one, per photo kept in both stores."""
    t, g = _masks(stores["true"]), _masks(stores["grabcut"])
    common = sorted(set(t) & set(g))
    return np.array([(t[k] & g[k]).sum() / max((t[k] | g[k]).sum(), 1) for k in common])


# --------------------------------------------------------------------------------------------- model numbers
VARIANTS = ("original", "only_fg", "mixed_same", "mixed_rand")


def model_numbers(path: Path, clf) -> dict[str, float]:
    """Top-1 on the variants and BG-Gap (evaluate), and the worst-case fooling rate under both criteria from one
    exhaustive search's outcome matrix (every foreground x every background)."""
    with Store(path, mode="r+") as s:
        rep = evaluate(s, [clf], EvalConfig(variants=",".join(VARIANTS), top_k=(1,), seed=0))
        m = rep.models[0]
        row = {v: m.scores[v].top1 for v in VARIANTS}
        row["bg_gap"] = m.bg_gap
        res = search(s, clf, SearchConfig(criterion="any", batch_size=256), write=True, progress=False)
        outcome, fg_id, pool = load_outcome(s, res.results_name)
        true, bg_label = s.foregrounds.labels[fg_id], s.backgrounds.labels[pool]
        for crit in ("any", "bg-class"):
            fooled = Criterion(crit).fooled_outcome(outcome, true, bg_label).any(1)
            row[f"fooling_{crit}"] = 100.0 * float(fooled.mean())
        assert abs(row["fooling_any"] - res.fooling_rate) < 1e-9   # the matrix agrees with the search's own count
        row["n"] = len(s.foregrounds)
    return row


def train_model(tmp: Path, a, fill: str) -> Path:
    train_cfg = SynthConfig(a.classes, a.train_per_class, a.size, a.correlation, seed=0)
    train = synth_train_store(tmp / f"train-{fill}.h5", train_cfg, fill)
    cfg = FinetuneConfig(policy="original", epochs=a.epochs, batch_size=64, lr=3e-3, warmup_steps=10, seed=0,
                         pretrained=False)
    t0 = time.perf_counter()
    res = finetune("test_resnet", train, tmp / f"model-{fill}", cfg, progress=False, echo=lambda m: None)
    print(f"  trained test_resnet on {a.classes} x {a.train_per_class} photos (seed 0, true masks): "
          f"{res.metadata['recipe']['steps']} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return res.checkpoint


def lite0_top1(clf, images: np.ndarray) -> list[str]:
    timm = import_timm()
    info = timm.data.ImageNetInfo()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    with torch.inference_mode():
        logits = clf(x)
    prob = logits.softmax(1)
    top = prob.argmax(1)
    mapped = clf.label_map.predict(logits)
    return [f"{info.index_to_description(int(k))} ({100 * float(prob[i, k]):.0f}%, IN-9: "
            f"{clf.config.class_names[int(m)] if m >= 0 else 'none'})" for i, (k, m) in enumerate(zip(top, mapped))]


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=25, help="test photos per class")
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--correlation", type=float, default=0.9, help="background style <-> class (advbg synth)")
    ap.add_argument("--epochs", type=int, default=14, help="0: mask IoU only, no model")
    ap.add_argument("--fills", nargs="+", default=["flat", "camouflage"], choices=["flat", "textured", "camouflage"])
    ap.add_argument("--skip-quokka", action="store_true")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, load average {load[0]:.1f}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = []
        for fill in a.fills:
            print(f"synth, {fill} shapes: {a.classes} classes x {a.per_class} photos (seed 1), {a.size} px, "
                  f"correlation {a.correlation}, GrabCut 5 iterations", flush=True)
            root = tmp / f"synth-{fill}"
            test_cfg = SynthConfig(a.classes, a.per_class, a.size, a.correlation, seed=1)
            truth = synth_folder(root, test_cfg, fill)
            ecfg = ExtractConfig(resize=0, crop=a.size)
            stores = build_pair(root, ecfg, test_cfg.class_names)
            for sid, m in _masks(stores["true"]).items():
                assert np.array_equal(m, truth[sid]), sid   # the given masks are stored exactly
            iou = mask_iou(stores)
            print(f"  GrabCut mask IoU with the truth over {len(iou)} photos: mean {iou.mean():.3f}, median "
                  f"{np.median(iou):.3f}, 10th percentile {np.percentile(iou, 10):.3f}, below 0.5: "
                  f"{100 * (iou < 0.5).mean():.0f}%", flush=True)
            if a.epochs <= 0:
                continue
            kept = true_on_kept(root, stores, ecfg, test_cfg.class_names)
            if kept is not None:
                stores["true, GrabCut's photos"] = kept
            clf = load_classifier(str(train_model(tmp, a, fill)), device="cpu")
            for kind, path in stores.items():
                t0 = time.perf_counter()
                r = model_numbers(path, clf)
                print(f"  {kind}: " + "  ".join(f"{k} {v:.1f}" for k, v in r.items())
                      + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
                table.append((fill, kind, float(iou.mean()), r))
        print("\n| shapes | masks | mean IoU with truth | foregrounds | original | only_fg | mixed_same | mixed_rand | "
              "BG-Gap | fooling (any) | fooling (bg-class) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for fill, kind, miou, r in table:
            print(f"| {fill} | {kind} | {miou if kind == 'grabcut' else 1.0:.3f} | {r['n']} | {r['original']:.1f} | "
                  f"{r['only_fg']:.1f} | {r['mixed_same']:.1f} | {r['mixed_rand']:.1f} | {r['bg_gap']:+.1f} | "
                  f"{r['fooling_any']:.1f} | {r['fooling_bg-class']:.1f} |")
        pkg = None if a.skip_quokka else imgaug_folder()
        if not a.skip_quokka and pkg is None:
            print("\nquokka: skipped, imgaug 0.4.0's files are not installed (pip install --no-deps imgaug==0.4.0)")
        if pkg is not None:
            print("\nquokka: 960x643 photo, polygon outline, resize 256 + crop 224", flush=True)
            quokka_folder(tmp / "quokka", pkg)
            q = build_pair(tmp / "quokka", ExtractConfig())
            print(f"  GrabCut mask IoU with the polygon: {mask_iou(q)[0]:.3f}")
            lite0 = load_classifier("advbg/lite0", device="cpu")
            imgs = []
            for kind in ("true", "grabcut"):
                with Store(q[kind]) as s:
                    if kind == "true":
                        imgs.append(s.foregrounds.read([0])[0])
                    imgs.append(make_variant(s, "only_fg", [0]).images[0])
            for what, label in zip(("photo (224 crop)", "only_fg, true mask", "only_fg, GrabCut mask"),
                                   lite0_top1(lite0, np.stack(imgs))):
                print(f"  advbg/lite0 top-1 on the {what}: {label}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
