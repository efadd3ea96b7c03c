"""`advbg index`: embeddings (penultimate features or logits), FAISS indexes, and their model identity checks."""
import json

import numpy as np
import pytest
import torch
from conftest import TinyNet, make_tiny_classifier
from conftest import run_cli as run
from torch import nn

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.models.weights import register
from advbg.search.index import (
    FLAT_MAX,
    build_index,
    choose_kind,
    compute_embeddings,
    feature_kind,
    features_and_logits,
    foreground_alone,
    index_path,
    load_embeddings,
    make_index,
    model_identity,
    normalise,
    place_index,
    read_index_file,
    search_index,
)


class TimmLike(nn.Module):
    """The timm contract advbg relies on: forward_features, then forward_head(x, pre_logits=True) -> features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 5, stride=4)
        self.hidden = nn.Linear(6, 12)
        self.fc = nn.Linear(12, 9)
        self.num_classes = 9
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward_head(self, x, pre_logits: bool = False):
        h = torch.tanh(self.hidden(x.mean((2, 3))))
        return h if pre_logits else self.fc(h)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def timm_like_classifier(seed: int = 0) -> Classifier:
    tiny = make_tiny_classifier()
    return Classifier(TimmLike(seed), tiny.config, tiny.label_map)


def _info(seed):
    return dict(architecture="tinynet", weight_tag=f"seed{seed}", source="test", weights_file=None,
                weights_sha256=None, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32), class_names=IN9_CLASSES)


# Two registered models for the CLI: same architecture and tag, different weights.
register("test/index-a")(lambda: (TinyNet(9, seed=0), _info(0)))
register("test/index-b")(lambda: (TinyNet(9, seed=5), _info(0)))


# --------------------------------------------------------------------------------------------- FAISS
def test_flat_index_returns_exactly_the_top_k_by_brute_force_inner_product():
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((500, 16)).astype(np.float32), rng.standard_normal((20, 16)).astype(np.float32)
    index = make_index(x, "flat")
    scores, ids = search_index(index, q, 10, block=7)   # blocks that do not divide the queries
    ref = q @ x.T
    want = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-5)


def test_k_larger_than_the_index_returns_everything():
    x = normalise(np.random.default_rng(1).standard_normal((5, 4)))
    _, ids = search_index(make_index(x, "flat"), x, 50)
    assert ids.shape == (5, 5) and (np.sort(ids, 1) == np.arange(5)).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_each_vector_itself(kind):
    x = normalise(np.random.default_rng(2).standard_normal((2000, 8)))
    _, ids = search_index(make_index(x, kind), x[:100], 1)
    assert (ids[:, 0] == np.arange(100)).mean() > 0.95


def test_index_kind_is_flat_for_small_pools_and_approximate_past_the_threshold():
    assert choose_kind(FLAT_MAX) == "flat"
    assert choose_kind(FLAT_MAX + 1, on_gpu=False) == "hnsw"
    assert choose_kind(FLAT_MAX + 1, on_gpu=True) == "ivf"      # faiss has no GPU HNSW
    assert choose_kind(10, "ivf") == "ivf"
    with pytest.raises(AdvbgError, match="unknown index kind"):
        choose_kind(10, "lsh")


def test_cpu_index_is_used_when_faiss_has_no_gpu(monkeypatch):
    import advbg.search.index as ix

    monkeypatch.setattr(ix, "faiss_gpus", lambda: 0)
    index = make_index(normalise(np.eye(4)), "flat")
    placed, where = place_index(index, "auto")
    assert where == "cpu" and placed is index
    with pytest.raises(AdvbgError, match="sees no GPU"):
        place_index(index, True)


def test_hnsw_stays_on_cpu_even_when_a_gpu_is_there(monkeypatch):
    import advbg.search.index as ix

    monkeypatch.setattr(ix, "faiss_gpus", lambda: 1)   # no GPU call is made for an HNSW index
    hnsw = make_index(normalise(np.random.default_rng(0).standard_normal((50, 4))), "hnsw")
    assert place_index(hnsw, "auto")[1] == "cpu"
    with pytest.raises(AdvbgError, match="no GPU HNSW"):
        place_index(hnsw, True)


def test_gpu_index_gives_the_cpu_answer():
    from advbg.search.index import faiss_gpus

    if faiss_gpus() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu installed, or no CUDA device): not checked that a flat index is "
                    "copied to the GPU and that its top-K equals the CPU index's")
    rng = np.random.default_rng(0)
    x, q = normalise(rng.standard_normal((1000, 32))), normalise(rng.standard_normal((50, 32)))
    cpu = make_index(x, "flat")
    gpu, where = place_index(cpu, True)
    assert where == "gpu"
    np.testing.assert_array_equal(search_index(gpu, q, 10)[1], search_index(cpu, q, 10)[1])


# --------------------------------------------------------------------------------------------- features
def test_a_module_without_forward_features_is_embedded_by_its_logits(tiny_classifier):
    assert feature_kind(tiny_classifier.model) == "logits"
    x = torch.rand(3, 3, 32, 32)
    feats, logits = features_and_logits(tiny_classifier, x)
    with torch.no_grad():
        want = tiny_classifier(x)
    torch.testing.assert_close(feats, want)
    torch.testing.assert_close(logits, want)


def test_a_timm_style_module_is_embedded_by_its_pre_logits_features():
    clf = timm_like_classifier()
    assert feature_kind(clf.model) == "pre_logits"
    x = torch.rand(3, 3, 32, 32)
    feats, logits = features_and_logits(clf, x)
    with torch.no_grad():
        z = clf.preprocess(x)
        want = torch.tanh(clf.model.hidden(torch.relu(clf.model.conv(z)).mean((2, 3))))
        torch.testing.assert_close(logits, clf(x))
    assert feats.shape == (3, 12)
    torch.testing.assert_close(feats, want)


def test_a_real_timm_model_gives_pre_logits_features():
    from advbg._compat import import_timm

    model = import_timm().create_model("test_resnet", pretrained=False, num_classes=9).eval()
    tiny = make_tiny_classifier()
    clf = Classifier(model, tiny.config, tiny.label_map)
    x = torch.rand(2, 3, 32, 32)
    feats, logits = features_and_logits(clf, x)
    assert feature_kind(model) == "pre_logits" and feats.shape == (2, model.num_features)
    with torch.no_grad():
        torch.testing.assert_close(logits, clf(x))
        torch.testing.assert_close(model.get_classifier()(feats), logits)


def test_embeddings_hold_background_and_foreground_alone_scores(random_store, tiny_classifier):
    with Store(random_store) as s:
        emb = compute_embeddings(s, tiny_classifier, batch_size=4, progress=False)
        fg_alone = foreground_alone(s, slice(None))
        masks = s.foregrounds.read_masks(slice(None))
        bgs = s.backgrounds.read(slice(None))
    to_x = lambda u8: torch.as_tensor(u8).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with torch.no_grad():
        np.testing.assert_allclose(emb.bg_scores, tiny_classifier(to_x(bgs)).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(emb.fg_scores, tiny_classifier(to_x(fg_alone)).numpy(), rtol=1e-4, atol=1e-4)
    assert (fg_alone[masks == 0] == 0).all()                      # outside the object: the fill (black)
    np.testing.assert_allclose(emb.fg_area, masks.mean((1, 2)), rtol=1e-6)
    assert emb.feature_kind == "logits" and emb.score_names == tuple(IN9_CLASSES)


# --------------------------------------------------------------------------------------------- storing
def test_index_writes_embeddings_and_index_files_that_load_back(random_store, tiny_classifier):
    with Store(random_store, "r+") as s:
        rep = build_index(s, tiny_classifier, progress=False)
    assert len(rep.index_files) == 2 and all(p.exists() for p in rep.index_files)
    with Store(random_store) as s:
        emb = load_embeddings(s, tiny_classifier)
        fresh = compute_embeddings(s, tiny_classifier, progress=False)
        np.testing.assert_array_equal(emb.bg_features, fresh.bg_features)
        meta = json.loads(index_path(s.path, emb.name, "bg").with_suffix(".faiss.json").read_text())
        index, _ = read_index_file(index_path(s.path, emb.name, "bg"), model_identity(tiny_classifier), s.digest())
    assert meta["identity"]["architecture"] == "tinynet" and meta["kind"] == "flat"
    assert index.ntotal == 11


def test_an_index_built_for_one_model_is_refused_for_another(random_store):
    a, b = make_tiny_classifier(seed=0), make_tiny_classifier(seed=1)
    with Store(random_store, "r+") as s:
        build_index(s, a, progress=False)
        path = index_path(s.path, load_embeddings(s, a).name, "bg")
        with pytest.raises(AdvbgError, match=r"was built for model tiny9 \(tinynet\.seed0.*not for tiny9 "
                                             r"\(tinynet\.seed1.*Rebuild it with `advbg index"):
            read_index_file(path, model_identity(b), s.digest())
        with pytest.raises(AdvbgError, match=r"no embeddings for model tiny9 \(tinynet\.seed1.*advbg index"):
            load_embeddings(s, b)


def test_same_name_and_tag_but_other_weights_count_as_another_model():
    a, b = make_tiny_classifier(seed=0), make_tiny_classifier(seed=0)
    with torch.no_grad():
        b.model.fc.bias.add_(1.0)
    assert model_identity(a)["params_sha256"] != model_identity(b)["params_sha256"]


def test_an_index_for_other_store_content_or_a_changed_file_is_refused(random_store, tiny_classifier):
    with Store(random_store, "r+") as s:
        build_index(s, tiny_classifier, progress=False)
        path = index_path(s.path, load_embeddings(s, tiny_classifier).name, "fg")
        ident = model_identity(tiny_classifier)
        with pytest.raises(AdvbgError, match="built for store content"):
            read_index_file(path, ident, "0" * 16)
        path.write_bytes(path.read_bytes()[:-8])
        with pytest.raises(AdvbgError, match="does not match the SHA-256"):
            read_index_file(path, ident, s.digest())


def test_index_command_then_pruned_search_and_a_clear_error_for_another_model(random_store, tmp_path, capsys):
    code, out, err = run(["index", "--store", str(random_store), "--model", "test/index-a", "-q"], capsys)
    assert code in (0, None), err
    assert "embedded 11 backgrounds and 7 foregrounds" in out and "flat FAISS indexes" in out
    code, out, err = run(["search", "--store", str(random_store), "--model", "test/index-a", "--prune", "3",
                          "--grid", "-", "--results-file", str(tmp_path / "r.json"), "-q"], capsys)
    assert code in (0, None), err
    assert "pruned search (mix-k3): 21 of 77 composites evaluated, 56 skipped (72.7%)" in out
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["composites_skipped"] == 56 and summary["forwards"] == 21
    code, out, err = run(["search", "--store", str(random_store), "--model", "test/index-b", "--prune", "3",
                          "--grid", "-", "-q"], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no embeddings for model test/index-b" in err and "advbg index --model test/index-b" in err


def test_bad_index_options_are_one_line_errors(random_store, capsys):
    code, _, err = run(["index", "--store", str(random_store), "--model", "test/index-a", "--kind", "lsh"], capsys)
    assert code == 1 and "unknown index kind 'lsh'" in err and "Traceback" not in err
    code, _, err = run(["search", "--store", str(random_store), "--model", "test/index-a", "--prune", "3",
                        "--prune-ratio", "0.5"], capsys)
    assert code == 1 and "exactly one of --prune K and --prune-ratio R" in err
