"""`advbg eval` / `advbg plot`: every metric against a hand-computed value, determinism, outputs, one-line errors."""
import json

import h5py
import numpy as np
import pytest
import reference
import torch
from conftest import TinyNet
from conftest import run_cli as run
from torch import nn

from advbg.analysis.evalreport import format_report, to_csv
from advbg.analysis.evaluate import (
    EvalConfig,
    bg_gap,
    evaluate,
    group_rank,
    parse_top_k,
    relative_accuracy,
    variant_score,
)
from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.variants import EvalsetWriter, variant_names
from advbg.data.writer import write_store
from advbg.errors import AdvbgError
from advbg.models import weights as model_weights
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map, in9_map

SIZE = 16


# --------------------------------------------------------------------------------------------- scripted models
class ScriptedNet(nn.Module):
    """Logits looked up per image: every pixel of image r has the value 10 * r, and row r of ``table`` is returned."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.float())
        self.num_classes = table.shape[1]

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255 / 10).round().long()]


def scripted(table: torch.Tensor, name: str) -> Classifier:
    lm = in9_map() if table.shape[1] == 1000 else identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name=name, architecture="scripted", weight_tag=name, source="test", weights_file=None,
                           weights_sha256=None, input_size=(3, SIZE, SIZE), mean=(0.0,) * 3, std=(1.0,) * 3,
                           interpolation="bilinear", num_outputs=table.shape[1], label_map=lm.name,
                           class_names=lm.class_names)
    return Classifier(ScriptedNet(table), cfg, lm)


def coded(rows) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3) images whose pixels all hold 10 * r."""
    return np.stack([np.full((SIZE, SIZE, 3), 10 * r, np.uint8) for r in rows])


def coded_store(path, labels, bg_labels=(0,)) -> str:
    masks = np.zeros((len(labels), SIZE, SIZE), np.uint8)
    masks[:, 4:12, 4:12] = 1
    return write_store(path, class_names=IN9_CLASSES, fg_images=coded(range(len(labels))), fg_masks=masks,
                       fg_labels=list(labels), bg_images=coded([20] * len(bg_labels)), bg_labels=list(bg_labels))


# --------------------------------------------------------------------------------------------- metric values
# Seven photos of the original variant for a 1000-class model under the in9 map: (label, {ImageNet index: logit}).
IN9_CASES = [
    (0, {151: 10}),                                               # dog top-1: right
    (0, {171: 10, 152: 9}),                                       # unmapped top-1 (171): wrong; dog 2nd: top-5
    (1, {7: 10}),                                                 # bird: right
    (2, {151: 10, 500: 9, 33: 8, 300: 7, 0: 6, 407: 5}),          # vehicle 6th group ("none" counts): not top-5
    (3, {33: 10}),                                                # reptile: right
    (8, {500: 10, 151: 9, 7: 8, 0: 7}),                           # "none" top-1: wrong; fish 4th group: top-5
    (1, {151: 10, 152: 9.9, 153: 9.8, 154: 9.7, 155: 9.6, 7: 9}),  # five dog logits first: bird is group 2: top-5
]


def in9_table() -> torch.Tensor:
    t = torch.zeros(len(IN9_CASES), 1000)
    for r, (_, logits) in enumerate(IN9_CASES):
        for k, v in logits.items():
            t[r, k] = v
    return t


def test_top1_is_reference_rule_unmapped_is_wrong_and_top5_ranks_groups(tmp_path):
    labels = [y for y, _ in IN9_CASES]
    store = coded_store(tmp_path / "s.h5", labels)
    clf = scripted(in9_table(), "in9-scripted")
    with Store(store) as s:
        report = evaluate(s, [clf], EvalConfig(variants="original", top_k=(1, 5)))
    sc = report.models[0].scores["original"]
    assert sc.n == 7 and sc.correct == {1: 3, 5: 6}
    assert sc.top1 == pytest.approx(300 / 7) and sc.topk[5] == pytest.approx(600 / 7)
    assert sc.none_rate == pytest.approx(200 / 7)
    assert sc.per_class == {"dog": 50.0, "bird": 50.0, "vehicle": 0.0, "reptile": 100.0, "carnivore": None,
                            "insect": None, "instrument": None, "primate": None, "fish": 0.0}
    # the slow obvious reference for top-1: argmax over all 1000 outputs, then the table look-up
    ref = reference.in9_table()[in9_table().argmax(1).numpy()]
    assert sc.correct[1] == int((ref == np.array(labels)).sum())


