"""Where a classifier looks: Grad-CAM maps and the share of their mass on the object (``advbg saliency``).

For a store, a classifier and a variant (``advbg.data.variants``: the object stays where the store's mask says),
each image gets a Grad-CAM map (captum's ``LayerGradCam``) for its class, and two numbers:

  - foreground share = positive Grad-CAM mass inside the foreground mask / all positive mass (0..1);
  - normalised share = foreground share / mask area fraction: 1.0 = no preference for object or background,
    above 1 = the map favours the object, below 1 = the background.

Per class and overall: the mean with a seeded 95% percentile-bootstrap interval. Images with an empty mask or a
map with no positive mass have no share (NaN) and are counted, never averaged.

Target layer rule (``target_layer``): the last module, in forward execution order, whose output is a 4-D
(N, C, H, W) feature map with H*W > 1, provided that every module running after it outputs a pooled map
(H = W = 1) or a tensor of at most 2 dims (pooling, flatten, classifier), and, for timm models, that C equals
``model.num_features``. For timm CNNs this is the module whose output ``forward_features`` returns (e.g. ``bn2``
of EfficientNet, ``layer4`` of ResNet, ``norm_pre``/``stages`` of ConvNeXt). Models whose features after the last
map are token tensors (ViT, DeiT: 3-D) or channels-last maps (Swin) are refused with the reason.

Class score explained: the label map's group score (``LabelMap.reduce``: the max logit over the outputs mapped to
the class), of the true class (``target="true"``) or the predicted one (``"pred"``; an unmapped prediction is
explained as the "none" group).
"""
from __future__ import annotations

import csv
import difflib
import io
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advbg.analysis.evaluate import VARIANT_GROUPS, model_record
from advbg.analysis.plots import subplots
from advbg.data.store import Store
from advbg.data.verify import check_labels, store_reads
from advbg.data.variants import make_variant, variant_names
from advbg.errors import AdvbgError, ModelError, StoreError
from advbg.files import atomic_output, now, save_figure
from advbg.models.classifier import Classifier
from advbg.stats import format_interval
from advbg.progress import progress as progress_bar

TARGETS = ("true", "pred")
MAX_RESAMPLES = 100_000   # the intervals stop changing long before; bounds the run time
RULE = ("last module whose output is a 4-D (N,C,H,W) map with H*W > 1 and after which only pooled (1x1) or <= 2-D "
        "outputs follow; C = model.num_features for timm models")
# Variants where the object is not in the image: the mask then marks where it was (share still defined).
OBJECT_ABSENT = ("only_bg_b", "only_bg_t", "no_fg", "fg_white")


