"""bf16 on a CPU inside a search: `--amp auto` calibrates on the search's own composites and, where it picks bf16,
re-checks in fp32 every decision and every worst-background candidate bf16 could get wrong, so each foreground's
row equals the fp32 loop's. The store here is built to be hard for bf16: near-duplicate backgrounds (margins a
hair apart) and a model whose logits sit on a large common offset (bf16 keeps 8 bits: 0.5-logit steps at 100)."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import TinyNet, make_tiny_classifier
from reference import naive_search
from test_search import assert_equals_reference

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.hardware import bf16_support
from advbg.models.classifier import Classifier
from advbg.models.precision import FORCE_ENV, PrecisionChoice
from advbg.search import runner
from advbg.search.config import SearchConfig
from advbg.search.engine import Engine
from advbg.search.results import FIELDS, load_search
from advbg.search.runner import search


def _bf16_autocast_runs() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8), torch.ones(2, 3, 3, 3))
        return True
    except RuntimeError:
        return False


needs_bf16 = pytest.mark.skipif(not _bf16_autocast_runs(), reason="torch has no CPU bf16 autocast here: bf16 + "
                                "fp32 re-check equal to fp32 NOT checked")
needs_native = pytest.mark.skipif(not bf16_support().native, reason="this CPU has no native bf16 (AMX or "
                                  "AVX512-BF16), so --amp auto never picks bf16: its re-checked rows NOT checked")


class OffsetNet(TinyNet):
    """TinyNet's logits, scaled down and shifted by +100: fp32 margins of a few logits, bf16 steps of 0.5."""

    def forward(self, x):
        return super().forward(x) * 0.5 + 100.0


def offset_classifier() -> Classifier:
    tiny = make_tiny_classifier()
    return Classifier(OffsetNet(9, seed=2), dataclasses.replace(tiny.config, architecture="offsetnet"),
                      tiny.label_map).to(memory_format=torch.channels_last)


def make_hard_store(path, n_fg: int = 10, n_unique: int = 6, copies: int = 4, size: int = 32, seed: int = 7):
    """Each of ``n_unique`` random backgrounds comes ``copies`` times with +-2 grey levels of noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_fg, size, size), np.uint8)
    for i in range(n_fg):
        y0, x0 = rng.integers(0, size // 2, 2)
        masks[i, y0:y0 + size // 3, x0:x0 + size // 3] = 1
    base = rng.integers(2, 254, (n_unique, size, size, 3))
    bgs = np.concatenate([base + rng.integers(-2, 3, base.shape) for _ in range(copies)]).astype(np.uint8)
    return write_store(path, class_names=IN9_CLASSES,
                       fg_images=rng.integers(0, 256, (n_fg, size, size, 3), dtype=np.uint8), fg_masks=masks,
                       fg_labels=rng.integers(0, 9, n_fg), bg_images=bgs,
                       bg_labels=rng.integers(-1, 9, len(bgs)))


def rows(res) -> dict:
    return {k: getattr(res, k) for k in FIELDS}


def assert_rows_equal(got, want) -> None:
    for k in FIELDS:
        assert np.array_equal(getattr(got, k), getattr(want, k)), (k, getattr(got, k), getattr(want, k))


def differing(got, want) -> list[str]:
    return [k for k in FIELDS if not np.array_equal(getattr(got, k), getattr(want, k))]


def run(s, clf, **kw):
    return search(s, clf, SearchConfig(batch_size=16, fg_block=4, **kw), write=False, progress=False,
                  echo=lambda m: None)


@needs_bf16
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_bf16_with_verify_equals_fp32_on_a_store_bf16_gets_wrong(tmp_path, mode, criterion):
    """bf16 + re-check == the naive fp32 loop, row for row; bf16 alone, and bf16 re-checking only the decisions
    (not the pairs near each foreground's worst margin), each differ on this store: it really is hard."""
    clf = offset_classifier()
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        ref = naive_search(s, clf, criterion, mode == "early-exit")
        fp32 = run(s, clf, mode=mode, criterion=criterion, amp="off")
        ver = run(s, clf, mode=mode, criterion=criterion, amp="bf16", verify_close=4.0)
        plain = run(s, clf, mode=mode, criterion=criterion, amp="bf16")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Engine, "_verify_worst", lambda self, u, j0, j1, blk: None)
            mp.setattr(Engine, "_worst_pending", lambda self, u: torch.zeros(1, dtype=torch.bool))
            decisions_only = run(s, clf, mode=mode, criterion=criterion, amp="bf16", verify_close=4.0)
    assert_equals_reference(fp32, ref)
    assert_equals_reference(ver, ref)
    assert_rows_equal(ver, fp32)
    assert 0 < ver.run.verified < ver.n_evaluated.sum() * 2
    assert differing(plain, fp32), "bf16 without the fp32 re-check matched fp32: the store is not hard"
    if mode == "exhaustive":    # early exit reports no worst background past the first fooling one
        assert "worst_bg" in differing(decisions_only, fp32), "the worst-margin re-check was not needed here"


