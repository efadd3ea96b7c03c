"""What a search records and prints: results of two checkpoints of one architecture never share a group, the
headline gives the vulnerable count the reference prints, and a resumed run's record keeps its batch size."""
from __future__ import annotations

import json
import re

import pytest
from conftest import make_random_store, make_tiny_classifier, run_cli

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.search.config import SearchConfig
from advbg.search.results import load_search
from advbg.search.runner import search


def _checkpoint(path, seed: int):
    import torch
    from safetensors.torch import save_file

    from advbg._compat import import_timm

    torch.manual_seed(seed)
    net = import_timm().create_model("test_resnet", pretrained=False, num_classes=9).eval()
    meta = dict(architecture="test_resnet", input_size=[3, 32, 32], class_names=list(IN9_CLASSES))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"advbg": json.dumps(meta)})
    return path


def test_two_checkpoints_of_one_architecture_get_their_own_results(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    names = []
    for seed in (0, 1):
        ck = _checkpoint(tmp_path / f"net{seed}.safetensors", seed)
        code, out, err = run_cli(["search", "--store", str(store), "--model", str(ck), "--grid", "-", "-q"], capsys)
        assert code == 0, err
        names.append(re.search(r"/results/(\S+?)\.h5$", out, re.M).group(1))
    assert names[0] != names[1]
    with Store(store) as s:
        assert set(names) <= set(s.results)
        shas = [load_search(s, n).run.classifier["weights_sha256"] for n in names]
    assert shas[0] != shas[1] and all(sha[:8] in n for sha, n in zip(shas, names))


def test_headline_gives_the_vulnerable_count(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, out, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q"], capsys)
    assert code == 0, err
    with Store(store) as s:
        res = load_search(s)
    assert f"{int(res.fooled.sum())}/{len(res)} vulnerable" in out


def test_resumed_search_with_every_unit_committed_keeps_its_batch_size(tmp_path):
    store = make_random_store(tmp_path / "s.h5")
    clf = make_tiny_classifier()
    cfg = SearchConfig(batch_size=5, fg_block=3)
    n_units = 3                                   # 7 foregrounds in blocks of 3

    def stop_after_last(start: int) -> None:
        if start == 6:
            raise KeyboardInterrupt               # every unit committed, nothing merged yet

    with Store(store, mode="r+") as s:
        with pytest.raises(KeyboardInterrupt):
            search(s, clf, cfg, on_unit=stop_after_last, progress=False)
        res = search(s, clf, cfg, resume=True, progress=False)
    assert res.run.resumed_units == n_units and res.run.forwards == 0
    assert res.run.batch_size == 5