def test_group_rank_matches_a_sorted_reference_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200, 10), generator=g).float()   # few values: many ties
    labels = torch.randint(0, 10, (200,), generator=g)
    got = group_rank(scores, labels)
    for i in range(200):
        order = sorted(range(10), key=lambda j: (-scores[i, j].item(), j))   # argmax order: ties to lower index
        assert got[i].item() == order.index(labels[i].item())
    assert torch.equal(got == 0, scores.argmax(1) == labels)


def test_top_k_is_withheld_when_k_reaches_the_number_of_classes():
    sc = variant_score("v", np.array([0, 3]), np.array([0, 1]), np.array([0, 1]), ["a", "b", "c"], (1, 5), False)
    assert sc.topk == {1: 50.0, 5: None} and sc.none_rate is None
    assert parse_top_k("5") == (1, 5) and parse_top_k(" 1, 3,5 ") == (1, 3, 5)
    with pytest.raises(AdvbgError, match="positive integers"):
        parse_top_k("1,x")


def _one_hot_table(rows: list[tuple[int, int]]) -> torch.Tensor:
    """(prediction, label) per image -> 9-class logits: 5 at the prediction, 1 at the label (so it ranks 2nd)."""
    t = torch.zeros(len(rows), 9)
    for r, (pred, label) in enumerate(rows):
        t[r, label] += 1
        t[r, pred] = 5
    return t


def _mixed_store(tmp_path) -> str:
    """A store with released-style evaluation sets: mixed_same = images 0-3, mixed_rand = images 4-7."""
    path = coded_store(tmp_path / "s.h5", [0, 1, 2, 3], bg_labels=[0, 1, 2, 3])
    with h5py.File(path, "r+") as f:
        for name, rows in (("mixed_same", range(0, 4)), ("mixed_rand", range(4, 8))):
            w = EvalsetWriter(f, name, (SIZE, SIZE), attrs=dict(origin="released"))
            w.append_many(coded(rows), [0, 1, 2, 3], [f"x{r}" for r in rows], [-1] * 4, [-1] * 4)
            w.close()
    return path


# labels of both sets: 0, 1, 2, 3. Model A: 3 of 4 right on mixed_same, 1 of 4 on mixed_rand; baseline B: 2 and 2.
A_ROWS = [(0, 0), (1, 1), (2, 2), (0, 3), (0, 0), (0, 1), (0, 2), (0, 3)]
B_ROWS = [(0, 0), (1, 1), (5, 2), (5, 3), (0, 0), (1, 1), (5, 2), (5, 3)]


def test_bg_gap_and_relative_accuracy_from_stored_sets(tmp_path):
    a, b = scripted(_one_hot_table(A_ROWS), "A"), scripted(_one_hot_table(B_ROWS), "B")
    with Store(_mixed_store(tmp_path)) as s:
        report = evaluate(s, [a, b], EvalConfig(variants="mixed_same,mixed_rand"), baseline=b)
    ra, rb = report.models
    assert ra.top1() == {"mixed_same": 75.0, "mixed_rand": 25.0} and ra.bg_gap == 50.0
    assert rb.top1() == {"mixed_same": 50.0, "mixed_rand": 50.0} and rb.bg_gap == 0.0
    assert ra.relative["mixed_same"][1] == 1.5 and ra.relative["mixed_rand"][1] == 0.5
    assert rb.baseline and not ra.baseline and rb.relative["mixed_same"][1] == 1.0
    assert ra.scores["mixed_rand"].topk[5] == 100.0          # the label always ranks second
    assert [p.label for p in report.plans] == ["released set"] * 2
    assert report.to_dict()["variants"]["mixed_same"]["detail"].startswith("released set /evalsets/mixed_same")


