"""The search's public contract around the engine: what the CLI hands to the library, and what the caller's objects
look like afterwards."""
from __future__ import annotations

from pathlib import Path

import torch

from advbg.data.store import Store
from advbg.models.loading import ModelSpec
from advbg.search.config import SearchConfig
from advbg.search.runner import search
from advbg.search.strategies import PruneSpec
from conftest import make_random_store, make_tiny_classifier


def _formats(clf) -> set[bool]:
    return {p.is_contiguous(memory_format=torch.channels_last) for p in clf.parameters() if p.dim() == 4}


def test_search_leaves_the_callers_classifier_on_its_device_and_memory_format(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=4, n_bg=3)
    clf = make_tiny_classifier().to(memory_format=torch.contiguous_format)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    assert _formats(clf) == {False}
    with Store(path) as s:
        search(s, clf, SearchConfig(channels_last=True, batch_size=5), write=False, progress=False)
    assert _formats(clf) == {False}, "search() left the caller's model in channels_last"
    assert clf.device == torch.device("cpu")
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_search_cli_hands_the_library_exactly_the_options_given(monkeypatch, tmp_path):
    import advbg.cli.search as cli_search
    from advbg.cli import main

    seen = {}
    monkeypatch.setattr(cli_search, "run_search", lambda store, model, config, **kw: seen.update(
        store=store, model=model, config=config, **kw))
    out = tmp_path / "r.json"
    main(["search", "--store", "x.h5", "--model", "resnet18.tv_in1k", "--norm", "in9", "--label-map", "identity",
          "--criterion", "bg-class", "--early-exit", "-b", "7", "--fg-block", "3", "--amp", "off",
          "--prune", "5", "--prune-rule", "score", "--results-file", str(out), "--grid", "-", "--resume", "-q"])
    assert seen["store"] == Path("x.h5")
    assert seen["model"] == ModelSpec("resnet18.tv_in1k", label_map="identity", norm="in9")
    assert seen["config"] == SearchConfig(criterion="bg-class", mode="early-exit", batch_size=7, fg_block=3, amp="off")
    assert seen["prune"] == PruneSpec("score", k=5)
    assert seen["results_file"] == out and seen["grid"] == Path("-")
    assert seen["resume"] is True and seen["write"] is True and seen["progress"] is False


def test_a_model_whose_named_classes_are_in_another_order_is_refused(tmp_path):
    """An identity map with real class names must list the store's classes in the store's order (a reordered
    checkpoint would otherwise be scored against the wrong classes without a word)."""
    import pytest

    from advbg.errors import AdvbgError
    from advbg.models.label_map import identity_map

    path = make_random_store(tmp_path / "s.h5", n_fg=3, n_bg=2)
    clf = make_tiny_classifier()
    with Store(path) as s:
        names = list(s.class_names)
        clf.label_map = identity_map(names[1:] + names[:1])                        # rotated by one
        with pytest.raises(AdvbgError, match="class k of the model must be class k of the store"):
            search(s, clf, SearchConfig(batch_size=4), write=False, progress=False)
        clf.label_map = identity_map([str(i) for i in range(len(names))])         # placeholders: count only
        search(s, clf, SearchConfig(batch_size=4), write=False, progress=False)