@needs_native
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_amp_auto_on_a_cpu_with_bf16_runs_it_rechecked_and_records_why(tmp_path, monkeypatch, mode):
    """ADVBG_CALIBRATION=bf16-faster: --amp auto runs bf16 with the calibrated tolerance; rows equal fp32's and the
    run record (also as stored) says which precision, why, the tolerance, the error bound and the timings."""
    monkeypatch.setenv(FORCE_ENV, "bf16-faster")
    clf = offset_classifier()
    said: list[str] = []
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        fp32 = run(s, clf, mode=mode, amp="off")
        auto = search(s, clf, SearchConfig(mode=mode, batch_size=16, fg_block=4), results_name="auto",
                      progress=False, echo=said.append)
        stored = load_search(s, "auto")
    assert_rows_equal(auto, fp32)
    p = auto.run.precision
    assert auto.run.amp == p["amp"] == "bf16" and auto.run.verified > 0
    assert p["reason"].startswith("bf16:") and FORCE_ENV in p["reason"]
    assert p["bf16_error_bound"] > 0 and p["verify_close"] == pytest.approx(4 * p["bf16_error_bound"])
    assert set(p["timings"]) == {"fp32", "bf16"} and p["calibration_batch"] == 16
    assert stored.run.precision == p and stored.run.amp == "bf16"
    said_auto = [m for m in said if "--amp auto" in m]      # the choice, then the fp32 fallback if the guard took it
    assert said_auto == [f"advbg: --amp auto: {p['reason']}"] + ([f"advbg: --amp auto: {p['fallback']}"]
                                                                 if "fallback" in p else [])


@needs_bf16
@pytest.mark.parametrize("bf16_seconds, falls_back", [(0.5, True), (0.001, False)])
def test_amp_auto_goes_back_to_fp32_when_the_rechecks_eat_the_bf16_gain(tmp_path, monkeypatch, bf16_seconds,
                                                                        falls_back):
    """The calibration says bf16 is 2x (or 1000x) faster; on this store most pairs need the fp32 re-check, so at 2x
    bf16 + verify costs more than fp32 per pair and the later units run fp32 (said, recorded); at 1000x it stays
    bf16. Either way the rows equal fp32's."""
    choice = PrecisionChoice("bf16", "bf16: given by the test", 4.0, 1.0, {"fp32": (1.0,), "bf16": (bf16_seconds,)})
    monkeypatch.setattr(runner, "choose_precision", lambda *a, **k: choice)
    monkeypatch.setenv(FORCE_ENV, "bf16-faster")          # calibrate even though the run is small
    clf = offset_classifier()
    said: list[str] = []
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        fp32 = run(s, clf, amp="off")
        auto = search(s, clf, SearchConfig(batch_size=16, fg_block=4), write=False, progress=False, echo=said.append)
    assert_rows_equal(auto, fp32)
    p = auto.run.precision
    assert ("fallback" in p) == falls_back
    if falls_back:
        assert said[-1] == f"advbg: --amp auto: {p['fallback']}" and p["fallback"].startswith("fp32 from here")
        # the first unit (4 foregrounds x 24 backgrounds) ran bf16 + re-check, the later ones plain fp32
        assert "of 96 bf16 composites" in p["fallback"] and 0 < auto.run.verified <= 96
    else:
        assert auto.run.verified > 96        # every unit kept re-checking


@needs_native
def test_amp_auto_falls_back_to_fp32_when_the_calibration_says_bf16_is_slower(tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "bf16-slower")
    clf = offset_classifier()
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        fp32 = run(s, clf, amp="off")
        auto = run(s, clf)
    assert_rows_equal(auto, fp32)
    p = auto.run.precision
    assert auto.run.amp == p["amp"] == "off" and p["verify_close"] == 0 and auto.run.verified == 0
    assert p["reason"].startswith("fp32:") and "bf16-slower" in p["reason"]


