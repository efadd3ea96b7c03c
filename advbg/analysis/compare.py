"""One comparison table: a row per model of `advbg eval` files, or a row per search run, with n and intervals.

A ``Table`` holds named columns and rows whose cells are text, numbers, ``Rate`` or ``Gap``; it renders as
Markdown (a rate as ``54.5% [23.4, 83.3] (6/11)``), CSV (a rate spread over ``col``, ``col_low``, ``col_high``,
``col_k``, ``col_n``) or JSON (a rate as its dict).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from advbg.analysis.card import criterion_name
from advbg.analysis.evalreport import load_results
from advbg.analysis.evaluate import ordered_variants
from advbg.errors import AdvbgError
from advbg.models.classifier import identity_of
from advbg.search.results import SearchResult
from advbg.search.strategies import prune_label
from advbg.stats import GAP_LEGEND, RATE_LEGEND, Gap, Rate, format_gap, format_rate, rate

FORMATS = ("md", "csv", "json")


@dataclass(frozen=True)
class Table:
    """Columns and rows (dicts column -> cell) of a comparison, with a title and notes said once under it."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        head = ["| " + " | ".join(self.columns) + " |", "|" + "|".join("---" for _ in self.columns) + "|"]
        body = ["| " + " | ".join(_text(r.get(c)).replace("|", "\\|") for c in self.columns) + " |"
                for r in self.rows]
        return "\n".join([f"## {self.title}", "", *head, *body, "", *(f"{n}  " for n in self.notes)]).rstrip() + "\n"

    def to_csv(self) -> str:
        cols = [sub for c in self.columns for sub in _csv_columns(c, self.rows)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in self.rows:
            flat: dict[str, Any] = {}
            for c in self.columns:
                flat.update(_csv_cells(c, r.get(c)))
            w.writerow(["" if flat.get(c) is None else flat[c] for c in cols])
        return buf.getvalue()

    def to_json(self) -> str:
        rows = [{c: _json(r.get(c)) for c in self.columns} for r in self.rows]
        return json.dumps(dict(title=self.title, columns=self.columns, notes=self.notes, rows=rows), indent=2,
                          allow_nan=False) + "\n"

    def render(self, fmt: str) -> str:
        if fmt not in FORMATS:
            raise AdvbgError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return {"md": self.to_markdown, "csv": self.to_csv, "json": self.to_json}[fmt]()


def _text(v) -> str:
    if isinstance(v, Rate):
        return format_rate(v)
    if isinstance(v, Gap):
        return format_gap(v)
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _json(v):
    if isinstance(v, (Rate, Gap)):
        return v.to_dict()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _csv_columns(c: str, rows: Sequence[dict]) -> list[str]:
    kinds = {type(r.get(c)) for r in rows}
    if Rate in kinds:
        return [c, f"{c}_low", f"{c}_high", f"{c}_k", f"{c}_n"]
    if Gap in kinds:
        return [c, f"{c}_low", f"{c}_high", f"{c}_n"]
    return [c]


def _csv_cells(c: str, v) -> dict:
    if isinstance(v, Rate):
        return {c: v.rate, f"{c}_low": v.low, f"{c}_high": v.high, f"{c}_k": v.k, f"{c}_n": v.n}
    if isinstance(v, Gap):
        return {c: v.diff, f"{c}_low": v.low, f"{c}_high": v.high, f"{c}_n": v.n}
    return {c: _json(v)}


def detect_format(out: str | os.PathLike | None, fmt: str | None) -> str:
    """md, csv or json: as given, else from the output's suffix (.md, .csv, .json), else md."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise AdvbgError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".") if out is not None else ""
    return {"md": "md", "markdown": "md", "csv": "csv", "json": "json"}.get(suffix, "md")


# --------------------------------------------------------------------------------------------- eval files
def eval_table(files: Sequence[str | os.PathLike], k: int = 1) -> Table:
    """A row per (file, model) of `advbg eval --results-file` JSON files: every variant's top-k accuracy (k/n with
    its interval) and BG-Gap (paired interval where the file has one)."""
    if not files:
        raise AdvbgError("give at least one `advbg eval` JSON results file")
    loaded = [(str(f), load_results(f)) for f in files]
    variants = ordered_variants(list(dict.fromkeys(v for _, d in loaded for m in d["models"]
                                                   for v in (m.get("accuracy") or {}))))
    rows = [_eval_row(f, d, m, variants, k) for f, d in loaded for m in d["models"]]
    if not rows:
        raise AdvbgError("the results files hold no models")
    cols = ["model", "weights", "store", *variants, "BG-Gap", "file"]
    return Table(f"Accuracy per variant (top-{k}, %)", cols, rows, [RATE_LEGEND, GAP_LEGEND])


def _eval_row(file: str, data: dict, m: dict, variants: list[str], k: int) -> dict:
    ident = m["model"]
    sha = ident.get("weights_sha256") or (ident.get("cached_weights") or {}).get("sha256")
    row: dict[str, Any] = dict(model=ident["name"] + (" (baseline)" if m.get("baseline") else ""),
                               weights=(sha or "")[:12] or "-", store=(data.get("store") or {}).get("digest", "-"),
                               file=Path(file).name)
    for v in variants:
        s = (m.get("accuracy") or {}).get(v)
        hits, n = ((s or {}).get("correct") or {}).get(f"top{k}"), (s or {}).get("n")
        usable = s is not None and (s.get("topk") or {}).get(f"top{k}") is not None
        row[v] = rate(int(hits), int(n)) if usable and n else None
    gap = m.get("bg_gap_interval")
    row["BG-Gap"] = (Gap(**gap) if gap else m.get("bg_gap")) if k == 1 else None
    return row


# --------------------------------------------------------------------------------------------- search runs
def search_table(results: Sequence[SearchResult]) -> Table:
    """A row per complete search run: model and weights hash, criterion, mode, n, k/n vulnerable with the
    fooling rate's interval, composites evaluated, date; a pruned (or otherwise partial-pool) run's recall of the
    vulnerable foregrounds against an exhaustive run of the same classifier and criterion in ``results``."""
    if not results:
        raise AdvbgError("no complete search results to compare; run `advbg search` first")
    cols = ["model", "weights", "criterion", "mode", "n", "fooling rate", "challenge accuracy",
            "composites", "date", "recall", "results"]
    rows = [_search_row(r, results) for r in results]
    return Table("Search runs", cols, rows, [RATE_LEGEND, "recall: vulnerable foregrounds found / vulnerable in the "
                                                          "exhaustive run of the same classifier and criterion"])


def _search_row(r: SearchResult, everyone: Sequence[SearchResult]) -> dict:
    c, n, k = r.run.classifier, len(r), int(r.fooled.sum())
    fooling = rate(k, n)
    mode = r.run.mode
    if r.run.pruning:
        mode = prune_label(r.run.pruning) + (", early exit" if r.run.mode == "early-exit" else "")
    return {"model": c["name"], "weights": (c.get("weights_sha256") or "")[:12] or "-",
            "criterion": criterion_name(r.run.criterion), "mode": mode, "n": n, "fooling rate": fooling,
            "challenge accuracy": fooling.complement(), "composites": int(r.run.forwards),
            "date": r.run.started, "recall": recall(r, everyone), "results": r.results_name}


def _same_setting(a: SearchResult, b: SearchResult) -> bool:
    return (identity_of(a.run.classifier) == identity_of(b.run.classifier)
            and criterion_name(a.run.criterion) == criterion_name(b.run.criterion)
            and a.run.store_digest == b.run.store_digest)


def _exhaustive_reference(r: SearchResult, everyone: Sequence[SearchResult]) -> SearchResult | None:
    """The exhaustive run in ``everyone`` of ``r``'s classifier, criterion and store (None when ``r`` is itself
    exhaustive or there is none)."""
    if r.run.mode == "exhaustive" and not r.run.pruning:
        return None
    return next((e for e in everyone if e is not r and e.run.mode == "exhaustive" and not e.run.pruning
                 and _same_setting(r, e)), None)


def recall(r: SearchResult, everyone: Sequence[SearchResult]) -> Rate | None:
    """Of the foregrounds an exhaustive run (same classifier, criterion, store) found vulnerable, the share ``r``
    found vulnerable too; None for an exhaustive run itself or when there is no such run or nothing to find."""
    ref = _exhaustive_reference(r, everyone)
    if ref is None:
        return None
    truth = set(ref.fg_id[ref.fooled].tolist())
    if not truth:
        return None
    found = truth & set(r.fg_id[r.fooled].tolist())
    return rate(len(found), len(truth))


@dataclass(frozen=True)
class PrunedRecall:
    """A pruned (partial-pool) run against the exhaustive run ``reference`` of the same classifier, criterion and
    store, over their common foregrounds: vulnerable ones found, worst backgrounds found, median margin gap."""

    reference: str | None
    vulnerable: Rate | None        # vulnerable foregrounds found / vulnerable in the exhaustive run
    worst_found: Rate              # foregrounds whose worst background equals the exhaustive one / common ones
    median_margin_gap: float       # median of (pruned worst margin - exhaustive worst margin), >= 0
    n: int                         # common foregrounds

    def line(self) -> str:
        found = format_rate(self.vulnerable) if self.vulnerable else "- (the exhaustive run found none)"
        return (f"recall against the exhaustive run {self.reference}: vulnerable found {found}; worst background "
                f"found {format_rate(self.worst_found)}; median margin gap {self.median_margin_gap:.3f} "
                f"(n={self.n}; {RATE_LEGEND})")


def pruned_recall(r: SearchResult, everyone: Sequence[SearchResult]) -> PrunedRecall | None:
    """``r``'s recall against an exhaustive run in ``everyone`` of the same setting; None when ``r`` is itself
    exhaustive or there is no such run or no foreground in common."""
    ref = _exhaustive_reference(r, everyone)
    if ref is None:
        return None
    common, ri, ei = np.intersect1d(r.fg_id, ref.fg_id, return_indices=True)
    if not common.size:
        return None
    same = int(np.count_nonzero(r.worst_bg[ri] == ref.worst_bg[ei]))
    gap = r.worst_margin[ri] - ref.worst_margin[ei]
    gap = gap[np.isfinite(gap)]
    return PrunedRecall(ref.results_name, recall(r, [ref]), rate(same, int(common.size)),
                        float(np.median(gap)) if gap.size else float("nan"), int(common.size))
