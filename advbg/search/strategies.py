"""Pruned search: each foreground is tried on only K candidate backgrounds, chosen from the classifier's own
embeddings of the store (``advbg index``), instead of on all B.

Candidate rules (compared in benchmarks/prune_recall.py):
  - ``score``: the classifier-weight rule. A background ranks by its own margin against the foreground's class,
    i.e. its mapped class scores alone (the background's features through the classifier weights):
    min over competing classes c of s_t(bg) - s_c(bg). Knows nothing about the foreground but its class.
  - ``mix`` (default): a composite's logits are modelled as the area-weighted mix of the foreground alone and the
    background alone (exact for a global-average-pooled network whose features are local, as a first order):
    predicted margin = min_c a (s_t(fg) - s_c(fg)) + (1 - a) (s_t(bg) - s_c(bg)), a = share of the image the
    object covers. So a small or weak foreground is matched with backgrounds that push its runner-up class.
  - ``neighbours``: two stages, the "fooler-neighbours" rule. Stage 1 evaluates the top half of the ``mix``
    ranking. Stage 2 spends the other half on FAISS neighbours: the stage-1 worst background of the foreground
    itself and of its nearest foregrounds (cosine of their features), then those backgrounds' nearest
    backgrounds, taken round-robin; any budget left goes to further ``mix`` ranks.
  - ``random``: K backgrounds drawn at random per foreground (the baseline every rule must beat).
With the ``bg-class`` criterion only backgrounds of another class can fool, so ``score``/``mix`` rank those
first by the predicted margin toward the background's own class.

Trial order: in exhaustive mode each foreground's candidates are handed to the engine in pool order, so with
K = B a pruned search is the exhaustive search, field for field, and "first fooling background" keeps its
meaning (first in pool order among those evaluated). In early-exit mode they go best-ranked first.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.search import distributed
from advbg.search.config import Candidates, SearchConfig
from advbg.search.index import (
    Embeddings,
    IndexSet,
    build_indexes,
    index_path,
    load_embeddings,
    open_indexes,
)
from advbg.search.results import RunId, RunRecord, SearchResult, fingerprint, group_attrs, results_path, write_result
from advbg.search.runner import default_results_name, search

RULES = ("mix", "score", "neighbours", "random")
DEFAULT_RULE = "mix"
N_FG_NEIGHBOURS = 8        # similar foregrounds whose stage-1 worst background seeds stage 2
STAGE1_SHARE = 0.5         # share of K the neighbours rule spends on its mix stage
_BLOCK_ELEMS = 1 << 24     # (foregrounds x backgrounds x classes) floats scored at once: ~64 MB


@dataclass(frozen=True)
class PruneSpec:
    """How many candidates per foreground (``k``, or ``ratio`` of the pool) and the rule that picks them."""

    rule: str = DEFAULT_RULE
    k: int | None = None
    ratio: float | None = None
    seed: int = 0

    def __post_init__(self):
        self.validate()   # valid by construction

    def validate(self) -> None:
        if self.rule not in RULES:
            raise AdvbgError(f"unknown prune rule {self.rule!r}; use one of: {', '.join(RULES)}")
        if (self.k is None) == (self.ratio is None):
            raise AdvbgError("give exactly one of --prune K and --prune-ratio R")
        if self.k is not None and self.k < 1:
            raise AdvbgError(f"--prune K must be at least 1 (got {self.k})")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise AdvbgError(f"--prune-ratio must be in (0, 1] (got {self.ratio})")

    def resolve_k(self, n_pool: int) -> int:
        """Candidates per foreground for a pool of ``n_pool`` backgrounds: K, or the ratio's share of the pool
        rounded down (a budget: never more than that share), at least 1 and at most the pool."""
        k = self.k if self.k is not None else math.floor(self.ratio * n_pool + 1e-9)
        return max(1, min(int(k), n_pool))

    def describe(self, n_pool: int) -> str:
        """Stored with the results (and part of the default results name): e.g. ``mix-k40``."""
        return f"{self.rule}-k{self.resolve_k(n_pool)}"


def prune_spec(k: int | None, ratio: float | None, rule: str = DEFAULT_RULE) -> PruneSpec | None:
    """The PruneSpec the CLI options describe, or None when neither --prune nor --prune-ratio is given."""
    if k is None and ratio is None:
        return None
    return PruneSpec(rule=rule, k=k, ratio=ratio)


# --------------------------------------------------------------------------------------------- ranking
def predicted_margin(fg_scores: np.ndarray, true: np.ndarray, area: np.ndarray, bg_scores: np.ndarray,
                     bg_label: np.ndarray, criterion: str = "any") -> np.ndarray:
    """(n, B) predicted composite margins of n foregrounds x B backgrounds (lower = more likely to fool).

    fg_scores (n, G), bg_scores (B, G): mapped class scores alone; true (n,) class; area (n,) object share in
    [0, 1] (0 = the ``score`` rule: backgrounds alone); bg_label (B,) for the bg-class criterion.
    """
    n, g = fg_scores.shape
    rows = np.arange(n)
    a = area.astype(np.float32)[:, None, None]                                     # (n, 1, 1)
    if criterion == "any":
        f_gap = fg_scores[rows, true][:, None] - fg_scores                          # (n, G)
        b_gap = bg_scores[:, true].T[:, :, None] - bg_scores[None]                  # (n, B, G)
        m = a * f_gap[:, None, :] + (1 - a) * b_gap                                 # (n, B, G)
        m[rows, :, true] = np.inf                                                   # the true class competes with no one
        return m.min(2)
    c = np.clip(bg_label, 0, g - 1)                                                 # (B,) the background's class
    f_gap = fg_scores[rows, true][:, None] - fg_scores[:, c]                        # (n, B)
    b_gap = bg_scores[:, true].T - bg_scores[np.arange(len(c)), c][None]            # (n, B)
    m = a[:, :, 0] * f_gap + (1 - a[:, :, 0]) * b_gap
    can_fool = (bg_label[None] >= 0) & (bg_label[None] != true[:, None])            # (n, B)
    return np.where(can_fool, m, np.inf)


def lowest_k(values: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the positions of the k lowest values, lowest first (ties: lower position first)."""
    n, b = values.shape
    k = min(k, b)
    part = np.argpartition(values, k - 1, axis=1)[:, :k] if k < b else np.tile(np.arange(b), (n, 1))
    out = []
    for r in range(n):
        p = np.sort(part[r])
        out.append(p[np.argsort(values[r, p], kind="stable")])
    return out


