"""advbg's CUDA paths against a plain CPU reference loop: fp32 and bf16 (with and without --verify-close), the
streamed pool and its side stream, the early-exit scheduler (one batch behind on CUDA), torch.compile and CUDA
graphs, a real out-of-memory error, torchrun (NCCL at world size 1, gloo at world size 2 on one GPU), kill and
resume, and universal / index / eval on a CUDA model.

Every test carries the marker ``cuda`` (``pytest -m cuda``). Without a CUDA device each is skipped with a
reason that names what it did not check. ``ADVBG_CUDA_TESTS_ON_CPU=1`` runs the tests that mean something on
a CPU (everything but bf16, out-of-memory, NCCL and CUDA graphs) on the CPU instead, to check the tests
themselves where no GPU is lent.

The reference shares nothing with advbg but the model's forward: images and labels are read with h5py, the
composite is ``mask * fg + (1 - mask) * bg`` in float on the CPU, one composite per forward, and the label-map
reduction (README "Label maps") is done here in numpy from the map's table. fp32 comparisons turn TF32 off
(torch's default lets cuDNN run fp32 convolutions in TF32) and allow ``TOL`` logits of difference: a pair whose
two best group scores are closer than that may go either way, and is excused from the exact comparisons.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_random_store, make_tiny_classifier

from advbg.commands.common import DEMO_STORE
from advbg.commands.evaluate import run_eval
from advbg.commands.index import run_index
from advbg.commands.universal import run_universal
from advbg.data.store import Store
from advbg.models.classifier import Classifier
from advbg.models.loading import ModelSpec, load_classifier
from advbg.search.config import SearchConfig
from advbg.search.results import FIELDS, load_outcome, load_search
from advbg.search.runner import search

pytestmark = pytest.mark.cuda

CUDA = torch.cuda.is_available()
ON_CPU = os.environ.get("ADVBG_CUDA_TESTS_ON_CPU") == "1"
DEV = "cuda" if CUDA else "cpu"
ENTRY = Path(__file__).with_name("advbg_entry.py")
REPORT = os.environ.get("ADVBG_CUDA_REPORT")     # gpu_check.sh: a JSON file the flip counts are added to
TOL = 1e-3                                       # logits: fp32 CUDA vs fp32 CPU (TF32 off)
# bf16 changes a logit by up to about this much on these models (tiny: logits ~50; lite0: ~10)
BF16_BOUND = {"tiny": 4.0, "lite0": 1.0}


def needs_cuda(what: str, cpu_ok: bool = True):
    """Skip unless CUDA (or, with ``cpu_ok``, ADVBG_CUDA_TESTS_ON_CPU=1); the reason names what is unchecked."""
    run = CUDA or (ON_CPU and cpu_ok)
    return pytest.mark.skipif(not run, reason=f"no CUDA device: not checked: {what}")


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


# The GPU machine's image has no scipy, and its 35 MB wheel does not fit beside the carried ones (gpu_check.sh):
# the commands that print intervals need it.
needs_scipy = pytest.mark.skipif(not _has("scipy.stats"), reason="scipy missing (not carried to the GPU machine): "
                                 "not checked: this command on CUDA (it prints 95% intervals, which need scipy)")


@pytest.fixture(autouse=True)
def _fp32_is_fp32():
    """Full fp32 on CUDA for the comparisons with the CPU reference (restored afterwards)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def report(key: str, value) -> None:
    print(f"{key}: {json.dumps(value)}")
    if REPORT:
        p = Path(REPORT)
        d = json.loads(p.read_text()) if p.exists() else {}
        d[key] = value
        p.write_text(json.dumps(d, indent=2))


# --------------------------------------------------------------------------------------------- the reference
@dataclass
class Ref:
    """Every pair of a store, by the plain loop: margin, mapped prediction (-1 = none), gap between the two
    best group scores; labels."""

    margin: np.ndarray
    pred: np.ndarray
    gap: np.ndarray
    fg_label: np.ndarray
    bg_label: np.ndarray


