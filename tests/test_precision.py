"""CPU facts (advbg.hardware) and ``--amp auto`` on a CPU (advbg.models.precision.choose_precision).

The CPU texts are real /proc/cpuinfo excerpts; the peaks expected are worked out by hand from the documented rule;
the margin error bound is checked against tests/reference.py's plain-numpy margins."""
from __future__ import annotations

import time

import numpy as np
import pytest
import reference as ref
import torch
from conftest import TinyNet, make_tiny_classifier
from torch import nn

from advbg import hardware as hw
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.models.precision import (
    FORCE_ENV,
    MIN_TOLERANCE,
    SAFETY_FACTOR,
    choose_precision,
    margin_error_bound,
    resolve_amp,
    tolerance_from_bound,
)

AMD_EPYC = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
cpu MHz		: 2596.146
siblings	: 2
cpu cores	: 2
flags		: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model name	: AMD EPYC
cpu MHz		: 2600.000
flags		: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
INTEL_SPR = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz		: 2699.998
siblings	: 4
cpu cores	: 2
flags		: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
INTEL_SKX = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
siblings	: 1
cpu cores	: 1
flags		: fpu sse2 avx fma avx2 avx512f avx512bw avx512vl
"""
ARM = """processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid bf16
CPU implementer	: 0x41
"""


# --------------------------------------------------------------------------------------------- hardware
def test_cpuinfo_of_an_amd_epyc_with_avx512_bf16_and_no_amx():
    cpu = hw.parse_cpuinfo(AMD_EPYC)
    assert (cpu.model, cpu.vendor, cpu.family, cpu.threads_per_core) == ("AMD EPYC", "AuthenticAMD", 25, 1)
    assert cpu.mhz == pytest.approx(2600.0) and "cpu MHz" in cpu.mhz_source        # the largest of the blocks
    assert cpu.bf16_flags() == ["avx512_bf16", "avx512f", "avx512_vnni"]
    support = hw.bf16_support(cpu, use_torch=False)
    assert (support.amx, support.avx512_bf16, support.native) == (False, True, True)
    assert support.describe() == "AVX512-BF16 (/proc/cpuinfo flags)"


def test_cpuinfo_of_an_intel_xeon_with_amx_and_smt():
    cpu = hw.parse_cpuinfo(INTEL_SPR)
    assert cpu.threads_per_core == 2 and cpu.family == 6
    assert cpu.mhz == pytest.approx(2700.0) and cpu.mhz_source == "nominal, from the model name"
    assert hw.parse_cpuinfo(INTEL_SPR, max_mhz=3800.0).mhz == 3800.0                 # cpufreq's maximum wins
    support = hw.bf16_support(cpu, use_torch=False)
    assert (support.amx, support.avx512_bf16) == (True, True)
    assert support.describe() == "AMX + AVX512-BF16 (/proc/cpuinfo flags)"


@pytest.mark.parametrize("text", [INTEL_SKX, ARM, ""], ids=["avx512-without-bf16", "arm", "empty"])
def test_cpus_without_x86_bf16_matrix_instructions_are_not_native(text):
    assert not hw.bf16_support(hw.parse_cpuinfo(text), use_torch=False).native


def test_amx_needs_both_the_tile_and_the_bf16_flag():
    only_tile = INTEL_SPR.replace("amx_bf16 ", "").replace("avx512_bf16 ", "")
    assert not hw.bf16_support(hw.parse_cpuinfo(only_tile), use_torch=False).native


def test_unreadable_or_foreign_cpuinfo_gives_no_peak(tmp_path):
    assert hw.read_cpu(tmp_path / "missing", tmp_path / "missing").model == "unknown CPU"
    arm = hw.parse_cpuinfo(ARM)
    assert "bf16" in arm.flags and arm.model == "unknown CPU"
    assert hw.peak_gflops("fp32", arm, cores=4).gflops is None
    no_clock = hw.parse_cpuinfo(INTEL_SKX.replace(" @ 2.40GHz", ""))
    assert hw.peak_gflops("fp32", no_clock, cores=1).gflops is None


@pytest.mark.parametrize("text, cores, precision, expected", [
    # 2 cores x 2.6 GHz x (2 FMA units x 8 lanes, Zen 4's 256-bit halves, x 2) = 166.4; AVX512-BF16 doubles it
    (AMD_EPYC, 2, "fp32", 2 * 2.6 * 32), (AMD_EPYC, 2, "bf16", 2 * 2.6 * 64),
    # 4 logical CPUs, 2 per core -> 2 cores x 2.7 GHz x (2 x 16 lanes x 2); AMX: 1024 FLOP per cycle per core
    (INTEL_SPR, 4, "fp32", 2 * 2.7 * 64), (INTEL_SPR, 4, "bf16", 2 * 2.7 * 1024),
    # AVX-512 without bf16 instructions: bf16 runs at the fp32 rate
    (INTEL_SKX, 3, "fp32", 3 * 2.4 * 64), (INTEL_SKX, 3, "bf16", 3 * 2.4 * 64),
], ids=["amd-fp32", "amd-bf16", "spr-fp32", "spr-amx", "skx-fp32", "skx-bf16"])
def test_peak_is_cores_times_clock_times_fma_lanes(text, cores, precision, expected):
    cpu = hw.parse_cpuinfo(text)
    peak = hw.peak_gflops(precision, cpu, cores=cores, bf16=hw.bf16_support(cpu, use_torch=False))
    assert peak.gflops == pytest.approx(expected)
    assert f"{expected:,.0f} GFLOP/s" in peak.how and "GHz" in peak.how
    with pytest.raises(AdvbgError):
        hw.peak_gflops("fp16", cpu, cores=cores)


def _cgroup(tmp_path, files: dict[str, str], self_cgroup: str):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self").write_text(self_cgroup)
    return hw.cgroup_cpu_quota(root, tmp_path / "self")


def test_cgroup_v2_quota_is_the_smallest_on_the_way_to_the_root(tmp_path):
    files = {"cpu.max": "max 100000\n", "a/cpu.max": "250000 100000\n", "a/b/cpu.max": "max 100000\n"}
    assert _cgroup(tmp_path, files, "0::/a/b\n") == 2.5
    files["a/b/cpu.max"] = "150000 100000\n"
    assert _cgroup(tmp_path / "2", files, "0::/a/b\n") == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    files = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path, files, "5:cpuacct,cpu:/nothing\n4:cpu,cpuacct:/docker/x\n1:memory:/m\n") == 3.0
    unlimited = {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "2", unlimited, "4:cpu,cpuacct:/\n") is None
    assert _cgroup(tmp_path / "3", {"cpu.max": "max 100000\n"}, "0::/\n") is None
    assert _cgroup(tmp_path / "4", {}, "") is None


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_down(tmp_path):
    eight = set(range(8))
    assert hw.usable_cores(eight, read_quota=False) == 8
    assert hw.usable_cores(eight, quota=2.9) == 2
    assert hw.usable_cores(eight, quota=0.5) == 1
    assert hw.usable_cores({3, 5}, quota=6.0) == 2
    quota = _cgroup(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert hw.usable_cores(eight, quota=quota) == 1


def test_thread_setting_order_and_configure_threads():
    assert hw.thread_setting({}, cores=3) == hw.ThreadSetting(3, "usable cores")
    assert hw.thread_setting({hw.THREAD_ENV: "5", "OMP_NUM_THREADS": "2"}, cores=3) == hw.ThreadSetting(5,
                                                                                                      hw.THREAD_ENV)
    assert hw.thread_setting({"OMP_NUM_THREADS": "7"}, cores=3) == hw.ThreadSetting(torch.get_num_threads(),
                                                                                   "OMP_NUM_THREADS")
    for bad in ("0", "two", "-1"):
        with pytest.raises(AdvbgError, match=hw.THREAD_ENV):
            hw.thread_setting({hw.THREAD_ENV: bad})
    before = torch.get_num_threads()
    try:
        assert hw.configure_threads({hw.THREAD_ENV: "1"}).threads == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(before)
        assert hw.configure_threads({"OMP_NUM_THREADS": "1"}).threads == before == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- choose_precision
NATIVE = hw.Bf16Support(amx=False, avx512_bf16=True, source="test")
NONE = hw.Bf16Support(amx=False, avx512_bf16=False, source="test")


class Knob(nn.Module):
    """TinyNet whose bf16 (autocast) forward is made slower, faster, shifted or broken on purpose."""

    def __init__(self, num_outputs: int = 9, slow: str = "", shift: torch.Tensor | None = None, broken=False):
        super().__init__()
        self.net, self.slow, self.shift, self.broken, self.calls = TinyNet(num_outputs), slow, shift, broken, 0

    def forward(self, x):
        self.calls += 1
        low = torch.is_autocast_enabled("cpu")
        if self.broken and low:
            raise RuntimeError("no bf16 kernel for this op\nsecond line")
        if self.slow == ("bf16" if low else "fp32"):
            time.sleep(0.05)
        out = self.net(x).float()
        return out + self.shift if (low and self.shift is not None) else out


def knob_classifier(**kw) -> Classifier:
    clf = make_tiny_classifier(kw.pop("num_outputs", 9), kw.pop("label_map", "identity"))
    clf.model = Knob(clf.config.num_outputs, **kw).eval()
    return clf.to(memory_format=torch.contiguous_format)


def batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_no_native_bf16_means_fp32_without_calibrating():
    clf = knob_classifier(slow="fp32")
    choice = choose_precision(clf, batch(), bf16=NONE, force="bf16-faster")
    assert (choice.amp, choice.tolerance, choice.error_bound, choice.timings) == ("off", 0.0, None, {})
    assert choice.reason.startswith("fp32: this CPU has no native bf16 matrix support")
    assert "none (test)" in choice.reason
    assert clf.model.calls == 0


@pytest.mark.parametrize("slow, amp", [("bf16", "off"), ("fp32", "bf16")])
def test_the_calibration_decides_where_the_cpu_has_native_bf16(slow, amp):
    # bf16 made 50 ms slower (or fp32 50 ms slower) per forward of a model that takes about a millisecond
    choice = choose_precision(knob_classifier(slow=slow), batch(), bf16=NATIVE, rounds=3)
    assert choice.amp == amp and len(choice.timings["fp32"]) == len(choice.timings["bf16"]) == 3
    assert (choice.speedup < 1) == (slow == "bf16")
    assert choice.reason.startswith("fp32: the CPU has native bf16" if amp == "off" else "bf16: the CPU has native")
    assert "batch 6 at 32x32" in choice.reason and f"{choice.speedup:.3f}x the speed of fp32" in choice.reason
    if amp == "off":
        assert choice.tolerance == 0.0 and "below the 1.05x it needs" in choice.reason
    else:
        assert choice.tolerance == tolerance_from_bound(choice.error_bound) > 0


def test_forced_slower_calibration_falls_back_to_fp32(monkeypatch):
    clf = knob_classifier(slow="fp32")          # really faster in bf16: only the hook can make it fp32
    assert choose_precision(clf, batch(), bf16=NATIVE, rounds=1).amp == "bf16"
    monkeypatch.setenv(FORCE_ENV, "bf16-slower")
    choice = choose_precision(clf, batch(), bf16=NATIVE, rounds=1)
    assert (choice.amp, choice.tolerance) == ("off", 0.0)
    assert choice.reason.startswith("fp32: the CPU has native bf16 (AVX512-BF16 (test)) but ")
    assert f"{FORCE_ENV}=bf16-slower overrides the calibration" in choice.reason and "\n" not in choice.reason
    rec = choice.to_record()
    assert rec["amp"] == "off" and rec["reason"] == choice.reason and rec["verify_close"] == 0.0
    monkeypatch.setenv(FORCE_ENV, "sometimes")
    with pytest.raises(AdvbgError, match=FORCE_ENV):
        choose_precision(clf, batch(), bf16=NATIVE, rounds=1)


def _reference_bound(fp32: np.ndarray, low: np.ndarray, table: np.ndarray, n_classes: int) -> float:
    """Largest |margin difference| over rows and true classes, and |top-2 gap difference| (plain loops)."""
    worst = 0.0
    for a, b in zip(fp32, low):
        for true in range(n_classes):
            worst = max(worst, abs(float(ref.margin(a, true, table)) - float(ref.margin(b, true, table))))
        gaps = []
        for row in (a, b):
            s = sorted(ref.group_scores(row, table).values(), reverse=True)
            gaps.append(float(s[0]) - float(s[1]))
        worst = max(worst, abs(gaps[0] - gaps[1]))
    return worst


@pytest.mark.parametrize("num_outputs, label_map", [(9, "identity"), (1000, "in9")])
def test_the_tolerance_is_derived_from_the_measured_bound(num_outputs, label_map):
    g = torch.Generator().manual_seed(num_outputs)
    shift = torch.randn(num_outputs, generator=g) * 0.3          # what "bf16" changes in every row
    clf = knob_classifier(num_outputs=num_outputs, label_map=label_map, shift=shift)
    x = batch(8, seed=1)
    choice = choose_precision(clf, x, bf16=NATIVE, rounds=1, force="bf16-faster")
    with torch.inference_mode():
        xin = clf.preprocess(x)
        a = clf.model(xin).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = clf.model(xin).numpy()
    expected = _reference_bound(a, b, ref.table_for(label_map, num_outputs), 9)
    assert expected > 0.05
    assert choice.error_bound == pytest.approx(expected, abs=1e-5)
    assert choice.tolerance == pytest.approx(SAFETY_FACTOR * expected, abs=1e-4)
    assert f"decisions within {choice.tolerance:.3g} logits re-checked in fp32" in choice.reason
    assert choice.amp == "bf16" and choice.to_record()["bf16_error_bound"] == choice.error_bound


def test_bound_of_real_bf16_autocast_on_a_convolution(tiny_classifier_1000):
    x = batch(8, seed=2)
    choice = choose_precision(tiny_classifier_1000, x, bf16=NATIVE, rounds=1, force="bf16-faster")
    with torch.inference_mode():
        xin = tiny_classifier_1000.preprocess(x).contiguous(memory_format=torch.channels_last)
        a = tiny_classifier_1000.model(xin).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = tiny_classifier_1000.model(xin).float()
    assert not torch.equal(a, b)                     # bf16 really changed the logits
    expected = _reference_bound(a.numpy(), b.numpy(), ref.in9_table(), 9)
    assert choice.error_bound == pytest.approx(expected, abs=1e-5)
    assert margin_error_bound(tiny_classifier_1000.label_map, a, a) == 0.0
    assert tolerance_from_bound(0.0) == MIN_TOLERANCE


def test_a_failing_bf16_forward_falls_back_to_fp32_and_the_memory_format_is_restored():
    clf = knob_classifier(broken=True)
    choice = choose_precision(clf, batch(), bf16=NATIVE, rounds=1)
    assert choice.amp == "off" and choice.reason == "fp32: the bf16 forward failed on this model (no bf16 kernel for " \
                                                    "this op)"
    assert all(p.is_contiguous() for p in clf.parameters())


@pytest.mark.parametrize("example", [torch.rand(6, 1, 32, 32), torch.rand(3, 32, 32), torch.zeros(0, 3, 32, 32),
                                     torch.zeros(2, 3, 32, 32, dtype=torch.uint8), np.zeros((2, 3, 32, 32))],
                         ids=["one-channel", "3d", "empty", "uint8", "numpy"])
def test_a_bad_calibration_batch_is_refused(example):
    with pytest.raises(AdvbgError, match="calibration batch"):
        choose_precision(knob_classifier(), example, bf16=NATIVE)
    with pytest.raises(AdvbgError, match="rounds"):
        choose_precision(knob_classifier(), batch(), bf16=NATIVE, rounds=0)


def test_resolve_amp_keeps_its_behaviour():
    assert resolve_amp(torch.device("cpu"), "auto") == "off"
    assert resolve_amp(torch.device("cuda"), "auto") == "bf16"
    assert resolve_amp(torch.device("cpu"), "bf16") == "bf16"
