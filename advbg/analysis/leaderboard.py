"""The leaderboard: result cards of one store and one criterion, ranked by challenge accuracy with intervals, as
Markdown or a self-contained HTML page."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import jinja2

from advbg.errors import AdvbgError
from advbg.stats import RATE_LEGEND, Rate, format_rate, rate_from_dict

FORMATS = ("md", "html")


@dataclass(frozen=True)
class Entry:
    """One ranked card."""

    rank: int
    model: str
    weights: str
    label_map: str
    norm: str
    mode: str
    accuracy: Rate
    fooling: Rate
    versions: str
    source: str


@dataclass(frozen=True)
class Board:
    store_digest: str
    data_name: str
    criterion: str
    entries: list[Entry]


def build_board(cards: Sequence[tuple[str, dict]]) -> Board:
    """Rank (source, checked card) pairs by challenge accuracy (then by the interval's lower bound, then name);
    cards of different store digests or criteria are refused."""
    if not cards:
        raise AdvbgError("give at least one result card")
    _require_same(cards, lambda c: c["data"]["store_digest"], "store digests",
                  "rank cards of one store (the same data) in one table")
    _require_same(cards, lambda c: c["criterion"], "criteria", "a rate under 'any' and one under 'bg-class' "
                                                               "measure different things")
    order = sorted(cards, key=lambda sc: (-sc[1]["challenge_accuracy"]["rate"], -sc[1]["challenge_accuracy"]["low"],
                                          sc[1]["model"]["name"]))
    entries, rank, prev = [], 0, None
    for i, (src, c) in enumerate(order):
        acc = rate_from_dict(c["challenge_accuracy"])
        if (acc.k, acc.n) != prev:
            rank, prev = i + 1, (acc.k, acc.n)
        m = c["model"]
        mode = c["mode"] + (f" (pruned: {c['pruning']})" if c.get("pruning") else "")
        entries.append(Entry(rank, m["name"], (m.get("weights_sha256") or "-")[:12], m["label_map"],
                             m["norm_source"] or "-", mode, acc, rate_from_dict(c["fooling_rate"]),
                             f"advbg {c['versions']['advbg']}, torch {c['versions']['torch']}, "
                             f"timm {c['versions']['timm']}", src))
    first = order[0][1]
    return Board(first["data"]["store_digest"], first["data"]["name"], first["criterion"], entries)


def _require_same(cards, key, what: str, why: str) -> None:
    seen: dict[str, str] = {}
    for src, c in cards:
        seen.setdefault(str(key(c)), src)
    if len(seen) > 1:
        listed = "; ".join(f"{v} in {s}" for v, s in seen.items())
        raise AdvbgError(f"cards of different {what} ({listed}); {why}")


def to_markdown(board: Board) -> str:
    """The board as a Markdown table with the data, criterion and interval kind said once above it."""
    lines = [f"# Leaderboard: {board.data_name} (store digest {board.store_digest}), criterion {board.criterion}",
             "", f"Ranked by challenge accuracy (100 - fooling rate); {RATE_LEGEND}.", "",
             "| rank | model | weights sha256 | label map | norm | mode | challenge accuracy | fooling rate "
             "| versions |",
             "|---:|---|---|---|---|---|---|---|---|"]
    for e in board.entries:
        cells = [str(e.rank), e.model, e.weights, e.label_map, e.norm, e.mode, format_rate(e.accuracy),
                 format_rate(e.fooling), e.versions]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(board: Board) -> str:
    """The board as one HTML page that loads nothing from outside itself."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["rate"] = format_rate
    text = (resources.files("advbg.analysis") / "templates" / "leaderboard.html.j2").read_text(encoding="utf-8")
    return env.from_string(text).render(b=board, legend=RATE_LEGEND)
