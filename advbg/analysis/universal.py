"""Universal backgrounds: per-background attack success rate (ASR) toward its own class, per-class union, top-k
backgrounds and a greedy set cover, all computed from the fg x bg outcome matrix of an exhaustive search.

The outcome matrix holds the mapped prediction of every composite (uint8 (F, B); 253 = NaN/inf logits, never
fooled; 254 = "none", 255 = never evaluated), so both criteria derive from it without a forward pass:
  - ``bg-class`` (the paper's): pair (f, b) fools when pred == class(b) != class(f);
  - ``any``: pair (f, b) fools when pred != class(f) ("none" is wrong).
The ASR of a background b of class c is the share (in %) of the *targets* of c, the foregrounds of the other
classes, that it fools; the same targets for both criteria. Backgrounds without a class (label -1) have no class
to push toward and are left out of every per-class number; foregrounds without a class are nobody's target.
Ties (top-k and greedy picks) go to the lowest bg_id.

The functions here are pure numpy on an outcome matrix; ``run_universal`` is what ``advbg universal`` does:
find (or compute) the stored matrix, analyse, print, write JSON/CSV and PNGs.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from advbg.errors import AdvbgError
from advbg.files import _clean
from advbg.stats import RATE_LEGEND, Rate, format_rate, rate, rate_or_none
from advbg.search.criteria import CRITERIA, asr, asr_of, fooled_targets, target_mask  # noqa: F401 (asr: part of this API)

TIE_RULE = "ties go to the lowest bg_id"


# --------------------------------------------------------------------------------------------- pure numpy
def _check(outcome: np.ndarray, fg_class: np.ndarray, bg_class: np.ndarray, criterion: str) -> None:
    if criterion not in CRITERIA:
        raise AdvbgError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    if outcome.ndim != 2 or outcome.shape != (len(fg_class), len(bg_class)):
        raise AdvbgError(f"outcome matrix {outcome.shape} does not fit {len(fg_class)} foregrounds x "
                         f"{len(bg_class)} backgrounds")


def fooled_matrix(outcome: np.ndarray, fg_class: np.ndarray, bg_class: np.ndarray,
                  criterion: str = "bg-class") -> np.ndarray:
    """(F, B) bool: pair (f, b) fools under ``criterion``; False wherever f is not a target of b.

    Raises AdvbgError when a target pair was never evaluated (255): the ASR would be wrong, not just missing."""
    _check(outcome, fg_class, bg_class, criterion)
    return fooled_targets(outcome, fg_class, bg_class, criterion)




def _targets(fg_class: np.ndarray, cls: int) -> np.ndarray:
    fg_class = np.asarray(fg_class)
    return np.flatnonzero((fg_class >= 0) & (fg_class != cls))


@dataclass(frozen=True)
class GreedyCover:
    """Backgrounds picked one at a time to fool the most not-yet-fooled targets."""

    bg_id: np.ndarray          # (K',) picks in order (K' <= K: stops once no background adds a target)
    gain: np.ndarray           # (K',) targets newly fooled by each pick
    coverage: np.ndarray       # (K',) cumulative % of the class's targets fooled after each pick
    n_targets: int
    k: int                     # picks asked for
    n_left: int                # backgrounds of the class not picked

    @property
    def stopped_early(self) -> bool:
        """True when fewer than k picks were made because no remaining background adds a target."""
        return len(self.bg_id) < self.k and self.n_left > 0


def _class_columns(bg_class: np.ndarray, cls: int, ids: np.ndarray) -> np.ndarray:
    """Columns of the class's backgrounds, in ascending bg_id (so 'first maximum' = lowest bg_id)."""
    cols = np.flatnonzero(np.asarray(bg_class) == cls)
    return cols[np.argsort(ids[cols], kind="stable")]