def test_amp_auto_skips_the_calibration_for_a_run_too_small_to_pay_for_it(tmp_path, monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    called = []
    monkeypatch.setattr(runner, "choose_precision", lambda *a, **k: called.append(1))
    clf = offset_classifier()
    said: list[str] = []
    with Store(make_hard_store(tmp_path / "s.h5", n_fg=3, n_unique=2), "r+") as s:
        auto = search(s, clf, SearchConfig(batch_size=16, fg_block=4), write=False, progress=False, echo=said.append)
        explicit = run(s, clf, amp="off")
    assert not called and auto.run.amp == "off" and explicit.run.precision is None
    assert said == []               # recorded, not said: a one-line error after it must stay the only line
    assert "too few for the calibration" in auto.run.precision["reason"]
    assert_rows_equal(auto, explicit)


@needs_native
def test_the_calibration_batch_is_made_of_the_searchs_own_composites(tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "bf16-slower")
    seen = []
    real = runner.choose_precision
    monkeypatch.setattr(runner, "choose_precision", lambda clf, x, **k: (seen.append(x), real(clf, x, **k))[1])
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        run(s, offset_classifier(), foregrounds=(1, 2), backgrounds=tuple(range(12)))
        fg, masks, bgs = s.foregrounds.read([1, 2]), s.foregrounds.read_masks([1, 2]), s.backgrounds.read(range(12))
    (x,) = seen
    assert x.shape == (16, 3, 32, 32)
    pix = np.rint(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    for img in pix:   # every composite is one selected foreground on one pool background
        assert any(np.array_equal(img, np.where(m[..., None] == 1, f, b)) for f, m in zip(fg, masks) for b in bgs)


def test_the_cli_sets_intra_op_threads_and_the_loader_takes_only_the_cores_left(monkeypatch, capsys):
    from conftest import run_cli

    from advbg.hardware import usable_cores
    from advbg.search.pool import default_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ADVBG_THREADS", "1")
        code, _, _ = run_cli(["--help"], capsys)
        assert code == 0 and torch.get_num_threads() == 1
        assert default_threads() == max(1, min(8, usable_cores() - 1))
        torch.set_num_threads(usable_cores())
        assert default_threads() == 1
        monkeypatch.setenv("ADVBG_THREADS", "lots")
        code, out, err = run_cli(["--help"], capsys)
        assert code != 0 and err.strip().splitlines() == [err.strip()] and "ADVBG_THREADS" in err
    finally:
        torch.set_num_threads(before)


@needs_bf16
def test_eval_forwards_under_a_rechecked_bf16_give_fp32_ranks_and_predictions():
    from advbg.analysis.evaluate import _Precision, _score_block

    clf = offset_classifier()
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (8, 32, 32, 3))
    images = np.concatenate([base + rng.integers(-2, 3, base.shape) for _ in range(8)]).clip(0, 255).astype(np.uint8)
    labels = rng.integers(0, 9, len(images))
    ref_r, ref_p = _score_block(clf, images, labels, _Precision("off"))
    r, p = _score_block(clf, images, labels, _Precision("bf16", tolerance=4.0))
    plain_r, plain_p = _score_block(clf, images, labels, _Precision("bf16"))
    assert np.array_equal(r, ref_r) and np.array_equal(p, ref_p)
    assert not (np.array_equal(plain_r, ref_r) and np.array_equal(plain_p, ref_p)), "bf16 alone matched fp32"


@needs_native
def test_eval_amp_auto_on_a_cpu_records_its_choice_and_keeps_fp32_scores(tmp_path, monkeypatch):
    from advbg.analysis.evaluate import EvalConfig, evaluate

    monkeypatch.setenv(FORCE_ENV, "bf16-faster")
    clf = offset_classifier()
    with Store(make_hard_store(tmp_path / "s.h5"), "r+") as s:
        fp32 = evaluate(s, [clf], EvalConfig(variants="original,mixed_rand", amp="off", batch_size=8))
        auto = evaluate(s, [clf], EvalConfig(variants="original,mixed_rand", amp="auto", batch_size=8))
    (rec,) = auto.precision.values()
    assert rec["amp"] == "bf16" and rec["reason"].startswith("bf16:") and fp32.precision == {}
    for v in ("original", "mixed_rand"):
        a, b = auto.models[0].scores[v], fp32.models[0].scores[v]
        assert (a.correct, a.class_correct) == (b.correct, b.class_correct)
        assert np.array_equal(a.hits, b.hits)
    assert auto.to_dict()["precision"] == auto.precision


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_bf16_with_the_calibrated_tolerance_gives_fp32_rows_on_the_demo_store(tmp_path, criterion):
    """The real embedded model (advbg/lite0) on the bundled demo photos: bf16 + the re-check at the tolerance the
    calibration derives for this model gives the fp32 search's rows, every foreground (the issue's demo-store check)."""
    import shutil

    from advbg.commands.common import DEMO_STORE
    from advbg.models.loading import load_classifier
    from advbg.models.precision import choose_precision
    from advbg.search.compositor import composite_pairs

    path = tmp_path / "demo.h5"
    shutil.copyfile(DEMO_STORE, path)
    clf = load_classifier("advbg/lite0", device="cpu")
    with Store(path) as s:
        k = torch.arange(16)
        batch = composite_pairs(torch.from_numpy(s.foregrounds.read(np.arange(8))),
                                torch.from_numpy(s.foregrounds.read_masks(np.arange(8))),
                                torch.from_numpy(s.backgrounds.read(np.arange(16))), k % 8, k)
        tol = choose_precision(clf, batch, force="bf16-faster").tolerance
        fp32 = search(s, clf, SearchConfig(criterion=criterion, amp="off"), write=False, progress=False)
        ver = search(s, clf, SearchConfig(criterion=criterion, amp="bf16", verify_close=tol), write=False,
                     progress=False)
    assert tol > 0 and ver.run.verified > 0
    assert_rows_equal(ver, fp32)