def test_metric_helpers_by_hand():
    assert bg_gap({"mixed_same": 82.3, "mixed_rand": 76.3}) == pytest.approx(6.0)
    assert bg_gap({"mixed_same": 82.3}) is None
    m = {"original": variant_score("original", np.array([0, 0, 1, 0]), np.zeros(4), np.zeros(4, int), ["a", "b"],
                                   (1,), False)}
    base = {"original": variant_score("original", np.array([0, 1, 1, 1]), np.zeros(4), np.zeros(4, int),
                                      ["a", "b"], (1,), False)}
    assert relative_accuracy(m, base) == {"original": {1: 3.0}}


def test_generate_source_ignores_stored_sets(tmp_path, tiny_classifier):
    a = tiny_classifier
    with Store(_mixed_store(tmp_path)) as s:
        report = evaluate(s, [a], EvalConfig(variants="mixed_same", source="generate"))
        assert report.plans[0].source == "generated"
        with pytest.raises(AdvbgError, match="no complete evaluation set 'original'"):
            evaluate(s, [a], EvalConfig(variants="original", source="evalset"))


# --------------------------------------------------------------------------------------------- every variant
def full_store(path, size: int = 32) -> str:
    """9 foregrounds (one per class) and backgrounds of every class plus unlabelled ones: every variant is makeable."""
    rng = np.random.default_rng(3)
    masks = np.zeros((9, size, size), np.uint8)
    masks[:, 8:24, 6:20] = 1
    bg_labels = [c for c in range(9) for _ in range(2)] + [-1, -1, -1]
    return write_store(path, class_names=IN9_CLASSES, fg_images=rng.integers(0, 256, (9, size, size, 3), np.uint8),
                       fg_masks=masks, fg_labels=list(range(9)), fg_source_ids=[f"p{i}" for i in range(9)],
                       bg_images=rng.integers(0, 256, (len(bg_labels), size, size, 3), np.uint8),
                       bg_labels=bg_labels, bg_source_ids=[f"p{j}" if j < 9 else f"q{j}" for j in range(len(bg_labels))])


def _numbers(report) -> dict:
    d = report.to_dict()
    d.pop("created"), d.pop("timing"), d["config"].pop("batch_size")   # the block size must not matter
    return d


def test_every_variant_is_evaluated_and_two_runs_are_identical(tmp_path, tiny_classifier):
    with Store(full_store(tmp_path / "s.h5")) as s:
        first = evaluate(s, [tiny_classifier], EvalConfig(variants="all", batch_size=4))
        second = evaluate(s, [tiny_classifier], EvalConfig(variants="all", batch_size=7))
    assert not first.skipped
    assert first.variants[:4] == ["original", "only_bg_t", "mixed_same", "mixed_rand"]
    assert sorted(first.variants) == sorted(variant_names())
    assert all(sc.n == 9 for sc in first.models[0].scores.values())
    assert _numbers(first) == _numbers(second)
    assert json.dumps(_numbers(first))   # JSON-serialisable as it stands


def test_group_member_that_cannot_be_made_is_skipped_but_a_named_one_fails(tmp_path, tiny_classifier):
    store = coded_store(tmp_path / "s.h5", [0, 1], bg_labels=[0, 1])     # no background of class 2: no mixed_next
    with Store(store) as s:
        report = evaluate(s, [tiny_classifier], EvalConfig(variants="in9"))
        assert "mixed_next" in report.skipped and "mixed_next" not in report.variants
        with pytest.raises(AdvbgError, match="mixed_next"):
            evaluate(s, [tiny_classifier], EvalConfig(variants="original,mixed_next"))


# --------------------------------------------------------------------------------------------- CLI
def _builder(num_outputs: int, seed: int, class_names):
    def build():
        return TinyNet(num_outputs, seed), dict(
            architecture="tinynet", weight_tag=f"seed{seed}", source="test", weights_file=None, weights_sha256=None,
            mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32), class_names=class_names)
    return build