def reference(path, clf: Classifier) -> Ref:
    cpu = copy.deepcopy(clf).to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    with h5py.File(path, "r") as f:
        fgs, masks = f["foregrounds/image"][()], f["foregrounds/mask"][()]
        bgs = f["backgrounds/image"][()]
        fl, bl = f["foregrounds/label"][()].astype(np.int64), f["backgrounds/label"][()].astype(np.int64)
    table = np.asarray(clf.label_map.table)
    n_cls = clf.label_map.num_classes
    groups = [np.flatnonzero(table == c) for c in range(n_cls)]
    if (table < 0).any():
        groups.append(np.flatnonzero(table < 0))               # the "none" group of unmapped outputs
    F, B = len(fgs), len(bgs)
    margin, gap, pred = np.empty((F, B)), np.empty((F, B)), np.empty((F, B), np.int64)
    for i in range(F):
        fg = fgs[i].astype(np.float32) / 255
        m = masks[i][..., None].astype(np.float32)
        for j in range(B):
            x = m * fg + (1 - m) * (bgs[j].astype(np.float32) / 255)
            with torch.no_grad():
                logits = cpu(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())[0].double().numpy()
            scores = np.array([logits[g].max() for g in groups])
            top = int(np.argmax(scores))
            pred[i, j] = top if top < n_cls else -1
            others = scores.copy()
            others[fl[i]] = -np.inf
            margin[i, j] = scores[fl[i]] - others.max()
            s = np.sort(scores)
            gap[i, j] = s[-1] - s[-2]
    return Ref(margin, pred, gap, fl, bl)


def fooled(ref: Ref, criterion: str) -> np.ndarray:
    t, b = ref.fg_label[:, None], ref.bg_label[None, :]
    if criterion == "any":
        return ref.pred != t
    return (ref.pred == b) & (b >= 0) & (b != t)


def expected(ref: Ref, criterion: str, mode: str) -> list[dict]:
    """What the README's definitions give per foreground (pool = every background, in bg_id order)."""
    fo = fooled(ref, criterion)
    out = []
    for i in range(ref.margin.shape[0]):
        hits = np.flatnonzero(fo[i])
        first = int(hits[0]) if hits.size else -1
        n = first + 1 if (mode == "early-exit" and first >= 0) else fo.shape[1]
        out.append(dict(n=n, first=first, n_fooling=int(fo[i, :n].sum()), margins=ref.margin[i, :n],
                        robust=bool((ref.gap[i, :n] > TOL).all())))
    return out


def assert_matches_reference(res, ref: Ref, criterion: str, mode: str, tol: float = TOL) -> None:
    """Exact decisions and counts, worst bg among the reference's within-tolerance minima, worst margin within
    ``tol``; a foreground with a pair closer than ``tol`` to a decision is excused (at most one of them)."""
    checked = 0
    for i, e in enumerate(expected(ref, criterion, mode)):
        if not e["robust"]:
            continue
        checked += 1
        assert res.first_fooling_bg[i] == e["first"], i
        assert res.n_fooling[i] == e["n_fooling"], i
        assert res.n_evaluated[i] == e["n"], i
        ms = e["margins"]
        near = np.flatnonzero(ms <= ms.min() + 2 * tol)
        assert res.worst_bg[i] in near, (i, res.worst_bg[i], near)
        assert abs(res.worst_margin[i] - ms.min()) <= tol * max(1.0, abs(ms.min())), i
        assert res.worst_pred[i] == ref.pred[i, res.worst_bg[i]], i
    assert checked >= len(res) - 1, f"only {checked} of {len(res)} foregrounds were clear of the tolerance"


def stored_fooled(store_path, name: str, ref: Ref, criterion: str) -> np.ndarray:
    """(F, B) fooled decisions from a stored outcome matrix (README: 254 = none, 255 = not evaluated)."""
    with Store(store_path) as s:
        outcome, _, _ = load_outcome(s, name)
    assert (outcome != 255).all()
    pred = np.where(outcome == 254, -1, outcome.astype(np.int64))
    return fooled(Ref(ref.margin, pred, ref.gap, ref.fg_label, ref.bg_label), criterion)


def closeness(ref: Ref, criterion: str) -> np.ndarray:
    return np.abs(ref.margin) if criterion == "any" else ref.gap


