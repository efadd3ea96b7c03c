"""What a search writes, once: the per-foreground columns, the outcome codes, the run record, the result types.

Layout of a results file ``<store>.d/results/<name>.h5`` (plain h5py; attrs and datasets at its root, as a
``/results/<name>`` group of stores written by earlier advbg builds)::

    attrs: kind="search", complete=True, store_digest, fingerprint (what must match to
           resume), run (JSON of the RunRecord), config (JSON), classifier (JSON), criterion, mode, model,
           label_map, created, completed
    fg_id (F,) int64            searched foregrounds, in order
    bg_pool (B,) int64          the background pool, in trial order of an exhaustive search
    true_class (F,) int64
    COLUMNS (F,)                worst_bg, worst_margin (float64, NaN where nothing was evaluated), worst_pred,
                                first_fooling_bg, n_fooling, n_evaluated, n_invalid (int64, -1 = none),
                                worst_raw_top1 (int64: the model's own top-1 output index on the worst composite,
                                an ImageNet index for 1000-class models; -1 = none evaluated or not recorded)
    done (F,) uint8             1 for every foreground whose unit was merged
    outcome (F, B) uint8        mapped prediction per pair (OUTCOME_* codes below), if recorded
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from advbg._compat import import_timm
from advbg.data.store import Store, check_derived_name
from advbg.errors import AdvbgError, StoreError
from advbg.models.classifier import results_tag
from advbg.stats import RATE_LEGEND, rate

# Outcome matrix codes beside the mapped class indices 0..252.
OUTCOME_INVALID = 253       # composite with NaN/inf logits (e.g. fp16 overflow): no prediction, never fooled
OUTCOME_NONE = 254          # mapped prediction "none" (unmapped top-1)
OUTCOME_MISSING = 255       # pair not evaluated (early exit, pruning)

# The per-foreground columns a search computes, with their dtype and the value of a foreground not (yet) searched.
COLUMNS: dict[str, tuple[type, float]] = {
    "worst_bg": (np.int64, -1), "worst_margin": (np.float64, np.nan), "worst_pred": (np.int64, -1),
    "first_fooling_bg": (np.int64, -1), "n_fooling": (np.int64, -1), "n_evaluated": (np.int64, -1),
    "n_invalid": (np.int64, -1), "worst_raw_top1": (np.int64, -1),
}
FIELDS = tuple(COLUMNS)
# Columns added after results files were first written: a file without one reads as its fill (-1: not recorded).
ADDED_COLUMNS = ("worst_raw_top1",)
PER_FOREGROUND = ("fg_id", "true_class") + FIELDS       # every array of one row per searched foreground


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """The columns of ``n`` foregrounds not searched yet."""
    return {k: np.full(n, fill, dtype) for k, (dtype, fill) in COLUMNS.items()}


@dataclass(frozen=True)
class RunRecord:
    """What produced a result: stored as JSON in the results group and written to every summary."""

    advbg_version: str
    classifier: dict
    store: str
    store_digest: str
    criterion: str
    mode: str
    pruning: str | None
    config: dict
    device: str
    started: str
    seconds: float
    forwards: int
    batch_size: int = 0            # composites per forward actually used (after auto-sizing / OOM retries)
    world_size: int = 1            # processes that shared the work (torchrun)
    amp: str = "off"               # precision the forwards ran in
    verified: int = 0              # close pairs recomputed in fp32 (verify_close)
    resumed_units: int = 0         # units taken from an earlier, interrupted run
    precision: dict | None = None  # what --amp auto chose on a CPU and why (PrecisionChoice.to_record; None: not chosen)

    @property
    def composites_per_s(self) -> float:
        return self.forwards / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ForegroundResult:
    """The outcome for one foreground."""

    fg_id: int
    true_class: int
    worst_bg: int              # bg_id with the lowest true-class margin (-1: none evaluated)
    worst_margin: float
    worst_pred: int            # mapped prediction on the worst background (-1: "none")
    first_fooling_bg: int      # first fooling bg_id in trial order (-1: not fooled)
    n_fooling: int
    n_evaluated: int
    fooled: bool
    worst_raw_top1: int = -1   # the model's own top-1 output on the worst composite (-1: not recorded)


@dataclass(frozen=True)
class SearchResult:
    """Per-foreground arrays (index k = the k-th searched foreground) plus the run record."""

    run: RunRecord
    fg_id: np.ndarray
    true_class: np.ndarray
    worst_bg: np.ndarray
    worst_margin: np.ndarray
    worst_pred: np.ndarray
    first_fooling_bg: np.ndarray
    n_fooling: np.ndarray
    n_evaluated: np.ndarray
    n_invalid: np.ndarray      # composites with NaN/inf logits: reported, never counted as fooled
    class_names: tuple[str, ...]
    results_name: str | None = None
    worst_raw_top1: np.ndarray | None = None   # model's own top-1 output on the worst composite; None -> all -1

    def __post_init__(self):
        if self.worst_raw_top1 is None:
            object.__setattr__(self, "worst_raw_top1", np.full(len(self.fg_id), -1, np.int64))

    @property
    def fooled(self) -> np.ndarray:
        return self.first_fooling_bg >= 0

    @property
    def fooling_rate(self) -> float:
        """Percent of foregrounds with at least one fooling background."""
        return 100.0 * float(self.fooled.mean()) if len(self.fg_id) else float("nan")

    @property
    def challenge_accuracy(self) -> float:
        return 100.0 - self.fooling_rate

    def __len__(self) -> int:
        return len(self.fg_id)

    def __getitem__(self, k: int) -> ForegroundResult:
        return ForegroundResult(int(self.fg_id[k]), int(self.true_class[k]), int(self.worst_bg[k]),
                                float(self.worst_margin[k]), int(self.worst_pred[k]), int(self.first_fooling_bg[k]),
                                int(self.n_fooling[k]), int(self.n_evaluated[k]), bool(self.fooled[k]),
                                int(self.worst_raw_top1[k]))

    def summary(self) -> dict:
        """JSON-ready summary: headline numbers, run record, per-foreground rows."""
        return dict(
            fooling_rate=self.fooling_rate, challenge_accuracy=self.challenge_accuracy,
            criterion=self.run.criterion, mode=self.run.mode, model=self.run.classifier["name"],
            model_tag=results_tag(self.run.classifier),
            label_map=self.run.classifier["label_map"], n_foregrounds=len(self), forwards=self.run.forwards,
            seconds=self.run.seconds, composites_per_s=self.run.composites_per_s,
            invalid_composites=int(self.n_invalid.sum()), results_name=self.results_name,
            run=asdict(self.run), class_names=list(self.class_names),
            foregrounds=[dict(asdict(self[k]), worst_pred_text=self.prediction_text(k)) for k in range(len(self))],
            **self.rates(),
        )

    def rates(self) -> dict:
        """Fooling rate and challenge accuracy with k, n and their 95% interval (advbg.stats), JSON-ready."""
        if not len(self):
            return {}
        fooling = rate(int(self.fooled.sum()), len(self))
        return dict(fooling=fooling.to_dict(), challenge=fooling.complement().to_dict(), rate_legend=RATE_LEGEND)

    def prediction_text(self, k: int) -> str:
        """What the model predicted on foreground k's worst composite: the mapped class, or for "none" what the
        model itself saw, e.g. ``none: strawberry``; '-' when nothing was evaluated."""
        if self.worst_bg[k] < 0:
            return "-"
        pred = int(self.worst_pred[k])
        if 0 <= pred < len(self.class_names):
            return self.class_names[pred]
        raw = int(self.worst_raw_top1[k])
        return f"none: {raw_class_name(self.run.classifier if self.run else {}, raw)}" if raw >= 0 else "none"


def raw_class_name(classifier: dict, index: int) -> str:
    """The name of the model's own output ``index``: the classifier's class for an ``identity`` label map, the
    ImageNet class (timm's ImageNetInfo) for a 1000-output model, else ``output <index>``."""
    names = classifier.get("class_names") or ()
    if classifier.get("label_map") == "identity" and 0 <= index < len(names):
        return str(names[index])
    if classifier.get("num_outputs") == 1000 and 0 <= index < 1000:
        return _imagenet_name(index)
    return f"output {index}"


def _imagenet_name(index: int) -> str:
    import_timm()
    from timm.data import ImageNetInfo  # deferred: timm is heavy

    return ImageNetInfo().index_to_description(index).split(",")[0].strip()


def fingerprint(store: Store, fg_ids: np.ndarray, pool: np.ndarray, classifier, config, amp: str) -> str:
    """What must agree for units of two runs to be merged: store content, classifier, what is searched, how."""
    h = hashlib.sha256()
    c = classifier.config
    for part in (store.digest(), c.identity_key, config.criterion, config.mode, config.prune or "", config.record_outcomes, amp,
                 config.verify_close):
        h.update(str(part).encode() + b"\0")
    h.update(np.asarray(fg_ids, np.int64).tobytes())
    h.update(np.asarray(pool, np.int64).tobytes())
    return h.hexdigest()[:24]


def group_attrs(classifier, config) -> dict:
    """The attributes a results group carries (JSON-able)."""
    return dict(kind="search", criterion=config.criterion, mode=config.mode, model=classifier.config.tag,
                label_map=classifier.config.label_map, config=json.dumps(config.to_dict()),
                classifier=json.dumps(classifier.config.to_dict()))


def check_name(name: str) -> None:
    """Refuse a results name that cannot be a file name of its own (one line)."""
    try:
        check_derived_name(name)
    except StoreError as e:
        raise AdvbgError(str(e)) from None