def _greedy(sub: np.ndarray, ids: np.ndarray, k: int) -> GreedyCover:
    """sub: (T, Bc) bool fooled of targets x the class's backgrounds, columns in ascending bg_id."""
    n = sub.shape[0]
    covered = np.zeros(n, bool)
    subf = sub.astype(np.float32)              # float32 counts are exact below 2**24 targets
    picks, gains = [], []
    for _ in range(min(k, sub.shape[1])):
        gain = (~covered).astype(np.float32) @ subf                            # (Bc,) newly fooled per column
        j = int(np.argmax(gain))                                               # first maximum = lowest bg_id
        if gain[j] <= 0:
            break
        picks.append(j)
        gains.append(int(gain[j]))
        covered |= sub[:, j]
    gains_a = np.asarray(gains, np.int64)
    cov = 100.0 * np.cumsum(gains_a) / n if n else np.full(len(gains_a), np.nan)
    return GreedyCover(ids[np.asarray(picks, np.int64)], gains_a, cov.astype(np.float64), n, k,
                       sub.shape[1] - len(picks))


def highest_asr(asr_values: np.ndarray, bg_id: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest ASRs (NaN last; ties: lowest bg_id)."""
    a = np.where(np.isnan(asr_values), -np.inf, asr_values)
    return np.lexsort((bg_id, -a))[:k]


# --------------------------------------------------------------------------------------------- per class
@dataclass(frozen=True)
class ClassUniversal:
    """Universal-background numbers of one class (percentages in %; NaN where undefined)."""

    class_id: int
    class_name: str
    criterion: str
    bg_id: np.ndarray          # (Bc,) the class's backgrounds, ascending
    asr: np.ndarray            # (Bc,) ASR of each toward the class
    n_targets: int             # foregrounds of the other classes (the ASR denominator)
    union: float               # % of targets fooled by at least one background of the class
    top_bg: np.ndarray         # (k,) bg_ids of the highest ASRs
    top_asr: np.ndarray        # (k,)
    greedy: GreedyCover
    message: str | None = None  # why numbers are missing (no backgrounds / no targets)
    asr_k: np.ndarray | None = None   # (Bc,) targets each background fools (the ASR's k; n = n_targets)
    union_k: int = 0                  # targets fooled by at least one background of the class

    @property
    def n_backgrounds(self) -> int:
        return len(self.bg_id)

    @property
    def union_rate(self) -> Rate | None:
        """Total fooled as k/n targets with its 95% interval (None when undefined)."""
        return rate_or_none(self.union_k, self.n_targets) if self.n_backgrounds else None

    def asr_rate(self, bg: int) -> Rate | None:
        """The ASR of background ``bg`` (a bg_id of the class) as k/n targets with its 95% interval."""
        if self.asr_k is None or not self.n_targets:
            return None
        return rate(int(self.asr_k[np.searchsorted(self.bg_id, bg)]), self.n_targets)

    @property
    def top_rates(self) -> list[Rate | None]:
        return [self.asr_rate(int(b)) for b in self.top_bg]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["greedy"] = asdict(self.greedy)
        d["n_backgrounds"] = self.n_backgrounds
        d["union_rate"] = _rate_dict(self.union_rate)
        d["top_rates"] = [_rate_dict(r) for r in self.top_rates]
        return d


def _rate_dict(r: Rate | None) -> dict | None:
    return r.to_dict() if r is not None else None


def analyse(outcome: np.ndarray, fg_class: np.ndarray, bg_class: np.ndarray, class_names: Sequence[str],
            criterion: str = "bg-class", classes: Sequence[int] | None = None, top: int = 5, greedy: int = 5,
            bg_id: np.ndarray | None = None) -> list[ClassUniversal]:
    """Per-class ASRs, union, top-``top`` and greedy cover of ``greedy`` picks (``classes``: default all)."""
    if top < 0 or greedy < 0:
        raise AdvbgError(f"--top and --greedy must be >= 0 (got {top}, {greedy})")
    fg_class, bg_class = np.asarray(fg_class, np.int64), np.asarray(bg_class, np.int64)
    _check(outcome, fg_class, bg_class, criterion)
    ids = np.arange(len(bg_class)) if bg_id is None else np.asarray(bg_id, np.int64)
    classes = range(len(class_names)) if classes is None else classes
    if any(not 0 <= c < len(class_names) for c in classes):
        raise AdvbgError(f"classes must be in 0..{len(class_names) - 1} (got {list(classes)})")
    # Only the asked classes' columns are needed (and need to be evaluated): --class insect reads 1/9 of them.
    cols = np.flatnonzero(np.isin(bg_class, list(classes)))
    outcome, bg_class, ids = outcome[:, cols], bg_class[cols], ids[cols]
    fooled = fooled_matrix(outcome, fg_class, bg_class, criterion)        # (F, Bsel), once for all classes
    return [_one_class(fooled, fg_class, bg_class, ids, int(c), class_names[c], criterion, top, greedy)
            for c in classes]


def _one_class(fooled, fg_class, bg_class, ids, c: int, name: str, criterion: str, top: int,
               greedy: int) -> ClassUniversal:
    rows, cols = _targets(fg_class, c), _class_columns(bg_class, c, ids)
    sub = fooled[np.ix_(rows, cols)]                                      # (T, Bc)
    n = len(rows)
    a = asr_of(fooled[:, cols], target_mask(fg_class, bg_class[cols]))
    union = 100.0 * float(sub.any(1).mean()) if n and len(cols) else float("nan")
    order = highest_asr(a, ids[cols], top)
    message = None
    if not len(cols):
        message = f"class {name!r} has no backgrounds in this store: no ASR toward it"
    elif not n:
        message = f"no foregrounds of classes other than {name!r}: ASR undefined"
    return ClassUniversal(c, name, criterion, ids[cols], a, n, union, ids[cols][order], a[order],
                          _greedy(sub, ids[cols], greedy), message, sub.sum(0).astype(np.int64),
                          int(sub.any(1).sum()) if len(cols) else 0)


# --------------------------------------------------------------------------------------------- whole run
@dataclass(frozen=True)
class UniversalResult:
    """What ``advbg universal`` computed, plus where its outcome matrix came from."""

    criterion: str
    classes: tuple[ClassUniversal, ...]
    model: str                         # classifier tag
    label_map: str
    store: str
    sources: tuple[str, ...]           # results groups the outcome matrix was read from
    forwards: int                      # composites newly evaluated to complete the matrix (0 = all reused)
    computed: str | None = None        # results group written by the search that completed it
    n_unlabelled_backgrounds: int = 0  # left out (label -1)
    top: int = 5
    greedy: int = 5
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict:
        """JSON-ready (lists, None for NaN): what --results-file .json holds."""

        d = {k: getattr(self, k) for k in ("criterion", "model", "label_map", "store", "sources", "forwards",
                                           "computed", "n_unlabelled_backgrounds", "top", "greedy", "notes")}
        d["tie_rule"] = TIE_RULE
        d["rate_legend"] = RATE_LEGEND
        d["asr_definition"] = ("share (%) of the foregrounds of the other classes that the background fools "
                               f"under criterion {self.criterion!r}")
        d["classes"] = [c.to_dict() for c in self.classes]
        return _clean(d)

    def table_rows(self) -> list[dict]:
        """The per-class table (as in the paper's appendix), one dict per class."""
        rows = []
        for c in self.classes:
            row = dict(class_name=c.class_name, backgrounds=c.n_backgrounds, targets=c.n_targets,
                       total_fooled=c.union)
            for i in range(self.top):
                row[f"top{i + 1}_bg"] = int(c.top_bg[i]) if i < len(c.top_bg) else None
                row[f"top{i + 1}_asr"] = float(c.top_asr[i]) if i < len(c.top_asr) else None
            row[f"greedy{self.greedy}_coverage"] = float(c.greedy.coverage[-1]) if len(c.greedy.coverage) else (
                0.0 if c.n_backgrounds and c.n_targets else None)
            row["greedy_bg"] = " ".join(str(int(b)) for b in c.greedy.bg_id)
            row["note"] = c.message or ""
            row.update(_interval_cells("total_fooled", c.union_rate))   # intervals after the paper's columns
            tops = c.top_rates
            for i in range(self.top):
                row.update(_interval_cells(f"top{i + 1}_asr", tops[i] if i < len(tops) else None))
            rows.append(row)
        return rows

    def csv(self) -> str:
        buf = io.StringIO()
        rows = self.table_rows()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["class_name"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and np.isnan(v)) else
                            (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in r.items()})
        return buf.getvalue()


def _interval_cells(col: str, r: Rate | None) -> dict:
    """A rate's interval and counts beside its column: ``col_low``, ``col_high``, ``col_k`` (n: the targets)."""
    return {f"{col}_low": r.low if r else None, f"{col}_high": r.high if r else None, f"{col}_k": r.k if r else None}


def _pct(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"


def _short_rate(r: Rate | None) -> str:
    """``60.0 [26.2, 87.8]``: a table cell (k/n beside it in the detail and the JSON/CSV)."""
    return "-" if r is None else f"{r.rate:.1f} [{r.low:.1f}, {r.high:.1f}]"


def format_table(result: UniversalResult) -> str:
    """The terminal per-class table: backgrounds, targets, total fooled (union) % and top ASRs % with their 95%
    intervals (n = the class's targets), greedy cover."""
    w = 20 * result.top
    tops = f"top-{result.top} ASR % [95% Clopper-Pearson] of the targets"
    head = (f"{'class':<12}{'bgs':>6}{'targets':>9}  {'total fooled % [95% CI] (k/n)':<30}  {tops:<{w}}"
            f"{f'greedy-{result.greedy} %':>12}")
    lines = [head, "-" * len(head)]
    for c, row in zip(result.classes, result.table_rows()):
        if c.message:
            lines.append(f"{c.class_name:<12}{c.n_backgrounds:>6}{c.n_targets:>9}  {'-':<30}  {c.message}")
            continue
        tops = " ".join(f"{_short_rate(r):<19}" for r in c.top_rates)
        g = row[f"greedy{result.greedy}_coverage"]
        lines.append(f"{c.class_name:<12}{c.n_backgrounds:>6}{c.n_targets:>9}  {format_rate(c.union_rate):<30}  "
                     f"{tops:<{w}}{_pct(g) if result.greedy else '-':>12}")
    return "\n".join(lines)


def format_class(c: ClassUniversal, source_ids: Sequence[str] | None = None) -> str:
    """Detail of one class: its top backgrounds and the greedy cover, pick by pick."""
    if c.message:
        return c.message
    src = (lambda b: f"  {source_ids[b]}") if source_ids is not None else (lambda b: "")
    lines = [f"top {len(c.top_bg)} {c.class_name} backgrounds ({TIE_RULE}):",
             f"  {'rank':>4} {'bg_id':>7} {'ASR % [95% Clopper-Pearson] (k/n)':<34}"]
    lines += [f"  {i + 1:>4} {int(b):>7} {format_rate(r, 2):<34}{src(int(b))}"
              for i, (b, r) in enumerate(zip(c.top_bg, c.top_rates))]
    g = c.greedy
    lines.append(f"greedy cover of the {c.n_targets} targets ({len(g.bg_id)} pick{'' if len(g.bg_id) == 1 else 's'}"
                 + (f", stopped early: {_why_stopped(g)}" if g.stopped_early else "") + "):")
    lines.append(f"  {'pick':>4} {'bg_id':>7} {'+fooled':>8} {'coverage %':>11}")
    lines += [f"  {i + 1:>4} {int(b):>7} {int(n):>8} {cv:>11.2f}"
              for i, (b, n, cv) in enumerate(zip(g.bg_id, g.gain, g.coverage))]
    lines.append(f"union of all {c.n_backgrounds} {c.class_name} backgrounds: {format_rate(c.union_rate)} of targets "
                 f"fooled")
    return "\n".join(lines)


def _why_stopped(g: GreedyCover) -> str:
    if len(g.coverage) and g.coverage[-1] >= 100.0:
        return "every target is fooled"
    return "no remaining background fools another target"


def headline(result: UniversalResult) -> str:
    src = ", ".join(result.sources) or "none"
    new = (f"{result.forwards} composites newly evaluated (results {result.computed!r})" if result.forwards
           else "0 new forward passes")
    return (f"universal backgrounds | criterion {result.criterion} | model {result.model} (label map "
            f"{result.label_map}) | outcome matrix from: {src} | {new} | {result.n_unlabelled_backgrounds} "
            f"backgrounds without a class left out")
