"""The report's refine section: for each complete `advbg refine` result of the store, the fooling rate of the start
backgrounds vs refined under each budget (n and 95% intervals), the background robustness radius, the curve (fooling
rate vs EPS) and before/after rows (start background | refined | composite, prediction and margin) for the largest
L-infinity budget. Read through the results owner (``load_refine``), so a damaged file is refused in one line."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advbg.analysis.refineplots import refine_curve_figure
from advbg.data.store import Store
from advbg.search.refine import median_interval
from advbg.search.results import load_refine, refine_names
from advbg.stats import format_rate, rate

ROWS = 6        # before/after rows per refine result


@dataclass(frozen=True)
class RefineSection:
    name: str
    anchor: str
    facts: list[tuple[str, str]]
    budgets: list[dict]          # budget, start (rate text), refined (rate text), ssim, radius
    curve: str | None            # PNG data URI
    shown_budget: str
    rows: list[dict]             # start, refined, composite (data URIs), fg_id, start_bg, titles


def refine_sections(s: Store, thumb_uri, png_uri, size: int = 128) -> list[RefineSection]:
    """One section per complete refine result, oldest first; ``thumb_uri(img, size)`` and ``png_uri(fig)`` make
    the data URIs (the report's own helpers)."""
    names = sorted((n for n in refine_names(s) if s.results[n].attrs.get("complete")),
                   key=lambda n: str(s.results[n].attrs.get("completed", "")))
    return [_section(s, load_refine(s, n), i, thumb_uri, png_uri, size) for i, n in enumerate(names)]


def _section(s: Store, r, i: int, thumb_uri, png_uri, size: int) -> RefineSection:
    c = r.run.get("classifier", {})
    start = str(r.attrs.get("start", "worst"))
    n = len(r.fg_id)
    budgets, linf, others = [], [], {}
    fooled0 = r.cols["fooled_before"][0]
    real = rate(int(fooled0.sum()), n)
    for b, info in enumerate(r.budgets):
        after = rate(int(r.cols["fooled_after"][b].sum()), n)
        row = dict(budget=info["name"], start=format_rate(real), refined=format_rate(after),
                   ssim=f"{np.median(r.cols['ssim'][b]):.3f}", radius="")
        if info["name"] == "min-eps":
            med, lo, hi = median_interval(r.cols["eps"][b])
            text = lambda v: "0" if v == 0 else (">grid" if np.isinf(v) else f"{v * 255:g}/255")
            row["radius"] = f"median {text(med)} [{text(lo)}, {text(hi)}] (n={n})"
        elif info["name"].startswith("linf:"):
            linf.append((float(r.cols["eps"][b][0]), after))
        else:
            others[info["name"]] = (after.rate, after.low, after.high)
        budgets.append(row)
    curve = None
    if linf or others:
        linf.sort(key=lambda x: x[0])
        fig = refine_curve_figure([e for e, _ in linf], [(a.rate, a.low, a.high) for _, a in linf],
                                  (real.rate, real.low, real.high), n,
                                  f"{c.get('name', '?')}, criterion {r.attrs.get('criterion', '?')}, start {start}",
                                  others)
        curve = png_uri(fig)
    b = r.budget_index(None)
    facts = [("model", f"{c.get('name', '?')} ({c.get('architecture', '?')}.{c.get('weight_tag', '?')})"),
             ("criterion", str(r.attrs.get("criterion", "?"))), ("start", start),
             ("search", str(r.attrs.get("search", "?"))), ("foregrounds", str(n)),
             ("budgets", "; ".join(x["repr"] for x in r.budgets))]
    return RefineSection(r.name, f"refine-{i}", facts, budgets, curve, r.budgets[b]["name"],
                         _rows(s, r, b, thumb_uri, size))


def _rows(s: Store, r, b: int, thumb_uri, size: int) -> list[dict]:
    """Foregrounds the budget flipped first, then the lowest margins after."""
    c = r.budget_cols(b)
    flipped = c["fooled_after"] & ~c["fooled_before"]
    names = list(s.class_names)
    label = lambda k: names[k] if 0 <= k < len(names) else "none"
    out = []
    for k in np.lexsort((c["margin_after"], ~flipped))[:ROWS]:
        f, bg = int(r.fg_id[k]), int(r.start_bg[k])
        fg, mask = s.foregrounds.read([f])[0], s.foregrounds.read_masks([f])[0]
        refined = c["background"][k]
        comp = np.where(mask[..., None].astype(bool), fg, refined)
        out.append(dict(fg_id=f, start_bg=bg, start=thumb_uri(s.backgrounds.read([bg])[0], size),
                        refined=thumb_uri(refined, size), composite=thumb_uri(comp, size),
                        before=f"margin {c['margin_before'][k]:+.2f}, pred {label(int(c['pred_before'][k]))}",
                        after=f"margin {c['margin_after'][k]:+.2f}, pred {label(int(c['pred_after'][k]))}",
                        fooled=bool(c["fooled_after"][k]), ssim=f"{c['ssim'][k]:.3f}"))
    return out