@pytest.fixture(autouse=True)
def registered_test_models(monkeypatch):
    for name, n, seed, names in (("test/eval9", 9, 0, IN9_CLASSES), ("test/eval9b", 9, 1, IN9_CLASSES),
                                 ("test/eval1000", 1000, 2, None), ("test/eval5", 5, 3, ("a", "b", "c", "d", "e")),
                                 ("test/eval9n", 9, 4, None)):   # class names "0".."8" (a bare checkpoint)
        monkeypatch.setitem(model_weights._REGISTRY, name, _builder(n, seed, names))


def test_cli_multi_model_table_json_csv_and_bar_chart(tmp_path, capsys):
    store = full_store(tmp_path / "s.h5")
    (tmp_path / "models.txt").write_text("# the second model\ntest/eval9b\n")
    code, out, err = run(["eval", "--store", str(store), "-m", "test/eval9", "--models-file",
                          str(tmp_path / "models.txt"), "--baseline", "test/eval9b", "--variants", "paper,bg_white",
                          "--results-file", str(tmp_path / "r.json"), "-q"], capsys)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert header.split() == ["model", "original", "only_bg_t", "mixed_same", "mixed_rand", "BG-Gap", "bg_white"]
    assert any(line.startswith("test/eval9b (baseline)") for line in out.splitlines())
    data = json.loads((tmp_path / "r.json").read_text())
    ident = data["models"][0]["model"]
    assert ident["name"] == "test/eval9" and ident["tag"] == "tinynet.seed0" and ident["label_map"] == "identity"
    assert ident["timm_version"] and ident["torch_version"] and "label_rule" in ident
    assert data["baseline"] == "test/eval9b" and data["models"][1]["relative"]["original"]["top1"] == 1.0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = run(["eval", "--store", str(store), "-m", "test/eval9", "-V", "paper", "--results-file",
                          str(tmp_path / "r.csv"), "--plot", "-", "-q"], capsys)
    assert code == 0, err
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("model,tag,source,weights_sha256,label_map,baseline,original_top1,original_top5,"
                              "only_bg_t_top1") and rows[1].startswith("test/eval9,tinynet.seed0,test")
    assert not (tmp_path / "r.png").with_name("r.csv.png").exists()


def test_cli_single_model_prints_per_variant_and_per_class_tables(tmp_path, capsys):
    code, out, err = run(["eval", "--store", str(full_store(tmp_path / "s.h5")), "-m", "test/eval1000",
                          "-V", "original,mixed_same,mixed_rand", "-q"], capsys)
    assert code == 0, err
    assert "label map in9" in out and "BG-Gap = mixed_same - mixed_rand" in out
    assert "per-class top-1 accuracy" in out and "none" in out.split("per-class")[0]


def test_baseline_with_placeholder_class_names_shares_the_label_space(tmp_path, capsys):
    code, out, err = run(["eval", "--store", str(full_store(tmp_path / "s.h5")), "-m", "test/eval1000",
                          "--baseline", "test/eval9n", "-V", "original", "-q"], capsys)
    assert code == 0, err
    assert "relative to test/eval9n" in out


def _one_line_error(code, err, pattern):
    assert code not in (0, None)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("args, pattern", [
    (["-m", "test/eval9", "-V", "original,mixed_sam"], "unknown variant 'mixed_sam'; did you mean mixed_same"),
    (["-m", "test/eval9", "--label-map", "in9"], "label map 'in9' expects 1000 model outputs, the model has 9"),
    (["-m", "test/eval1000", "--label-map", "identity"], "gives 1000 classes but the store has 9"),
    (["-m", "test/eval9", "--baseline", "test/eval5"], "baseline 'test/eval5' has another label space"),
    (["-m", "test/eval9", "--top-k", "1,five"], "--top-k takes comma-separated positive integers"),
    (["-m", "test/eval9", "--models-file", "nope.txt"], "models file nope.txt does not exist"),
    (["-m", "test/eval9", "--source", "evalset", "-V", "original"], "no complete evaluation set 'original'"),
    (["-m", "test/eval9", "--results-format", "xml", "--results-file", "r.x"], "--results-format must be json or csv"),
])
def test_cli_bad_input_gets_one_line(tmp_path, capsys, args, pattern):
    store = full_store(tmp_path / "s.h5")
    code, _, err = run(["eval", "--store", str(store), "-q", *args], capsys)
    _one_line_error(code, err, pattern)


