"""Result cards: one search result as a small, versioned JSON document that can be shared, checked and ranked.

The format is the JSON Schema ``card.schema.json`` beside this module (schema version ``CARD_VERSION``).
``make_card`` builds a card from a ``SearchResult`` and the store it came from; ``check_card`` refuses a card that
does not follow the schema or whose numbers do not add up (k > n, a rate other than k/n, an interval other than
the one recomputed from k and n).
"""
from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from importlib import resources
from pathlib import Path

from advbg._version import __version__
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import sha256_file
from advbg.models.zoo import cached_weights_file
from advbg.search.results import SearchResult
from advbg.stats import rate, rate_from_dict

CARD_VERSION = 1
TOLERANCE = 1e-6       # percentage points: rates and bounds are recomputed and compared to this


@lru_cache(maxsize=1)
def card_schema() -> dict:
    """The card's JSON Schema (package data)."""
    return json.loads((resources.files("advbg.analysis") / "card.schema.json").read_text(encoding="utf-8"))


def criterion_name(criterion: str) -> str:
    """'any' or 'bg-class' from a run record's criterion (its repr, e.g. "Criterion('any': ...)", or the name)."""
    m = re.match(r"Criterion\('([^']+)'", criterion)
    return m.group(1) if m else criterion


def _weights_sha(c: dict) -> str | None:
    if c.get("weights_sha256"):
        return c["weights_sha256"]
    path = cached_weights_file(c["name"]) if c.get("source") == "timm" else None
    return sha256_file(path) if path else None


def reproduce_command(result: SearchResult, store: str) -> str:
    """An `advbg search` command line that reruns ``result`` (from its run record)."""
    r, c = result.run, result.run.classifier
    words = ["advbg", "search", "--store", store, "--model", c["name"], "--criterion", criterion_name(r.criterion)]
    if c.get("label_map"):
        words += ["--label-map", c["label_map"]]
    if c.get("norm_source") == "reference":
        words += ["--norm", "reference"]
    elif c.get("norm_source") == "option":
        words += ["--norm", ",".join(f"{v:g}" for v in [*c["mean"], *c["std"]])]
    if r.mode == "early-exit":
        words.append("--early-exit")
    pruned = re.fullmatch(r"(.+)-k(\d+)", str(r.pruning or ""))    # PruneSpec.describe: "<rule>-k<K>"
    if pruned:
        words += ["--prune", pruned.group(2), "--prune-rule", pruned.group(1)]
    return shlex.join(words)


def make_card(result: SearchResult, store: Store, *, name: str | None = None, command: str | None = None) -> dict:
    """The result card of ``result``, a complete search of ``store`` (checked against the schema before return).

    ``name``: a human name for the data (default: the store's file name); ``command``: what reproduces the result
    (default: an `advbg search` line rebuilt from the run record)."""
    r = result.run
    if r is None:
        raise AdvbgError(f"results {result.results_name!r} carry no run record; they cannot be made into a card")
    if r.store_digest != store.digest():
        raise AdvbgError(f"results {result.results_name!r} were computed on other data (store digest "
                         f"{r.store_digest}) than {store.path} ({store.digest()})")
    c, n, k = r.classifier, len(result), int(result.fooled.sum())
    fooling = rate(k, n)
    card = dict(
        schema="advbg-card", schema_version=CARD_VERSION,
        model=dict(name=c["name"], architecture=c["architecture"], weight_tag=c["weight_tag"],
                   weights_sha256=_weights_sha(c), label_map=c["label_map"], norm_source=c.get("norm_source") or "",
                   mean=[float(v) for v in c["mean"]], std=[float(v) for v in c["std"]]),
        data=dict(store_digest=store.digest(), name=name or Path(store.path).name,
                  n_foregrounds=len(store.foregrounds), n_backgrounds=len(store.backgrounds)),
        criterion=criterion_name(r.criterion), mode=r.mode, pruning=r.pruning,
        counts=dict(n=n, vulnerable=k, composites_evaluated=int(r.forwards)),
        fooling_rate=fooling.to_dict(), challenge_accuracy=fooling.complement().to_dict(),
        versions=dict(advbg=r.advbg_version or __version__, torch=c.get("torch_version", ""),
                      timm=c.get("timm_version", "")),
        command=command or reproduce_command(result, Path(store.path).name), created=r.started,
        results_name=result.results_name)
    return check_card(card)


def check_card(card: object, source: str = "card") -> dict:
    """``card`` if it follows the schema and its numbers add up; else AdvbgError naming the first problem."""
    import jsonschema  # deferred: only cards need it

    if not isinstance(card, dict):
        raise AdvbgError(f"{source} is not a result card (a JSON object)")
    if card.get("schema") != "advbg-card":
        raise AdvbgError(f"{source} is not an advbg result card (no \"schema\": \"advbg-card\")")
    if card.get("schema_version") != CARD_VERSION:
        raise AdvbgError(f"{source} has card schema version {card.get('schema_version')!r}; this advbg reads "
                         f"version {CARD_VERSION}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(card_schema()).iter_errors(card))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise AdvbgError(f"{source} does not follow the card schema at {where}: {error.message}")
    _check_numbers(card, source)
    return card


def _check_numbers(card: dict, source: str) -> None:
    n, k = card["counts"]["n"], card["counts"]["vulnerable"]
    if k > n:
        raise AdvbgError(f"{source}: {k} vulnerable of {n} foregrounds (k > n); the card's counts are wrong")
    if n > card["data"]["n_foregrounds"]:
        raise AdvbgError(f"{source}: {n} foregrounds searched but the data has {card['data']['n_foregrounds']}")
    expected = {"fooling_rate": rate(k, n), "challenge_accuracy": rate(n - k, n)}
    for key, want in expected.items():
        got = rate_from_dict(card[key])
        if (got.k, got.n) != (want.k, want.n):
            raise AdvbgError(f"{source}: {key} counts {got.k}/{got.n} do not match the card's counts "
                             f"({want.k}/{want.n})")
        for field in ("rate", "low", "high"):
            if abs(getattr(got, field) - getattr(want, field)) > TOLERANCE:
                raise AdvbgError(f"{source}: {key}.{field} is {getattr(got, field)!r}, but {want.k}/{want.n} gives "
                                 f"{getattr(want, field)!r} (the numbers do not add up)")


def load_card(path: str | Path) -> dict:
    """A card file, checked."""
    p = Path(path)
    if not p.is_file():
        raise AdvbgError(f"card {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdvbgError(f"card {p} is not JSON ({e})") from None
    return check_card(data, source=f"card {p}")