class Ranker:
    """Ranks a background pool for foregrounds by one rule's predicted margin (``score``, ``mix`` or ``random``)."""

    def __init__(self, emb: Embeddings, fg_labels: np.ndarray, bg_labels: np.ndarray, pool: np.ndarray,
                 rule: str, criterion: str, seed: int = 0):
        if emb.fg_scores.shape[0] != len(fg_labels) or emb.bg_scores.shape[0] != len(bg_labels):
            raise AdvbgError("the embeddings do not cover this store's foregrounds/backgrounds; rerun `advbg index`")
        self.emb, self.fg_labels, self.pool = emb, np.asarray(fg_labels), np.asarray(pool)
        self.bg_scores = emb.bg_scores[self.pool]
        self.bg_labels = np.asarray(bg_labels)[self.pool]
        self.rule, self.criterion, self.seed = rule, criterion, seed

    def rank(self, fg_ids: np.ndarray, k: int) -> list[np.ndarray]:
        """Per foreground, its k best pool positions, best first."""
        fg_ids = np.asarray(fg_ids, np.int64)
        if self.rule == "random":
            return [np.random.default_rng([self.seed, int(f)]).permutation(len(self.pool))[:k] for f in fg_ids]
        step = max(1, _BLOCK_ELEMS // max(1, len(self.pool) * self.bg_scores.shape[1]))
        out: list[np.ndarray] = []
        for s in range(0, len(fg_ids), step):
            ids = fg_ids[s:s + step]
            area = self.emb.fg_area[ids] if self.rule in ("mix", "neighbours") else np.zeros(len(ids), np.float32)
            pred = predicted_margin(self.emb.fg_scores[ids], self.fg_labels[ids], area, self.bg_scores,
                                    self.bg_labels, self.criterion)
            out += lowest_k(pred, k)
        return out


def trial_order(ranked: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """Exhaustive mode: pool order (see the module docstring); early exit: best first."""
    return ranked if mode == "early-exit" else [np.sort(r) for r in ranked]


# --------------------------------------------------------------------------------------------- neighbours
def neighbour_candidates(stage1: SearchResult, tried: dict[int, np.ndarray], ranker: Ranker, indexes: IndexSet,
                         k2: int, emb: Embeddings, n_fg: int = N_FG_NEIGHBOURS) -> dict[int, np.ndarray]:
    """Stage-2 pool positions per fg_id: neighbours of the stage-1 worst backgrounds of it and of similar foregrounds.

    tried: fg_id -> stage-1 pool positions (excluded). Returns up to k2 new positions per foreground, in the
    order they were picked (own worst background's neighbourhood first, then round-robin over the seeds).
    """
    pos_of = {int(b): p for p, b in enumerate(ranker.pool)}
    fg_ids = stage1.fg_id
    row_of = {int(f): r for r, f in enumerate(fg_ids)}
    worst = np.where(np.isnan(stage1.worst_margin), np.inf, stage1.worst_margin)
    _, nb_fg = indexes.fg_neighbours(emb.fg_features[fg_ids], n_fg + 1)            # (F, n_fg+1) fg_ids, self first
    seeds_of = {}
    for r, f in enumerate(fg_ids):
        similar = [row_of[int(g)] for g in nb_fg[r] if int(g) in row_of and int(g) != int(f)][:n_fg]
        similar.sort(key=lambda q: worst[q])
        seeds = [int(stage1.worst_bg[q]) for q in [r] + similar if stage1.worst_bg[q] >= 0]
        seeds_of[int(f)] = list(dict.fromkeys(seeds))
    uniq = np.array(sorted({s for v in seeds_of.values() for s in v}), np.int64)
    near = {}
    if uniq.size:
        _, nb_bg = indexes.bg_neighbours(emb.bg_features[uniq], k2 + 1)           # (S, k2+1) bg_ids
        near = {int(s): [int(b) for b in row] for s, row in zip(uniq, nb_bg)}
    out = {}
    for f in fg_ids:
        lists = [[s] + near.get(s, []) for s in seeds_of[int(f)]]
        out[int(f)] = _round_robin(lists, pos_of, set(tried[int(f)].tolist()), k2)
    return out


def _round_robin(lists: list[list[int]], pos_of: dict[int, int], skip: set[int], k: int) -> np.ndarray:
    picked: list[int] = []
    for depth in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if len(picked) == k:
                return np.array(picked, np.int64)
            if depth < len(lst):
                p = pos_of.get(lst[depth])
                if p is not None and p not in skip:
                    skip.add(p)
                    picked.append(p)
    return np.array(picked, np.int64)


def merge_stages(r1: SearchResult, r2: SearchResult, pool: np.ndarray, run: RunRecord) -> SearchResult:
    """One result from two searches over disjoint candidates of the same foregrounds (as if run as one)."""
    rank = np.full(int(pool.max()) + 1, np.iinfo(np.int64).max, np.int64)
    rank[pool] = np.arange(len(pool))
    pos = lambda bg: np.where(bg >= 0, rank[np.maximum(bg, 0)], np.iinfo(np.int64).max)  # noqa: E731
    m1 = np.where(np.isnan(r1.worst_margin), np.inf, r1.worst_margin)
    m2 = np.where(np.isnan(r2.worst_margin), np.inf, r2.worst_margin)
    # lower margin wins; a tie goes to the earlier pool position, as in one exhaustive pass
    take2 = (m2 < m1) | ((m2 == m1) & (pos(r2.worst_bg) < pos(r1.worst_bg)))
    first = np.where(pos(r2.first_fooling_bg) < pos(r1.first_fooling_bg), r2.first_fooling_bg, r1.first_fooling_bg)
    pick = lambda a, b: np.where(take2, b, a)  # noqa: E731
    return replace(r1, run=run, worst_bg=pick(r1.worst_bg, r2.worst_bg), worst_margin=pick(r1.worst_margin, r2.worst_margin),
                   worst_pred=pick(r1.worst_pred, r2.worst_pred), first_fooling_bg=first,
                   worst_raw_top1=pick(r1.worst_raw_top1, r2.worst_raw_top1),
                   n_fooling=r1.n_fooling + r2.n_fooling, n_evaluated=r1.n_evaluated + r2.n_evaluated,
                   n_invalid=r1.n_invalid + r2.n_invalid)


# --------------------------------------------------------------------------------------------- search
def pruned_search(store: Store, classifier: Classifier, config: SearchConfig, spec: PruneSpec, *,
                  emb: Embeddings | None = None, index_folder: str | None = None, **kw) -> SearchResult:
    """A search of K candidates per foreground chosen by ``spec.rule`` from the stored embeddings; ``kw`` as for
    ``advbg.search.runner.search`` (results_name, write, resume, progress, journal_dir, on_unit, echo).

    The single-stage rules rank every foreground once and hand the lists to one search (resumable,
    torchrun-able like any search). The two-stage ``neighbours`` rule runs two in-memory searches, the second on
    candidates chosen from the first one's result, and writes their merged result (no outcome matrix)."""
    emb = emb if emb is not None else load_embeddings(store, classifier)
    pool = np.arange(len(store.backgrounds), dtype=np.int64) if config.backgrounds is None \
        else np.asarray(config.backgrounds, np.int64)
    k, desc = spec.resolve_k(len(pool)), spec.describe(len(pool))
    ranker = Ranker(emb, store.foregrounds.labels, store.backgrounds.labels, pool,
                    "mix" if spec.rule == "neighbours" else spec.rule, config.criterion, spec.seed)
    fg_ids = _selected(config.foregrounds, len(store.foregrounds))
    if spec.rule != "neighbours":
        cands = _lists(fg_ids, trial_order(ranker.rank(fg_ids, k), config.mode))
        return search(store, classifier, replace(config, prune=desc), candidates=cands, **kw)
    _refuse_stored_neighbours(store, classifier, replace(config, prune=desc), kw)
    if distributed.launched():
        raise AdvbgError("the two-stage neighbours rule does not run under torchrun; use --prune-rule mix there")
    stages = _Stages(store, classifier, config, emb, ranker, pool, fg_ids, index_folder)
    return stages.run(k, desc, kw.get("results_name"), kw.get("write", True), kw.get("progress", True))


def _refuse_stored_neighbours(store: Store, classifier: Classifier, config: SearchConfig, kw: dict) -> None:
    """The two-stage rule stores no stages, so it neither resumes nor reuses: an existing results file of its name
    is replaced only with ``recompute``."""
    if not kw.get("write", True) or kw.get("recompute"):
        return
    path = results_path(store, kw.get("results_name") or default_results_name(classifier, config))
    if os.path.lexists(path):
        raise AdvbgError(f"results file {path} exists; the two-stage neighbours rule cannot reuse or resume it: "
                         f"--recompute replaces it once the new search is complete, or choose another --results-name")


def _selected(ids, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)


def _lists(fg_ids: np.ndarray, lists: list[np.ndarray]) -> Candidates:
    return Candidates({int(f): np.asarray(c, np.int64) for f, c in zip(fg_ids, lists)})


def _indexes(store: Store, emb: Embeddings, folder) -> IndexSet:
    """The saved FAISS indexes when present (checked against model and store), else built in memory."""
    if index_path(store.path, emb.name, "bg", folder).exists():
        return open_indexes(store, emb, folder=folder)
    return build_indexes(emb)


@dataclass(frozen=True)
class _Stages:
    """The two-stage neighbours rule: stage 1 on the top of the mix ranking, stage 2 on FAISS neighbours of the
    stage-1 worst backgrounds (and further mix ranks), merged as if run as one search."""

    store: Store
    classifier: Classifier
    config: SearchConfig
    emb: Embeddings
    ranker: Ranker
    pool: np.ndarray
    fg_ids: np.ndarray
    index_folder: str | None

    def run(self, k: int, desc: str, results_name: str | None, write: bool, progress: bool) -> SearchResult:
        t0 = time.perf_counter()
        k1 = min(k, max(1, math.ceil(k * STAGE1_SHARE)))
        ranked = self.ranker.rank(self.fg_ids, k1)
        tried = {int(f): r for f, r in zip(self.fg_ids, ranked)}
        r1 = self._pass(f"{desc}.stage1", _lists(self.fg_ids, trial_order(ranked, self.config.mode)), progress)
        extra = self._stage2(r1, tried, k, k1) if k > k1 else {}
        r2 = self._pass(f"{desc}.stage2", _lists(self.fg_ids, trial_order(
            [extra.get(int(f), np.empty(0, np.int64)) for f in self.fg_ids], self.config.mode)), progress)
        cfg = replace(self.config, prune=desc, record_outcomes=False)
        run = replace(r1.run, pruning=desc, config=cfg.to_dict(), seconds=time.perf_counter() - t0,
                      forwards=r1.run.forwards + r2.run.forwards)
        result = merge_stages(r1, r2, self.pool, run)
        if not write:
            return result
        name = results_name or default_results_name(self.classifier, cfg)
        run_id = RunId(fingerprint(self.store, result.fg_id, self.pool, self.classifier, cfg, result.run.amp),
                       result.fg_id, self.pool, result.true_class, group_attrs(self.classifier, cfg), False,
                       cfg.fg_block)
        return write_result(self.store, name, run_id, result)

    def _pass(self, prune: str, cands: Candidates, progress: bool) -> SearchResult:
        cfg = replace(self.config, prune=prune, record_outcomes=False)
        return search(self.store, self.classifier, cfg, candidates=cands, write=False, progress=progress)

    def _stage2(self, r1: SearchResult, tried: dict[int, np.ndarray], k: int, k1: int) -> dict[int, np.ndarray]:
        fill = self.ranker.rank(r1.fg_id, k)
        near = neighbour_candidates(r1, tried, self.ranker, _indexes(self.store, self.emb, self.index_folder),
                                    k - k1, self.emb)
        extra = {}
        for r, f in enumerate(r1.fg_id.tolist()):
            if self.config.mode == "early-exit" and r1.first_fooling_bg[r] >= 0:
                continue   # already fooled: early exit is done with it
            used = set(tried[f].tolist()) | set(near[f].tolist())
            rest = np.array([p for p in fill[r].tolist() if p not in used], np.int64)
            extra[f] = np.concatenate([near[f], rest])[:k - k1]
        return extra


# --------------------------------------------------------------------------------------------- reporting
def prune_summary(result: SearchResult, n_pool: int) -> dict:
    """Composites a pruned search evaluated and skipped, against the exhaustive F x B."""
    total = len(result) * n_pool
    done = int(result.run.forwards)
    return dict(pruning=result.run.pruning, composites_exhaustive=total, composites_evaluated=done,
                composites_skipped=total - done, skipped_share=(total - done) / total if total else float("nan"))


def prune_label(pruning: str) -> str:
    """What a pruned run is, in words: ``mix-k40`` -> ``pruned, 40 candidates per foreground (rule mix)``."""
    rule, _, k = pruning.split(".")[0].rpartition("-k")
    return f"pruned, {k} candidates per foreground (rule {rule})" if rule and k.isdigit() else f"pruned ({pruning})"


def prune_line(result: SearchResult, n_pool: int) -> str:
    s = prune_summary(result, n_pool)
    return (f"pruned search ({s['pruning']}): {s['composites_evaluated']} of {s['composites_exhaustive']} composites "
            f"evaluated, {s['composites_skipped']} skipped ({100 * s['skipped_share']:.1f}%)")
