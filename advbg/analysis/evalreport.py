"""What people read from an evaluation: the terminal tables, JSON/CSV results, the bar chart and the scatter plot."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from advbg.analysis.evaluate import (
    IMAGENET_TOP1_SOURCE,
    PAPER_COLUMNS,
    EvalReport,
    ModelResult,
    ordered_variants,
)
from advbg.analysis.plots import pyplot, rate_yerr, subplots
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, save_figure, write_json
from advbg.stats import GAP_LEGEND, RATE_LEGEND, Rate, format_gap, format_rate, rate_or_none

RESULTS_FORMATS = ("json", "csv")


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _numeric(cell) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return cell == "-"
    return True


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text table: text columns left-aligned, numeric ones right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    text = [i == 0 or not all(_numeric(r[i]) for r in rows) for i in range(len(headers))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if t else str(c).rjust(w)  # noqa: E731
                              for c, w, t in zip(r, widths, text))
    return "\n".join([fmt(headers), *(fmt(r) for r in rows)])


def identity_line(m: ModelResult) -> str:
    """One line naming exactly what was evaluated."""
    i = m.identity
    parts = [f"{i['tag']}", f"label map {i['label_map']}"]
    if i.get("weights_sha256"):
        parts.append(f"sha256 {i['weights_sha256'][:16]}")
    elif i.get("cached_weights"):
        parts.append(f"cached weights sha256 {i['cached_weights']['sha256'][:16]}")
    if i.get("checkpoint_keys"):
        parts.append(i["checkpoint_keys"]["summary"])
    parts.append(f"norm mean {tuple(round(v, 4) for v in i['mean'])} std {tuple(round(v, 4) for v in i['std'])}"
                 + (f" ({i['norm_source']})" if i.get("norm_source") else ""))
    parts.append(f"timm {i['timm_version']}, torch {i['torch_version']}")
    return f"{m.name}{' (baseline)' if m.baseline else ''}: " + ", ".join(parts)


def _sources(report: EvalReport) -> str:
    by: dict[str, list[str]] = {}
    for p in report.plans:
        if p.name not in report.skipped:
            key = (f"{p.origin} sets /evalsets/* of {Path(p.file or '').name}" if p.source == "evalset"
                   else f"generated from the foregrounds (seed {report.config.seed})")
            by.setdefault(key, []).append(p.name)
    return "; ".join(f"{src}: {', '.join(v)}" if len(by) > 1 else src for src, v in by.items())


def format_report(report: EvalReport) -> str:
    """The terminal output of ``advbg eval``."""
    s = report.store
    lines = [identity_line(m) for m in report.models]
    lines.append(f"store {s['path']} (digest {s['digest']}, {s['foregrounds']} foregrounds, "
                 f"{len(s['class_names'])} classes); images: {_sources(report)}")
    lines.append(f"accuracy = {report.label_rule}")
    lines.append(f"{RATE_LEGEND}; {GAP_LEGEND}")
    for v, why in report.skipped.items():
        lines.append(f"skipped {v}: {why}")
    lines.append("")
    if len(report.models) == 1:
        lines += [detail_table(report.models[0], report), "", per_class_table(report.models[0], report)]
    else:
        lines += ["top-1 accuracy (%):", model_table(report, k=1)]
        for k in report.config.top_k:
            if k > 1 and any(m.scores[v].topk.get(k) is not None for m in report.models for v in m.scores):
                lines += ["", f"top-{k} accuracy (%):", model_table(report, k=k, gap=False)]
        if report.baseline:
            lines += ["", f"top-1 accuracy relative to {report.baseline} (ratio):", relative_table(report)]
        known = [m for m in report.models if m.identity.get("imagenet_top1") is not None]
        if known:
            lines += ["", "ImageNet-1k top-1 (%, " + IMAGENET_TOP1_SOURCE + "): "
                      + ", ".join(f"{m.name} {m.identity['imagenet_top1']:.2f}" for m in known)]
    return "\n".join(lines)


def detail_table(m: ModelResult, report: EvalReport) -> str:
    """One model: a row per variant (source, images, top-k, none rate, relative accuracy), then BG-Gap."""
    ks = list(report.config.top_k)
    plans = {p.name: p for p in report.plans}
    headers = ["variant", "source", "n", *(f"top-{k}" for k in ks), "none"]
    rows = []
    for v, sc in m.scores.items():
        rows.append([v, plans[v].label, str(sc.n), *(format_rate(sc.rate(k)) for k in ks),
                     format_rate(_none_rate(sc))])
    text = _table(headers, rows)
    same, rand = m.scores.get("mixed_same"), m.scores.get("mixed_rand")
    if m.bg_gap is not None:
        text += (f"\nBG-Gap = mixed_same - mixed_rand = {_num(same.top1)} - {_num(rand.top1)} = "
                 f"{_gap_text(m)} points")
    else:
        text += "\nBG-Gap: needs both mixed_same and mixed_rand"
    return text


def _none_rate(sc) -> Rate | None:
    """The share of top-1 predictions in no class, as a Rate (none_rate is k/n in percent)."""
    return None if sc.none_rate is None else rate_or_none(round(sc.none_rate * sc.n / 100), sc.n)


def _gap_text(m: ModelResult) -> str:
    """BG-Gap with its paired interval, or bare with the reason there is none."""
    if m.bg_gap_interval is not None:
        return format_gap(m.bg_gap_interval)
    return "-" if m.bg_gap is None else f"{m.bg_gap:.1f} (no interval: mixed_same and mixed_rand are not paired)"


def per_class_table(m: ModelResult, report: EvalReport) -> str:
    """Top-1 accuracy per class (columns: classes with images), a row per variant."""
    names = [c for c in report.store["class_names"] if any(sc.class_counts[c] for sc in m.scores.values())]
    rows = [[v, *(format_rate(sc.class_rate(c)) for c in names)] for v, sc in m.scores.items()]
    return "per-class top-1 accuracy (%):\n" + _table(["variant", *names], rows)


def model_table(report: EvalReport, k: int = 1, gap: bool = True) -> str:
    """A row per model; columns in the paper's order (original, only_bg_t, mixed_same, mixed_rand, BG-Gap)."""
    variants = report.variants
    paper = [v for v in variants if v in PAPER_COLUMNS]
    rest = [v for v in variants if v not in PAPER_COLUMNS]
    headers = ["model", *paper, *(["BG-Gap"] if gap else []), *rest]
    rows = []
    for m in report.models:
        cell = lambda v: format_rate(m.scores[v].rate(k)) if v in m.scores else "-"  # noqa: E731
        rows.append([m.name + (" (baseline)" if m.baseline else ""), *(cell(v) for v in paper),
                     *([_gap_text(m)] if gap else []), *(cell(v) for v in rest)])
    return _table(headers, rows)