# --------------------------------------------------------------------------------------------- numbers
def foreground_share(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, H, W) maps and 0/1 masks -> (share, area, normalised share), each (n,); NaN where undefined."""
    pos = np.clip(np.asarray(maps, np.float64), 0.0, None)
    m = np.asarray(masks) > 0
    total = pos.sum(axis=(1, 2))
    inside = (pos * m).sum(axis=(1, 2))
    area = m.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where((total > 0) & (area > 0), inside / total, np.nan)
        norm = share / area
    return share, area, norm


@dataclass(frozen=True)
class Interval:
    """Mean of the defined values with a percentile-bootstrap interval; None when there is no value."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def text(self, digits: int = 3) -> str:
        """``0.620 [0.550, 0.700]`` (advbg.stats' interval format); '-' when there is no value."""
        return "-" if self.mean is None else format_interval(self.mean, self.low, self.high, digits=digits)


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = 2000, level: float = 0.95) -> Interval:
    """Mean of the finite values and its ``level`` percentile-bootstrap interval (seeded)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(None, None, None, 0)
    rng = np.random.default_rng(seed)
    means = np.concatenate([v[rng.integers(0, v.size, (k, v.size))].mean(1)
                            for k in np.diff(np.r_[0:resamples:256, resamples])])
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), int(v.size))


# --------------------------------------------------------------------------------------------- target layer
def target_layer(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> tuple[str, nn.Module]:
    """(name, module) of the Grad-CAM layer by the module docstring's rule; ModelError when there is none."""
    if isinstance(model, Classifier):
        model = model.model
    runs: list[tuple[str, tuple[int, ...] | None]] = []

    def hook(name):
        return lambda mod, inp, out: runs.append((name, tuple(out.shape) if isinstance(out, torch.Tensor) else None))

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    kind = type(model).__name__
    x = torch.zeros(1, *input_size, device=device)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ModelError(f"cannot run {kind} on a {tuple(input_size)} input to find its Grad-CAM layer: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
    if hasattr(model, "forward_features"):   # timm: the map the head pools must be more than one pixel
        with torch.no_grad():
            feats = model.forward_features(x)
        if isinstance(feats, torch.Tensor) and feats.ndim == 4 and feats.shape[2] * feats.shape[3] == 1:
            raise ModelError(f"Grad-CAM is not supported for {kind} at input size {tuple(input_size)[1:]}: its "
                             f"final feature map is 1x1 (shape {tuple(feats.shape)}); use larger images")
    maps = [i for i, (_, s) in enumerate(runs) if s is not None and len(s) == 4 and s[2] * s[3] > 1]
    if not maps:
        raise ModelError(f"Grad-CAM is not supported for {kind}: no module outputs a 4-D (N,C,H,W) feature map")
    name, shape = runs[maps[-1]]
    for later, s in runs[maps[-1] + 1:]:
        if s is not None and not (len(s) <= 2 or (len(s) == 4 and s[2] * s[3] == 1)):
            raise ModelError(f"Grad-CAM is not supported for {kind}: module {later} runs after its last 4-D output "
                             f"({name}, shape {shape}) and outputs shape {s} (tokens, as in ViTs), so no module "
                             f"gives the feature map the classifier pools; use a CNN")
    features = getattr(model, "num_features", None)
    if isinstance(features, int) and shape[1] != features:
        raise ModelError(f"Grad-CAM is not supported for {kind}: its last 4-D output ({name}, shape {shape}) does "
                         f"not have its {features} features as channels (a channels-last map, as in Swin?)")
    return name, model.get_submodule(name)


# --------------------------------------------------------------------------------------------- Grad-CAM
def grad_cam(clf: Classifier, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ReLU(Grad-CAM) of the label map's group score ``targets`` (N,), upsampled (bilinear) to the images'
    size: (N, H, W) float, non-negative. ``images``: [0, 1] RGB (N, 3, H, W) on the classifier's device."""
    from captum.attr import LayerGradCam  # deferred: optional [saliency] extra

    def group_scores(x: torch.Tensor) -> torch.Tensor:
        return clf.label_map.reduce(clf(x).float())

    x = images.detach().clone().requires_grad_(True)   # frozen weights: the graph must start at the input
    with torch.enable_grad():
        cam = LayerGradCam(group_scores, layer).attribute(x, target=targets, relu_attributions=True)
    cam = F.interpolate(cam.detach().float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].clamp_(min=0)


def captum_available() -> bool:
    try:
        import captum.attr  # noqa: F401  (deferred: optional [saliency] extra)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- a store
@dataclass(frozen=True)
class SaliencyConfig:
    """What ``saliency`` computes. Saved with its results."""

    variants: tuple[str, ...] = ("original", "mixed_rand")
    target: str = "true"
    batch_size: int = 16
    seed: int = 0            # generated variants and the bootstrap
    resamples: int = 2000
    limit: int | None = None  # the first N foregrounds only

    def validate(self) -> "SaliencyConfig":
        if self.target not in TARGETS:
            raise AdvbgError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.batch_size < 1:
            raise AdvbgError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.seed < 0:
            raise AdvbgError(f"seed must be a non-negative integer (got {self.seed})")
        if not 100 <= self.resamples <= MAX_RESAMPLES:
            raise AdvbgError(f"bootstrap resamples must be 100 to {MAX_RESAMPLES} (got {self.resamples})")
        if self.limit is not None and self.limit < 1:
            raise AdvbgError(f"limit must be at least 1 (got {self.limit})")
        if not self.variants:
            raise AdvbgError("no variant given")
        return self


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """'original,mixed_rand' or a group (paper, in9, probes, factors) -> generated variant names; unknown: error."""
    known = variant_names()
    out: list[str] = []
    items = text.split(",") if isinstance(text, str) else list(text)
    for token in (t.strip() for t in items):
        if not token:
            continue
        if token in VARIANT_GROUPS:
            out += [v for v in VARIANT_GROUPS[token] if v in known]
        elif token in known:
            out.append(token)
        else:
            close = difflib.get_close_matches(token, list(known) + list(VARIANT_GROUPS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
            raise AdvbgError(f"unknown variant {token!r}{hint}")
    if not out:
        raise AdvbgError("no variant given (e.g. --variants original,mixed_rand)")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class VariantSaliency:
    """One variant: per-image numbers and maps, per-class and overall intervals."""

    variant: str
    fg_index: np.ndarray       # (n,) store foreground rows
    source_ids: list[str]
    labels: np.ndarray         # (n,)
    preds: np.ndarray          # (n,) mapped top-1, -1 = none
    share: np.ndarray          # (n,) NaN where undefined
    area: np.ndarray
    normalised: np.ndarray
    maps: np.ndarray           # (n, H, W) float32, non-negative
    overall: dict[str, Interval]                  # "share", "normalised"
    per_class: dict[str, dict[str, Interval]]     # class -> "share"/"normalised"

    @property
    def accuracy(self) -> float | None:
        return float((self.preds == self.labels).mean() * 100) if len(self.labels) else None

    def rows(self) -> list[dict]:
        return [dict(variant=self.variant, fg_index=int(i), source_id=s, label=int(y), pred=int(p),
                     share=float(a), area=float(r), normalised=float(n))
                for i, s, y, p, a, r, n in zip(self.fg_index, self.source_ids, self.labels, self.preds, self.share,
                                               self.area, self.normalised)]

    def to_dict(self, class_names: Sequence[str]) -> dict:
        names = list(class_names)
        return dict(variant=self.variant, images=len(self.labels), accuracy=self.accuracy,
                    undefined=int(np.isnan(self.share).sum()), mean_area=float(np.mean(self.area)),
                    overall={k: asdict(v) for k, v in self.overall.items()},
                    per_class={c: {k: asdict(v) for k, v in d.items()} for c, d in self.per_class.items()},
                    images_detail=[dict(r, label=names[r["label"]],
                                        pred=names[r["pred"]] if r["pred"] >= 0 else None) for r in self.rows()])


@dataclass(frozen=True)
class SaliencyReport:
    """Everything ``advbg saliency`` prints and writes."""

    model: dict
    layer: str
    store: dict
    config: SaliencyConfig
    variants: list[VariantSaliency]
    created: str

    def to_dict(self) -> dict:
        return dict(created=self.created, model=self.model, layer=self.layer, layer_rule=RULE,
                    store=self.store, config=asdict(self.config),
                    definitions=dict(share="positive Grad-CAM mass inside the foreground mask / all positive mass",
                                     normalised="share / mask area fraction (1.0 = no preference)",
                                     interval="95% percentile bootstrap of the mean, seeded"),
                    variants=[v.to_dict(self.store["class_names"]) for v in self.variants])


def _summaries(share: np.ndarray, norm: np.ndarray, labels: np.ndarray, names: Sequence[str], config: SaliencyConfig
               ) -> tuple[dict[str, Interval], dict[str, dict[str, Interval]]]:
    boot = lambda v: bootstrap_mean(v, config.seed, config.resamples)  # noqa: E731
    overall = dict(share=boot(share), normalised=boot(norm))
    per_class = {c: dict(share=boot(share[labels == k]), normalised=boot(norm[labels == k]))
                 for k, c in enumerate(names) if (labels == k).any()}
    return overall, per_class


def _check_masks(store: Store, rows: slice) -> None:
    masks = store.foregrounds.masks
    nonempty = any(masks[i].any() for i in range(*rows.indices(len(store.foregrounds))))
    if not nonempty:
        raise StoreError(f"{store.path} has no foreground masks (every mask is empty): the foreground share needs "
                         f"segmented foregrounds (advbg extract / segment)")


def saliency(store: Store, clf: Classifier, config: SaliencyConfig = SaliencyConfig(), *,
             progress: bool = False) -> SaliencyReport:
    """Grad-CAM maps and foreground shares of ``clf`` on each of ``config.variants`` of ``store``."""

    config.validate()
    known = variant_names()
    for v in config.variants:
        if v not in known:
            raise AdvbgError(f"unknown variant {v!r}; known: {', '.join(known)}")
    if len(store.foregrounds) == 0:
        raise StoreError(f"{store.path} has no foregrounds")
    if len(clf.label_map.class_names) != len(store.class_names):
        raise AdvbgError(f"{clf.config.name!r} maps to {len(clf.label_map.class_names)} classes, the store has "
                         f"{len(store.class_names)}; use a label map that fits (--label-map in9 for ImageNet models)")
    n = len(store.foregrounds) if config.limit is None else min(config.limit, len(store.foregrounds))
    check_labels(store)             # the checks `search` runs on the same store (one line, before any work)
    with store_reads(store):
        _check_masks(store, slice(0, n))
    name, layer = target_layer(clf.model, clf.config.input_size)
    names = list(store.class_names)
    out = []
    bar = progress_bar(total=n * len(config.variants), unit="img", enabled=progress)
    try:
        for variant in config.variants:
            bar.set_description(variant)
            with store_reads(store):        # a damaged chunk: one line, as `search` says it
                out.append(_one_variant(store, clf, layer, variant, n, config, names, bar))
    finally:
        bar.close()
    st = dict(path=str(store.path), digest=store.digest(), class_names=names, foregrounds=len(store.foregrounds),
              used=n)
    return SaliencyReport(model_record(clf), name, st, config, out, now())


def _one_variant(store: Store, clf: Classifier, layer: nn.Module, variant: str, n: int, config: SaliencyConfig,
                 names: list[str], bar) -> VariantSaliency:
    parts: dict[str, list] = {k: [] for k in ("fg", "src", "y", "pred", "maps", "masks")}
    for start in range(0, n, config.batch_size):
        rows = slice(start, min(start + config.batch_size, n))
        b = make_variant(store, variant, rows, rng_seed=config.seed)
        x = torch.from_numpy(b.images).to(clf.device).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.as_tensor(b.labels, dtype=torch.int64, device=clf.device)
        with torch.no_grad():
            logits = clf(x).float()
        pred = clf.label_map.predict(logits)
        if config.target == "true":
            tgt = y
        else:   # an unmapped prediction is the "none" group's column
            tgt = torch.where(pred < 0, torch.full_like(pred, len(names)), pred)
        maps = grad_cam(clf, layer, x, tgt)
        parts["fg"].append(np.asarray(b.fg_index))
        parts["src"] += list(b.source_id)
        parts["y"].append(np.asarray(b.labels))
        parts["pred"].append(pred.cpu().numpy())
        parts["maps"].append(maps.cpu().numpy().astype(np.float32))
        parts["masks"].append(store.foregrounds.read_masks(np.asarray(b.fg_index)))
        bar.update(len(b))
    maps, masks = np.concatenate(parts["maps"]), np.concatenate(parts["masks"])
    labels = np.concatenate(parts["y"]).astype(np.int64)
    share, area, norm = foreground_share(maps, masks)
    overall, per_class = _summaries(share, norm, labels, names, config)
    return VariantSaliency(variant, np.concatenate(parts["fg"]), parts["src"], labels,
                           np.concatenate(parts["pred"]).astype(np.int64), share, area, norm, maps, overall,
                           per_class)


# --------------------------------------------------------------------------------------------- reporting
def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [headers, *rows])


def format_saliency(report: SaliencyReport) -> str:
    """The terminal output of ``advbg saliency``."""
    m, s = report.model, report.store
    lines = [f"{m['name']}: {m['tag']}, Grad-CAM layer {report.layer} ({RULE})",
             f"store {s['path']} (digest {s['digest']}, {s['used']} of {s['foregrounds']} foregrounds); "
             f"explained: the {report.config.target} class's score; intervals: 95% bootstrap "
             f"(seed {report.config.seed}, {report.config.resamples} resamples)",
             "share = positive Grad-CAM mass inside the foreground mask / all of it; normalised = share / mask area "
             "(1.0 = no preference)", ""]
    rows = []
    for v in report.variants:
        absent = " (object absent)" if v.variant in OBJECT_ABSENT else ""
        rows.append([v.variant + absent, str(len(v.labels)), "-" if v.accuracy is None else f"{v.accuracy:.1f}",
                     f"{np.mean(v.area):.3f}", v.overall["share"].text(), v.overall["normalised"].text(),
                     str(int(np.isnan(v.share).sum()))])
    lines.append(_table(["variant", "n", "top-1 %", "mask area", "fg share [95% CI]", "normalised [95% CI]",
                         "undefined"], rows))
    lines += ["", "per-class foreground share (mean [95% CI], n):"]
    classes = [c for c in s["class_names"] if any(c in v.per_class for v in report.variants)]
    rows = [[c, *(f"{v.per_class[c]['share'].text(2)} {v.per_class[c]['share'].n}" if c in v.per_class else "-"
                  for v in report.variants)] for c in classes]
    lines.append(_table(["class", *(v.variant for v in report.variants)], rows))
    return "\n".join(lines)


def to_csv(report: SaliencyReport) -> str:
    """A row per (variant, image): ids, label, prediction, share, area, normalised share."""

    names = report.store["class_names"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "fg_index", "source_id", "label", "pred", "share", "area", "normalised"])
    for v in report.variants:
        for r in v.rows():
            w.writerow([r["variant"], r["fg_index"], r["source_id"], names[r["label"]],
                        names[r["pred"]] if r["pred"] >= 0 else "none",
                        *("" if not np.isfinite(r[k]) else f"{r[k]:.6f}" for k in ("share", "area", "normalised"))])
    return buf.getvalue()


def save_maps(path, report: SaliencyReport) -> None:
    """An .npz with, per variant, ``<variant>``: (n, H, W) float16 maps and ``<variant>_fg_index``; atomically."""
    arrays = {}
    for v in report.variants:
        arrays[v.variant] = v.maps.astype(np.float16)
        arrays[f"{v.variant}_fg_index"] = v.fg_index
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:   # a file object: numpy would add ".npz" to a name
        np.savez_compressed(fh, **arrays)


def overlay_grid(report: SaliencyReport, store: Store, path, rows: int = 8):
    """PNG: a row per foreground (the first ``rows``), a column per variant: the image with its Grad-CAM map
    (scaled to its own maximum) over it, the mask outline, and the foreground share in the title."""
    names = report.store["class_names"]
    n = min(rows, min(len(v.labels) for v in report.variants))
    cols = len(report.variants)
    fig, axes = subplots(n, cols, figsize=(2.3 * cols, 2.5 * n), squeeze=False)
    for j, v in enumerate(report.variants):
        b = make_variant(store, v.variant, v.fg_index[:n], rng_seed=report.config.seed)
        masks = store.foregrounds.read_masks(v.fg_index[:n])
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(b.images[i])
            peak = float(v.maps[i].max())
            ax.imshow(v.maps[i] / peak if peak > 0 else v.maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.contour(masks[i], levels=[0.5], colors="white", linewidths=0.8)
            share = "-" if not np.isfinite(v.share[i]) else f"{v.share[i]:.2f}"
            pred = names[v.preds[i]] if v.preds[i] >= 0 else "none"
            ax.set_title(f"{v.variant}: share {share}\n{names[v.labels[i]]} -> {pred}", fontsize=7)
            ax.axis("off")
    fig.suptitle(f"Grad-CAM of {report.model['name']} at {report.layer} (white: foreground mask)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.5 * n)))   # room for the title above the first row
    return save_figure(fig, path)