def cfg(**kw) -> SearchConfig:
    return SearchConfig(**{"device": DEV, "amp": "off", **kw})


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random store (7 x 11, 32 px) and the reference of the tiny models on it."""
    path = make_random_store(tmp_path_factory.mktemp("small") / "s.h5", n_fg=7, n_bg=11, seed=3)
    tiny, tiny1000 = make_tiny_classifier(), make_tiny_classifier(1000, "in9", seed=1)
    return dict(path=path, tiny=(tiny, reference(path, tiny)), tiny1000=(tiny1000, reference(path, tiny1000)))


@pytest.fixture(scope="module")
def lite0():
    """The embedded model (advbg/lite0), on the CPU."""
    return load_classifier("advbg/lite0", device="cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, lite0):
    """The embedded model on the demo store, and its reference."""
    path = tmp_path_factory.mktemp("demo") / "demo.h5"
    shutil.copyfile(DEMO_STORE, path)
    return dict(path=path, clf=lite0, ref=reference(path, lite0))


def fresh_copy(src, tmp_path, name="s.h5") -> Path:
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


# --------------------------------------------------------------------------------------------- fp32 parity
@needs_cuda("fp32 CUDA search = CPU reference loop (worst bg, margin, counts) on the tiny models")
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("model", ["tiny", "tiny1000"])
def test_fp32_search_equals_reference(small, criterion, mode, model):
    clf, ref = small[model]
    with Store(small["path"]) as s:
        # batch 5, units of 3: batches straddle foregrounds, the last unit is partial
        res = search(s, clf, cfg(criterion=criterion, mode=mode, batch_size=5, fg_block=3), write=False,
                     progress=False)
    assert res.run.device.startswith(DEV)
    assert_matches_reference(res, ref, criterion, mode)
    fo = fooled(ref, criterion)
    if model == "tiny" or criterion == "any":   # (the 1000-output model never predicts a bg's class here)
        assert 0 < fo.sum() < fo.size            # not vacuous


@needs_cuda("fp32 CUDA search with the embedded model (advbg/lite0) on the demo store = CPU reference loop")
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_fp32_embedded_model_on_demo_store_equals_reference(demo, criterion, mode):
    with Store(demo["path"]) as s:
        res = search(s, demo["clf"], cfg(criterion=criterion, mode=mode, batch_size=16, fg_block=4), write=False,
                     progress=False)
    assert_matches_reference(res, demo["ref"], criterion, mode)


@needs_cuda("early exit on CUDA (scheduler one batch behind) = reference on a 40 x 60 store, batches of 16")
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_early_exit_on_a_larger_store_equals_reference(tmp_path, criterion):
    path = make_random_store(tmp_path / "s.h5", n_fg=40, n_bg=60, seed=7)
    clf = make_tiny_classifier()
    ref = reference(path, clf)
    with Store(path) as s:
        res = search(s, clf, cfg(criterion=criterion, mode="early-exit", batch_size=16, fg_block=8), write=False,
                     progress=False)
    assert_matches_reference(res, ref, criterion, "early-exit")
    assert res.run.forwards < 40 * 60            # it did stop early


# --------------------------------------------------------------------------------------------- bf16
def _bf16_case(name, small, demo):
    if name == "tiny":
        return small["path"], small["tiny"][0], small["tiny"][1]
    return demo["path"], demo["clf"], demo["ref"]


@needs_cuda("bf16 autocast with --verify-close gives the fp32 fooled decisions (per pair and per foreground)",
            cpu_ok=False)
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("case", ["tiny", "lite0"])
def test_bf16_with_verify_close_keeps_fp32_decisions(small, demo, tmp_path, criterion, case):
    src, clf, ref = _bf16_case(case, small, demo)
    path = fresh_copy(src, tmp_path)
    v = BF16_BOUND[case]
    with Store(path, "r+") as s:
        f32 = search(s, clf, cfg(criterion=criterion, batch_size=32), results_name="f32", progress=False)
        b16 = search(s, clf, cfg(criterion=criterion, batch_size=32, amp="bf16", verify_close=v),
                     results_name="b16", progress=False)
        ee = search(s, clf, cfg(criterion=criterion, mode="early-exit", batch_size=32, amp="bf16", verify_close=v),
                    write=False, progress=False)
    assert b16.run.amp == "bf16" and b16.run.verified > 0
    assert np.array_equal(stored_fooled(path, "b16", ref, criterion), stored_fooled(path, "f32", ref, criterion))
    for r in (b16, ee):
        assert np.array_equal(r.first_fooling_bg, f32.first_fooling_bg)
        assert np.array_equal(r.fooled, f32.fooled)
    assert np.array_equal(b16.n_fooling, f32.n_fooling)


def _rows_equal(got, want) -> None:
    """Every per-foreground field equal; the worst margin (recomputed in fp32 in a batch of another size) to
    the last few ulps."""
    for k in FIELDS:
        if k == "worst_margin":
            np.testing.assert_allclose(got.worst_margin, want.worst_margin, rtol=1e-6, atol=1e-5)
        else:
            assert np.array_equal(getattr(got, k), getattr(want, k)), (k, getattr(got, k), getattr(want, k))


@needs_cuda("bf16 autocast with --verify-close gives fp32's per-foreground rows (verdict, worst background and "
            "its margin and prediction, first fooling background, counts) on every foreground", cpu_ok=False)
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("case", ["tiny", "lite0"])
def test_bf16_with_verify_close_gives_fp32_rows(small, demo, tmp_path, criterion, case, mode):
    src, clf, _ = _bf16_case(case, small, demo)
    with Store(fresh_copy(src, tmp_path), "r+") as s:
        f32 = search(s, clf, cfg(criterion=criterion, mode=mode, batch_size=32), write=False, progress=False)
        b16 = search(s, clf, cfg(criterion=criterion, mode=mode, batch_size=32, amp="bf16",
                                 verify_close=BF16_BOUND[case]), write=False, progress=False)
        auto = search(s, clf, cfg(criterion=criterion, mode=mode, batch_size=32, amp="auto"), write=False,
                      progress=False)
    _rows_equal(b16, f32)
    assert b16.run.amp == "bf16" and b16.run.verified > 0
    assert auto.run.amp == "bf16" and auto.run.precision is None     # CUDA: --amp auto is bf16, not calibrated


@needs_cuda("bf16 + --verify-close equals fp32 row for row on a store built to be hard for bf16 (near-duplicate "
            "backgrounds, logits on a +100 offset); plain bf16 differs there", cpu_ok=False)
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_bf16_with_verify_close_on_a_hard_store_gives_fp32_rows(tmp_path, mode):
    from test_precision_search import differing, make_hard_store, offset_classifier

    clf = offset_classifier().to(DEV)
    with Store(make_hard_store(tmp_path / "hard.h5"), "r+") as s:
        f32 = search(s, clf, cfg(mode=mode, batch_size=16, fg_block=4), write=False, progress=False)
        b16 = search(s, clf, cfg(mode=mode, batch_size=16, fg_block=4, amp="bf16", verify_close=4.0),
                     write=False, progress=False)
        plain = search(s, clf, cfg(mode=mode, batch_size=16, fg_block=4, amp="bf16"), write=False, progress=False)
    _rows_equal(b16, f32)
    assert differing(plain, f32), "plain bf16 matched fp32 on CUDA: the store is not hard there"


@needs_cuda("bf16 autocast without --verify-close: number of flipped decisions vs fp32, each within the bf16 "
            "bound of the boundary", cpu_ok=False)
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("case", ["tiny", "lite0"])
def test_bf16_flips_are_counted_and_only_near_the_boundary(small, demo, tmp_path, criterion, case):
    src, clf, ref = _bf16_case(case, small, demo)
    path = fresh_copy(src, tmp_path)
    with Store(path, "r+") as s:
        f32 = search(s, clf, cfg(criterion=criterion, batch_size=32), results_name="f32", progress=False)
        b16 = search(s, clf, cfg(criterion=criterion, batch_size=32, amp="bf16"), results_name="b16",
                     progress=False)
    a, b = stored_fooled(path, "f32", ref, criterion), stored_fooled(path, "b16", ref, criterion)
    flips = a != b
    report(f"bf16_flips.{case}.{criterion}", dict(
        pairs=int(flips.size), pair_decisions_flipped=int(flips.sum()),
        foreground_decisions_flipped=int((f32.fooled != b16.fooled).sum()),
        worst_bg_changed=int((f32.worst_bg != b16.worst_bg).sum()),
        max_abs_worst_margin_change=float(np.nanmax(np.abs(f32.worst_margin - b16.worst_margin)))))
    assert b16.run.amp == "bf16" and b16.run.verified == 0
    assert (closeness(ref, criterion)[flips] < BF16_BOUND[case]).all()


# --------------------------------------------------------------------------------------------- streaming
@needs_cuda("streamed background pool on CUDA (pinned buffers, side-stream copies, events) = resident pool")
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_streamed_pool_equals_resident_pool(tmp_path, monkeypatch, mode):
    import advbg.search.pool as pool_mod

    # 600 backgrounds of 224 px = 90 MB of uint8, over half of a 0.15 GB budget: streamed in blocks of ~130
    path = make_random_store(tmp_path / "s.h5", n_fg=6, n_bg=600, size=224, seed=9)
    clf = make_tiny_classifier(size=224)
    seen = []
    real = pool_mod.BackgroundPool.blocks

    def spy(self):
        n = 0
        for block in real(self):
            n += 1
            yield block
        seen.append((self.resident, n))

    monkeypatch.setattr(pool_mod.BackgroundPool, "blocks", spy)
    with Store(path) as s:
        resident = search(s, clf, cfg(mode=mode, batch_size=64, fg_block=3), write=False, progress=False)
        streamed = search(s, clf, cfg(mode=mode, batch_size=64, fg_block=3, memory_gb=0.15), write=False,
                          progress=False)
    assert seen[0][0] and not seen[-1][0] and seen[-1][1] > 2
    for k in FIELDS:
        assert np.array_equal(getattr(streamed, k), getattr(resident, k), equal_nan=True), k


# --------------------------------------------------------------------------------------------- compile
@needs_cuda("torch.compile of the CUDA search step = reference")
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_compiled_search_equals_reference(small, mode):
    clf, ref = small["tiny"]
    with Store(small["path"]) as s:
        res = search(s, clf, cfg(mode=mode, batch_size=8, fg_block=3, compile=True), write=False, progress=False)
    assert_matches_reference(res, ref, "any", mode)


@needs_cuda("torch.compile with CUDA graphs (mode reduce-overhead, padded static batches) = eager and reference",
            cpu_ok=False)
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_graphs_equal_eager(small, mode, amp):
    clf, ref = small["tiny"]
    with Store(small["path"]) as s:
        eager = search(s, clf, cfg(mode=mode, batch_size=8, fg_block=3, amp=amp), write=False, progress=False)
        graphs = search(s, clf, cfg(mode=mode, batch_size=8, fg_block=3, amp=amp, compile=True, cuda_graphs=True),
                        write=False, progress=False)
    if amp == "off":
        assert_matches_reference(graphs, ref, "any", mode)
    close = (closeness(ref, "any") < BF16_BOUND["tiny"]).any(1)      # foregrounds a bf16 rounding can move
    for k in ("first_fooling_bg", "n_fooling", "n_evaluated", "worst_bg"):
        a, b = getattr(graphs, k), getattr(eager, k)
        assert np.array_equal(a[~close], b[~close]), k
    assert np.allclose(graphs.worst_margin, eager.worst_margin, atol=BF16_BOUND["tiny"] if amp == "bf16" else TOL)


# --------------------------------------------------------------------------------------------- out of memory
@needs_cuda("a real CUDA out-of-memory error halves the batch and gives the same result", cpu_ok=False)
@pytest.mark.parametrize("budget", [None, 0.5])
def test_real_out_of_memory_halves_the_batch(tmp_path, budget):
    # budget None: 2**20 composites of 224 px (padded to the batch on CUDA) need ~600 GB: more than any GPU.
    # budget 0.5 GB: the budget is made binding (per-process memory fraction); 4,096 composites need ~2.5 GB.
    path = make_random_store(tmp_path / "s.h5", n_fg=4, n_bg=40, size=224, seed=5)
    clf = make_tiny_classifier(size=224)
    big = 2**20 if budget is None else 4096
    msgs = []
    with Store(path) as s:
        want = search(s, clf, cfg(batch_size=64), write=False, progress=False)
        got = search(s, clf, cfg(batch_size=big, memory_gb=budget), write=False, progress=False, echo=msgs.append)
    torch.cuda.empty_cache()
    assert got.run.batch_size < big and any("out of memory" in m for m in msgs)
    for k in FIELDS:
        if k == "worst_margin":
            assert np.allclose(got.worst_margin, want.worst_margin, rtol=1e-5, atol=1e-4)
        else:
            assert np.array_equal(getattr(got, k), getattr(want, k)), k


# --------------------------------------------------------------------------------------------- torchrun
def _torchrun(tmp_path, path, nproc: int, entry: Path, name: str):
    args = ["search", "--store", str(path), "--model", "test/tiny-entry", "--criterion", "bg-class", "--device", DEV,
            "--amp", "off", "--results-name", name, "--fg-block", "2", "--batch-size", "5", "--grid", "-", "-q"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", NVIDIA_TF32_OVERRIDE="0")  # fp32 as here
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(entry), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def _single(path, name):
    with Store(path, "r+") as s:
        # conftest's TinyNet with the entry model's weights; TF32 off in this process and the subprocess alike
        return search(s, make_tiny_classifier(), cfg(criterion="bg-class", fg_block=2, batch_size=5),
                      results_name=name, progress=False)


def _assert_stored_equal(path, got_name, want_name):
    with Store(path) as s:
        got, want = load_search(s, got_name), load_search(s, want_name)
        go, wo = load_outcome(s, got_name)[0], load_outcome(s, want_name)[0]
        run = json.loads(s.results[got_name].attrs["run"])
    for k in FIELDS:
        if k == "worst_margin":
            assert np.allclose(got.worst_margin, want.worst_margin, rtol=1e-5, atol=1e-4)
        else:
            assert np.array_equal(getattr(got, k), getattr(want, k)), k
    assert np.array_equal(go, wo)
    return run


@needs_cuda("torchrun at world size 1 on CUDA (advbg joins no process group at world size 1, so NCCL itself "
            "is not exercised) = single process", cpu_ok=False)
def test_torchrun_world_one_on_cuda_equals_single_process(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=9, seed=31)
    _torchrun(tmp_path, path, 1, ENTRY, "tr1")
    _single(path, "single")
    run = _assert_stored_equal(path, "tr1", "single")
    assert run["world_size"] == 1 and run["device"].startswith("cuda")


GLOO_ENTRY = """
import runpy, sys
import torch.distributed as dist
dist.init_process_group("gloo")   # two ranks on one GPU: NCCL refuses a GPU shared by ranks, gloo does not
sys.argv[0] = {entry!r}
runpy.run_path({entry!r}, run_name="__main__")
"""


@needs_cuda("torchrun at world size 2 with gloo, both ranks on the one CUDA device = single process")
def test_torchrun_two_gloo_ranks_on_one_gpu_equal_single_process(tmp_path):
    entry = tmp_path / "gloo_entry.py"
    entry.write_text(GLOO_ENTRY.format(entry=str(ENTRY)))
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=9, seed=31)
    p = _torchrun(tmp_path, path, 2, entry, "tr2")
    assert p.stdout.count("fooling rate") == 1
    _single(path, "single")
    run = _assert_stored_equal(path, "tr2", "single")
    assert run["world_size"] == 2 and run["device"].startswith(DEV)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="fewer than 2 CUDA devices: not checked: torchrun with NCCL at world size 2")
def test_torchrun_two_nccl_ranks_equal_single_process(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=9, seed=31)
    _torchrun(tmp_path, path, 2, ENTRY, "nccl2")
    _single(path, "single")
    assert _assert_stored_equal(path, "nccl2", "single")["world_size"] == 2


# --------------------------------------------------------------------------------------------- resume
def _cli(store, *extra, sleep=0.0):
    env = dict(os.environ, ADVBG_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               NVIDIA_TF32_OVERRIDE="0")
    args = [sys.executable, str(ENTRY), "search", "--store", str(store), "--model", "test/tiny-entry", "--device",
            DEV, "--amp", "off", "--results-name", "r", "--fg-block", "2", "--batch-size", "8", "--grid", "-", "-q",
            *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_cuda("a CUDA search killed part-way (SIGKILL) and resumed = an uninterrupted CUDA search")
def test_killed_cuda_search_resumes_to_the_uninterrupted_result(tmp_path):
    from advbg.search.journal import Journal, journal_folder

    ref = make_random_store(tmp_path / "ref.h5", n_fg=16, n_bg=12, seed=11)
    assert _cli(ref).wait(120) == 0
    path = make_random_store(tmp_path / "s.h5", n_fg=16, n_bg=12, seed=11)   # 8 units of 2 foregrounds

    def units() -> int:
        j = Journal(journal_folder(path, "r"))
        return sum(1 for _ in j.records(("start",))) if j.exists() else 0

    p = _cli(path, sleep=0.1)       # 3 forwards per unit: ~0.3 s a unit, time to catch it part-way
    deadline = time.time() + 120
    while p.poll() is None and units() < 3 and time.time() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the search finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    killed_at = units()
    assert 0 < killed_at < 8
    q = _cli(path, "--resume")
    assert q.wait(120) == 0, q.stderr.read()
    with Store(ref) as a, Store(path) as b:
        want, got = load_search(a, "r"), load_search(b, "r")
        wo, go = load_outcome(a, "r")[0], load_outcome(b, "r")[0]
        assert got.run.resumed_units >= killed_at
    for k in FIELDS:
        assert np.array_equal(getattr(got, k), getattr(want, k), equal_nan=True), k
    assert np.array_equal(go, wo)


# --------------------------------------------------------------------------------------------- commands
@needs_scipy
@needs_cuda("advbg universal on a CUDA model (its search completes the outcome matrix on CUDA) = reference ASR")
def test_universal_on_cuda_equals_reference_asr(small, tmp_path):
    clf, ref = small["tiny"]
    path = fresh_copy(small["path"], tmp_path)
    clf = copy.deepcopy(clf).to(DEV)
    r = run_universal(store=path, model=clf, klass="all", criterion="bg-class", top_png=Path("-"),
                      hist_png=Path("-"), progress=False, echo=lambda m: None)
    assert r.forwards == 7 * int((ref.bg_label >= 0).sum())     # backgrounds without a class are left out
    fo = fooled(ref, "bg-class")
    # bf16 on CUDA by default: a background whose targets include a pair near the boundary is excused
    near = (closeness(ref, "bg-class") < BF16_BOUND["tiny"]) if CUDA else np.zeros_like(fo)
    checked = 0
    for c in r.classes:
        for j, a in zip(c.bg_id, c.asr):
            tgt = (ref.fg_label != c.class_id) & (ref.fg_label >= 0)
            if not tgt.any():
                assert np.isnan(a)
                continue
            if near[tgt, j].any():
                continue
            assert a == pytest.approx(100 * fo[tgt, j].mean()), (c.class_name, j)
            checked += 1
    assert checked > 0


@needs_cuda("advbg index with a CUDA model and the CPU FAISS index = the same embeddings computed on the CPU")
def test_index_with_a_cuda_model_equals_cpu_embeddings(lite0, tmp_path):
    from advbg.search.index import load_embeddings

    a, b = fresh_copy(DEMO_STORE, tmp_path, "a.h5"), fresh_copy(DEMO_STORE, tmp_path, "b.h5")
    gpu = copy.deepcopy(lite0).to(DEV)
    ra = run_index(store=a, model=gpu, batch_size=8, progress=False, echo=lambda m: None)
    rb = run_index(store=b, model=lite0, batch_size=8, progress=False, echo=lambda m: None)
    assert all(Path(p).exists() for p in ra.index_files)
    with Store(a) as sa, Store(b) as sb:
        ea, eb = load_embeddings(sa, lite0), load_embeddings(sb, lite0)
    assert ra.dim == rb.dim
    for k in ("bg_features", "fg_features", "bg_scores", "fg_scores"):
        assert np.allclose(getattr(ea, k), getattr(eb, k), rtol=1e-3, atol=1e-3), k


@needs_scipy
@needs_cuda("advbg eval with the embedded model on CUDA (fp32) = on the CPU, per variant")
def test_eval_on_cuda_equals_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variants = "original,only_bg_t,mixed_rand"
    kw = dict(variants=variants, amp="off", progress=False, echo=lambda m: None)
    on_dev = run_eval(DEMO_STORE, [ModelSpec("advbg/lite0", device=DEV)], **kw)
    on_cpu = run_eval(DEMO_STORE, [ModelSpec("advbg/lite0", device="cpu")], **kw)
    assert on_dev.variants == on_cpu.variants and on_dev.variants
    for v in on_dev.variants:
        d, c = on_dev.models[0].scores[v], on_cpu.models[0].scores[v]
        assert d.n == c.n > 0
        # at most one image per variant may sit on a near-tie that different conv algorithms break differently
        assert abs(d.correct[1] - c.correct[1]) <= 1, v


# --------------------------------------------------------------------------------------------- refine
@needs_cuda("refine on CUDA: foreground pixels bit-identical, the budget held, stored margins true")
def test_refine_on_cuda_keeps_foreground_pixels_and_the_budget(small, tmp_path):
    """`advbg refine` (API) with a CUDA model: the stored refined backgrounds, read with h5py, never change a
    pixel under the mask, stay within linf:4/255 (photometric: every parameter in its range), and their margins,
    recomputed here one composite per forward on the CPU, are the stored margins."""
    from advbg.commands.refine import run_refine
    from advbg.search.refine import PHOTOMETRIC_RANGES

    clf, _ = small["tiny"]
    path = fresh_copy(small["path"], tmp_path)
    run_refine(path, copy.deepcopy(clf).to(DEV), "linf:4/255;photometric", steps=4, batch_size=3,
               results_name="r", curve=Path("-"), grid=Path("-"), progress=False, echo=lambda m: None,
               note=lambda m: None)
    cpu = copy.deepcopy(clf).to("cpu").float().eval()
    table = np.asarray(clf.label_map.table)
    with h5py.File(tmp_path / "s.h5.d" / "results" / "r.h5", "r") as f, h5py.File(path, "r") as s:
        fg_id, start, budget = f["fg_id"][()], f["start_bg"][()], f["budget"][()]
        bg, params, true = f["background"][()], f["params"][()], f["true_class"][()]
        fgs, masks = s["foregrounds/image"][()][fg_id], s["foregrounds/mask"][()][fg_id]
        start_img = s["backgrounds/image"][()][start]
        under = np.broadcast_to(masks[..., None] == 1, bg.shape)
        assert np.array_equal(bg[under], start_img[under]), "a pixel under the mask changed"
        linf = budget == 0
        assert np.abs(bg[linf].astype(int) - start_img[linf].astype(int)).max() <= 4
        for k, (c, h) in enumerate(PHOTOMETRIC_RANGES.values()):
            assert (np.abs(params[~linf, k] - c) <= h + 1e-9).all(), k
        with torch.no_grad():
            logits = torch.cat([cpu(composite_of(a, m, b)) for a, m, b in zip(fgs, masks, bg)]).double().numpy()
        margin = np.array([_margin(row, int(t), table, clf.label_map.num_classes) for row, t in zip(logits, true)])
        np.testing.assert_allclose(f["margin_after"][()], margin, atol=TOL * 10)
        assert (f["margin_after"][()] <= f["margin_before"][()]).all()


def composite_of(fg, mask, bg) -> torch.Tensor:
    m = mask[..., None].astype(np.float32)
    x = m * (fg.astype(np.float32) / 255) + (1 - m) * (bg.astype(np.float32) / 255)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _margin(logits: np.ndarray, true: int, table: np.ndarray, n_cls: int) -> float:
    groups = [np.flatnonzero(table == c) for c in range(n_cls)]
    if (table < 0).any():
        groups.append(np.flatnonzero(table < 0))
    scores = np.array([logits[g].max() if len(g) else -np.inf for g in groups])
    return float(scores[true] - np.delete(scores, true).max())