def relative_table(report: EvalReport) -> str:
    variants = report.variants
    rows = [[m.name, *(_num((m.relative or {}).get(v, {}).get(1), 3) for v in variants)] for m in report.models]
    return _table(["model", *variants], rows)


# --------------------------------------------------------------------------------------------- files
def results_format_of(path: Path | None, fmt: str | None) -> str:
    """json or csv: as given, else from the file suffix (json unless it ends in .csv)."""
    if fmt is None:
        return "csv" if path is not None and Path(path).suffix.lower() == ".csv" else "json"
    if fmt not in RESULTS_FORMATS:
        raise AdvbgError(f"--results-format must be json or csv, got {fmt!r}")
    return fmt


def to_csv(report: EvalReport) -> str:
    """A row per model (timm's results-file convention): identity, top-k per variant, BG-Gap, relative top-1."""
    variants, ks = report.variants, list(report.config.top_k)
    cols = ["model", "tag", "source", "weights_sha256", "label_map", "baseline",
            *(f"{v}_top{k}" for v in variants for k in ks), "bg_gap"]
    if report.baseline:
        cols += [f"{v}_rel_top1" for v in variants]
    # intervals after the point estimates, so the timm-style leading columns stay as they were
    cols += [*(f"{v}_n" for v in variants), *(f"{v}_top{k}_{b}" for v in variants for k in ks for b in ("low", "high")),
             "bg_gap_low", "bg_gap_high", "bg_gap_n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for m in report.models:
        i = m.identity
        sha = i.get("weights_sha256") or (i.get("cached_weights") or {}).get("sha256") or ""
        row = [m.name, i["tag"], i["source"], sha, i["label_map"], int(m.baseline),
               *(_num(m.scores[v].topk.get(k), 4) if v in m.scores else "" for v in variants for k in ks),
               _num(m.bg_gap, 4)]
        if report.baseline:
            row += [_num((m.relative or {}).get(v, {}).get(1), 6) for v in variants]
        row += _csv_intervals(m, variants, ks)
        w.writerow(["" if c == "-" else c for c in row])
    return buf.getvalue()


def _csv_intervals(m: ModelResult, variants: Sequence[str], ks: Sequence[int]) -> list[str]:
    rates = {(v, k): m.scores[v].rate(k) if v in m.scores else None for v in variants for k in ks}
    g = m.bg_gap_interval
    return [*(str(m.scores[v].n) if v in m.scores else "" for v in variants),
            *(_num(getattr(rates[v, k], b), 4) if rates[v, k] else "" for v in variants for k in ks
              for b in ("low", "high")),
            *((_num(g.low, 4), _num(g.high, 4), str(g.n)) if g is not None else ("", "", ""))]


def write_results(path: str | os.PathLike, report: EvalReport, fmt: str = "json") -> Path:
    """Write the report as JSON (everything) or CSV (one row per model); atomically."""
    if fmt == "csv":
        return atomic_write_text(path, to_csv(report))
    return write_json(path, report.to_dict())


def bar_chart(report: EvalReport, path: str | os.PathLike) -> Path:
    """PNG: top-1 accuracy per variant, one bar per model with its 95% interval, BG-Gap (and its interval) in the
    legend."""

    variants, models = report.variants, report.models
    x = np.arange(len(variants))
    width = 0.8 / max(1, len(models))
    fig, ax = subplots(figsize=(max(6.0, 0.55 * len(variants) * max(1, len(models)) ** 0.5 + 2), 4.2))
    for j, m in enumerate(models):
        vals = [m.scores[v].top1 if v in m.scores and m.scores[v].top1 is not None else np.nan for v in variants]
        label = f"{m.name}{' (baseline)' if m.baseline else ''}, BG-Gap {_gap_text(m)}"
        rates = [m.scores[v].rate(1) if v in m.scores else None for v in variants]
        bars = ax.bar(x + (j - (len(models) - 1) / 2) * width, vals, width, label=label,
                      hatch="//" if m.baseline else None, yerr=rate_yerr(rates), capsize=2, error_kw=dict(lw=0.8))
        if len(models) == 1:
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, variants, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 100 + 12 * ((len(models) + 2) // 3))   # headroom for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy per variant: {Path(report.store['path']).name} (error bars: 95% Clopper-Pearson; "
                 f"BG-Gap: 95% paired bootstrap)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=min(3, len(models)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------- advbg plot
def load_results(path: str | os.PathLike) -> dict:
    """A JSON results file written by ``advbg eval --results-file x.json`` (checked)."""
    p = Path(path)
    if not p.is_file():
        raise AdvbgError(f"results file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdvbgError(f"{p} is not JSON ({e}); `advbg plot` reads the JSON of `advbg eval --results-file`") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or "label_rule" not in data:
        raise AdvbgError(f"{p} is not an `advbg eval` results file (no models / label_rule)")
    return data


def scatter_points(files: Sequence[str | os.PathLike]) -> list[dict]:
    """One point per (file, model): name, top-1 per variant, BG-Gap."""
    points = []
    for f in files:
        for m in load_results(f)["models"]:
            acc = {v: (s.get("topk") or {}).get("top1") for v, s in (m.get("accuracy") or {}).items()}
            rates = {v: _top1_rate(s) for v, s in (m.get("accuracy") or {}).items()}
            points.append(dict(name=m["model"]["name"], tag=m["model"].get("tag"), file=str(f), top1=acc,
                               bg_gap=m.get("bg_gap"), rates=rates, gap=m.get("bg_gap_interval")))
    if not points:
        raise AdvbgError("the results files hold no models")
    return points


def _top1_rate(score: dict) -> Rate | None:
    k, n = (score.get("correct") or {}).get("top1"), score.get("n")
    return rate_or_none(int(k), int(n)) if k is not None and n and (score.get("topk") or {}).get("top1") is not None \
        else None


def _err(r: Rate | None) -> np.ndarray | None:
    return None if r is None else rate_yerr([r])


def scatter_plot(files: Sequence[str | os.PathLike], out: str | os.PathLike, variants: str = "paper") -> Path:
    """PNG: accuracy on original (x) vs each variant (y), a point per model, plus BG-Gap vs original."""
    points = scatter_points(files)
    have = ordered_variants(list(dict.fromkeys(v for p in points for v in p["top1"])))
    if "original" not in have:
        raise AdvbgError("the results hold no accuracy on 'original'; evaluate with --variants including original")
    if variants in ("paper", ""):
        panels = [v for v in PAPER_COLUMNS[1:] if v in have]
    elif variants == "all":
        panels = [v for v in have if v != "original"]
    else:
        panels = [v.strip() for v in variants.split(",") if v.strip()]
        missing = [v for v in panels if v not in have]
        if missing:
            raise AdvbgError(f"no results for variant(s) {', '.join(missing)}; the files have: {', '.join(have)}")
    panels = [v for v in panels if v != "original"]
    with_gap = any(p["bg_gap"] is not None for p in points)
    n = len(panels) + with_gap
    if n == 0:
        raise AdvbgError("nothing to plot besides 'original'; evaluate more variants")
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, v in zip(axes.flat, panels + (["BG-Gap"] if with_gap else [])):
        for p in points:
            x, y = p["top1"].get("original"), (p["bg_gap"] if v == "BG-Gap" else p["top1"].get(v))
            if x is None or y is None:
                continue
            g = p["gap"] if v == "BG-Gap" else None
            if v == "BG-Gap":
                yerr = np.array([[y - g["low"]], [g["high"] - y]]) if g else None
            else:
                yerr = _err(p["rates"].get(v))
            ax.errorbar([x], [y], xerr=_err(p["rates"].get("original")), yerr=yerr, fmt="o", ms=4, capsize=2, lw=0.8)
            ax.annotate(p["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if v != "BG-Gap":
            ax.plot([0, 100], [0, 100], ls="--", lw=0.8, color="gray")
            ax.set_ylim(-2, 102)
        ax.set_xlim(-2, 102)
        ax.set_xlabel("top-1 on original (%)", fontsize=8)
        ax.set_ylabel(f"{v} (points)" if v == "BG-Gap" else f"top-1 on {v} (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Accuracy on original vs each variant (one point per model; error bars: 95% Clopper-Pearson, "
                 "BG-Gap: 95% paired bootstrap)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------- vs ImageNet accuracy
def imagenet_points(report: EvalReport) -> tuple[list[ModelResult], list[str]]:
    """Models with a known ImageNet top-1 (sorted by it), and the names of those without one."""
    known = sorted((m for m in report.models if m.identity.get("imagenet_top1") is not None),
                   key=lambda m: m.identity["imagenet_top1"])
    return known, [m.name for m in report.models if m.identity.get("imagenet_top1") is None]


def imagenet_plot(report: EvalReport, path: str | os.PathLike) -> Path:
    """PNG: top-1 on each evaluated variant (a line each) against the models' ImageNet top-1, and BG-Gap."""
    plt = pyplot()
    known, _ = imagenet_points(report)
    if len(known) < 2:
        raise AdvbgError("the accuracy-vs-ImageNet plot needs at least two models with a known ImageNet top-1 "
                         "(advbg/lite0, advbg/lite1, advbg/lite2)")
    x = [m.identity["imagenet_top1"] for m in known]
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw=dict(width_ratios=(3, 1.2)))
    colors = plt.get_cmap("tab20").colors
    for j, v in enumerate(report.variants):
        y = [m.scores[v].top1 if v in m.scores and m.scores[v].top1 is not None else float("nan") for m in known]
        style = "-" if v in PAPER_COLUMNS else "--"
        yerr = rate_yerr([m.scores[v].rate(1) if v in m.scores else None for m in known])
        ax.errorbar(x, y, yerr=yerr, fmt=style, marker="os^Dv<>p"[j % 8], ms=4, lw=1.2 if v in PAPER_COLUMNS else 0.9,
                    label=v, color=colors[j % len(colors)], capsize=2, elinewidth=0.6)
    for xi, m in zip(x, known):
        ax.axvline(xi, color="gray", lw=0.5, alpha=0.4)
        ax.annotate(m.name, (xi, 1), fontsize=7, rotation=90, va="bottom", ha="right", color="gray")
    ax.set_xlabel(f"ImageNet-1k top-1 (%), {IMAGENET_TOP1_SOURCE}", fontsize=7)
    ax.set_ylabel("top-1 on the variant (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    gaps = [m.bg_gap if m.bg_gap is not None else float("nan") for m in known]
    ci = [m.bg_gap_interval for m in known]
    gerr = np.array([[g.diff - g.low if g else np.nan for g in ci], [g.high - g.diff if g else np.nan for g in ci]])
    gap.errorbar(x, gaps, yerr=gerr, marker="o", color="black", capsize=2, elinewidth=0.6)
    gap.set_xlabel("ImageNet-1k top-1 (%)", fontsize=7)
    gap.set_ylabel("BG-Gap = mixed_same - mixed_rand (points)", fontsize=8)
    gap.grid(alpha=0.3)
    fig.suptitle(f"Accuracy per variant vs ImageNet accuracy ({Path(report.store['path']).name}, "
                 f"{report.store['foregrounds']} foregrounds; error bars: 95% intervals)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