def test_plot_scatter_from_saved_results(tmp_path, capsys):
    store = full_store(tmp_path / "s.h5")
    for i, m in enumerate(("test/eval9", "test/eval9b")):
        code, _, err = run(["eval", "--store", str(store), "-m", m, "-V", "paper", "--results-file",
                            str(tmp_path / f"r{i}.json"), "--plot", "-", "-q"], capsys)
        assert code == 0, err
    code, out, err = run(["plot", str(tmp_path / "r0.json"), str(tmp_path / "r1.json"), "--out",
                          str(tmp_path / "scatter.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text('{"a": 1}')
    code, _, err = run(["plot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png")], capsys)
    _one_line_error(code, err, "is not an `advbg eval` results file")
    code, _, err = run(["plot", str(tmp_path / "r0.json"), "-V", "no_fg", "--out", str(tmp_path / "x.png")], capsys)
    _one_line_error(code, err, "no results for variant(s) no_fg")


def _fake_hf_cache(root, repo: str, tensors: dict) -> None:
    """The Hugging Face cache layout for one timm repo: refs/main -> snapshots/<rev>/model.safetensors."""
    from safetensors.torch import save_file

    d = root / f"models--timm--{repo}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text("0123abcd")
    (d / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(tensors, d / "snapshots" / "0123abcd" / "model.safetensors")


def test_models_lists_what_runs_offline_and_cached_timm_weights_evaluate(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from advbg._compat import import_timm
    from advbg.analysis.evaluate import model_record
    from advbg.models.loading import load_classifier

    net = import_timm().create_model("test_resnet", pretrained=False)     # timm's tiny model for tests
    _fake_hf_cache(tmp_path / "hf", "test_resnet.r160_in1k", {k: v.contiguous() for k, v in net.state_dict().items()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "ckpts").mkdir()
    torch.save(TinyNet().state_dict(), tmp_path / "ckpts" / "mine.pt")
    monkeypatch.setenv("ADVBG_CHECKPOINTS", str(tmp_path / "ckpts"))
    code, out, err = run(["models"], capsys)
    assert code == 0, err
    ready, _, later = out.partition("would need a download")
    assert "advbg/lite0" in ready and "test_resnet.r160_in1k" in ready and "mine.pt" in ready and "--arch" in ready
    assert "resnet50.tv_in1k" in later and "pretrained=True" in later
    clf = load_classifier("test_resnet.r160_in1k")         # offline, from the cache
    ident = model_record(clf)
    assert ident["tag"] == "test_resnet.r160_in1k" and ident["cached_weights"]["sha256"]
    with torch.inference_mode():
        x = torch.rand(1, 3, 160, 160)
        assert torch.allclose(clf(x), net.eval()((x - clf.mean) / clf.std), atol=1e-5)
    code, _, err = run(["models", "--dir", str(tmp_path / "nope")], capsys)
    _one_line_error(code, err, "does not exist")


def test_demo_store_with_the_embedded_model_prints_the_table_and_pins_identity(tmp_path, capsys):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "advbg" / "data" / "demo.h5"
    code, out, err = run(["eval", "--store", str(demo), "-V", "original", "--results-file", str(tmp_path / "d.json"),
                          "--plot", "-", "-q"], capsys)                  # one variant: the model load dominates
    assert code == 0, err
    # every accuracy with its exact interval and k/n: 11/11 -> [71.5, 100.0] (hand-checked: 0.025 ** (1/11) = 0.715)
    assert any(line.split()[:4] == ["original", "generated", "11", "100.0%"] and "[71.5, 100.0] (11/11)" in line
               for line in out.splitlines()), out
    data = json.loads((tmp_path / "d.json").read_text())
    ident = data["models"][0]["model"]
    assert ident["name"] == "advbg/lite0" and ident["tag"] == "tf_efficientnet_lite0.embedded"
    assert ident["weights_sha256"].startswith("5793442") and ident["label_map"] == "in9"
    assert ident["timm_version"] and ident["torch_version"]


# --------------------------------------------------------------------------------------------- intervals
def test_every_accuracy_carries_n_and_its_exact_interval_and_bg_gap_a_paired_one(tmp_path):
    a = scripted(_one_hot_table(A_ROWS), "A")
    with Store(_mixed_store(tmp_path)) as s:
        report = evaluate(s, [a], EvalConfig(variants="mixed_same,mixed_rand"))
    m = report.models[0]
    d = m.to_dict()
    for v, k in (("mixed_same", 3), ("mixed_rand", 1)):       # A: 3 of 4 right on mixed_same, 1 of 4 on mixed_rand
        got = d["accuracy"][v]["interval"]["top1"]
        low, high = reference.clopper_pearson(k, 4)
        assert (got["k"], got["n"]) == (k, 4)
        assert (got["low"], got["high"]) == pytest.approx((100 * low, 100 * high), abs=1e-6)
    # per class: one image each; class 3 is wrong on mixed_same -> 0/1
    pc = d["accuracy"]["mixed_same"]["per_class_interval"]
    assert (pc["reptile"]["k"], pc["reptile"]["n"]) == (0, 1) and pc["dog"]["k"] == 1
    gap = d["bg_gap_interval"]
    # paired over the same four foregrounds: right on same [1,1,1,0], on rand [1,0,0,0]
    assert gap["diff"] == pytest.approx(50.0) and gap["n"] == 4 and gap["low"] <= 50.0 <= gap["high"]
    assert gap["low"] >= 0.0          # every pair differs in the same direction: no resample goes below 0
    text = format_report(report)
    assert "75.0% [19.4, 99.4] (3/4)" in text and "BG-Gap = mixed_same - mixed_rand = 75.0 - 25.0 = 50.0 [" in text
    csv_text = to_csv(report)
    head, row = csv_text.splitlines()[:2]
    cells = dict(zip(head.split(","), row.split(",")))
    assert float(cells["mixed_same_top1_low"]) == pytest.approx(100 * reference.clopper_pearson(3, 4)[0], abs=1e-3)
    assert cells["mixed_same_n"] == "4" and cells["bg_gap_n"] == "4"


def test_bg_gap_has_no_paired_interval_when_the_sets_hold_other_images(tmp_path):
    path = _mixed_store(tmp_path)
    with h5py.File(path, "r+") as f:            # mixed_rand's images in another order: not the same foregrounds
        del f["evalsets/mixed_rand"]
        w = EvalsetWriter(f, "mixed_rand", (SIZE, SIZE), attrs=dict(origin="released"))
        w.append_many(coded(range(4, 8)), [3, 2, 1, 0], [f"x{r}" for r in range(4)], [-1] * 4, [-1] * 4)
        w.close()
    with Store(path) as s:
        report = evaluate(s, [scripted(_one_hot_table(A_ROWS), "A")], EvalConfig(variants="mixed_same,mixed_rand"))
    assert report.models[0].bg_gap is not None and report.models[0].bg_gap_interval is None
    assert "not paired" in format_report(report)


def test_every_bar_of_the_bar_chart_has_its_error_bar(tmp_path, monkeypatch):
    from advbg.analysis import evalreport

    drawn = []
    monkeypatch.setattr(evalreport, "save_figure", lambda fig, path: drawn.append(fig) or path)
    a, b = scripted(_one_hot_table(A_ROWS), "A"), scripted(_one_hot_table(B_ROWS), "B")
    with Store(_mixed_store(tmp_path)) as s:
        report = evaluate(s, [a, b], EvalConfig(variants="mixed_same,mixed_rand"))
    evalreport.bar_chart(report, tmp_path / "bars.png")
    ax = drawn[0].axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)
    segs = bars[0].errorbar.lines[2][0].get_segments()     # model A: one vertical segment per variant
    lows_highs = sorted((round(min(s[:, 1]), 6), round(max(s[:, 1]), 6)) for s in segs)
    want = sorted((round(100 * lo, 6), round(100 * hi, 6)) for lo, hi in (reference.clopper_pearson(3, 4),
                                                                            reference.clopper_pearson(1, 4)))
    assert lows_highs == pytest.approx(want, abs=1e-6)
    assert "paired bootstrap" in ax.get_title()
