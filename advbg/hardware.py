"""Facts about the CPU this process runs on: model, native bf16 matrix support, usable cores, clock, peak FLOP/s.

Everything here is read, never assumed: torch's own CPU feature checks first (they are what oneDNN dispatches on),
``/proc/cpuinfo`` flags as the fallback; the process's CPU affinity and its cgroup CPU quota for the cores it may
use. The intra-op thread count advbg sets (``configure_threads``) follows, in this order:

- ``ADVBG_THREADS=N``: advbg sets torch's intra-op threads to N;
- ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``): torch read it at start; advbg leaves it alone;
- otherwise: the usable cores (affinity, then a cgroup ``cpu.max`` / ``cpu.cfs_quota_us`` quota, rounded down).

Peak FLOP/s estimate (``peak_gflops``): physical cores x clock x FLOP per cycle per core, where FLOP per cycle is
2 (multiply + add) x FMA lanes. FMA lanes for fp32 = FMA units (2, as on every x86 server core since Haswell and
Zen 2) x the vector datapath in 32-bit lanes: 16 with AVX-512 on Intel and on AMD Zen 5 (family 26), 8 with
AVX-512 on AMD Zen 4 (family 25: 512-bit instructions run as two 256-bit halves) and with AVX2/FMA, 4 without FMA.
bf16: with AMX, 1024 FLOP per cycle per core (TDPBF16PS: 16 x 16 x 32 multiply-adds every 16 cycles); with
AVX512-BF16 alone, twice fp32 (VDPBF16PS: two bf16 products per fp32 lane); with neither, bf16 is computed in fp32
(the fp32 peak). Limits: the clock is the highest one found (cpufreq's maximum, else the nominal clock in the
model name, else the largest ``cpu MHz``, which in a VM is usually the nominal clock), while sustained AVX-512 /
AMX work often runs below it; some Intel parts (Xeon Bronze/Silver, client cores) have one 512-bit FMA unit, not
two (the estimate is then 2x too high); SMT siblings share their core's units, so cores = usable CPUs / threads per
core; non-x86 CPUs get no estimate. It is a ceiling to compare against, not a promise.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from advbg.errors import AdvbgError

CPUINFO = Path("/proc/cpuinfo")
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")   # kHz (what lscpu's max MHz reads)
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
THREAD_ENV = "ADVBG_THREADS"
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
AMX_BF16_FLOP_PER_CYCLE = 1024


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU reports about itself (one processor block of /proc/cpuinfo, plus the highest clock found)."""

    model: str
    vendor: str
    family: int | None
    flags: frozenset[str]
    mhz: float | None
    mhz_source: str
    threads_per_core: int

    def bf16_flags(self) -> list[str]:
        """The CPU flags relevant to bf16 matrix work that this CPU reports."""
        return [f for f in (*BF16_FLAGS, "avx512f", "avx512_vnni", "amx_int8") if f in self.flags]


def parse_cpuinfo(text: str, max_mhz: float | None = None) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo; ``max_mhz`` (cpufreq's maximum) wins over the clocks in the text."""
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    fields: dict[str, str] = {}
    for line in (blocks[0] if blocks else "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or "unknown CPU"
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    family = int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None
    siblings, cores = fields.get("siblings", ""), fields.get("cpu cores", "")
    tpc = max(1, int(siblings) // int(cores)) if siblings.isdigit() and cores.isdigit() and int(cores) else 1
    mhz, source = _clock(text, model, max_mhz)
    return CpuInfo(model, fields.get("vendor_id", ""), family, flags, mhz, source, tpc)


def _clock(text: str, model: str, max_mhz: float | None) -> tuple[float | None, str]:
    if max_mhz:
        return max_mhz, "cpufreq max"
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if nominal:
        return float(nominal.group(1)) * 1000, "nominal, from the model name"
    current = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    if current:
        return max(current), "cpu MHz: current clock, in a VM the nominal one"
    return None, "no clock reported"


def read_cpu(cpuinfo: Path = CPUINFO, cpufreq_max: Path = CPUFREQ_MAX) -> CpuInfo:
    """This machine's CpuInfo (an unknown CPU with no flags where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    try:
        max_mhz = int(cpufreq_max.read_text().strip()) / 1000
    except (OSError, ValueError):
        max_mhz = None
    return parse_cpuinfo(text, max_mhz)


# --------------------------------------------------------------------------------------------- bf16 support
@dataclass(frozen=True)
class Bf16Support:
    """Native bf16 matrix instructions: AMX tiles and/or AVX512-BF16, and where that was read."""

    amx: bool
    avx512_bf16: bool
    source: str

    @property
    def native(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        """E.g. 'AMX + AVX512-BF16 (torch)' or 'none (/proc/cpuinfo flags)'."""
        kinds = [k for k, has in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16)) if has]
        return f"{' + '.join(kinds) or 'none'} ({self.source})"


def bf16_support(cpu: CpuInfo | None = None, use_torch: bool = True) -> Bf16Support:
    """Whether this CPU has native bf16 matrix support: torch's checks (what oneDNN dispatches on) when it has them,
    else the /proc/cpuinfo flags (``amx_bf16`` + ``amx_tile``; ``avx512_bf16``). oneDNN's own "bf16 supported" is
    not used: it is true on any AVX-512 CPU, where bf16 is emulated."""
    if use_torch:
        amx, avx = (getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
        if amx is not None and avx is not None:
            try:
                return Bf16Support(bool(amx()), bool(avx()), "torch")
            except RuntimeError:
                pass
    flags = (cpu or read_cpu()).flags
    return Bf16Support({"amx_bf16", "amx_tile"} <= flags, "avx512_bf16" in flags, "/proc/cpuinfo flags")


# --------------------------------------------------------------------------------------------- cores
def cgroup_cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The CPUs' worth of time the process's cgroups allow (the smallest quota from its cgroup up to the root, v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None when there is no quota."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    dirs: list[Path] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.strip().lstrip("/")
        if controllers == "":                                   # v2 unified hierarchy
            dirs += _up(root, rel)
        elif "cpu" in controllers.split(","):                   # v1 cpu controller (maybe mounted as cpu,cpuacct)
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                dirs += _up(root / mount, rel)
    if not dirs:
        dirs = [root, root / "cpu", root / "cpu,cpuacct"]
    quotas = [q for q in (_quota(d) for d in dirs) if q is not None]
    return min(quotas) if quotas else None


def _up(base: Path, rel: str) -> list[Path]:
    parts = [p for p in rel.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def _quota(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(affinity: set[int] | None = None, quota: float | None = None, *,
                 read_quota: bool = True) -> int:
    """Logical CPUs this process may use: its affinity mask, capped by its cgroup CPU quota rounded down (at least 1).
    ``affinity`` / ``quota`` default to this process's; ``read_quota=False`` ignores cgroups."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    n = max(1, len(affinity))
    if quota is None and read_quota:
        quota = cgroup_cpu_quota()
    if quota is not None and quota > 0:
        n = min(n, max(1, math.floor(quota)))
    return n


# --------------------------------------------------------------------------------------------- threads
@dataclass(frozen=True)
class ThreadSetting:
    threads: int
    source: str        # "ADVBG_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS" or "usable cores"


def thread_setting(env: dict[str, str] | None = None, cores: int | None = None) -> ThreadSetting:
    """The intra-op thread count advbg should run with and why (see the module docstring for the order)."""
    env = os.environ if env is None else env
    raw = env.get(THREAD_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise AdvbgError(f"{THREAD_ENV} must be a whole number >= 1 (got {raw!r})")
        return ThreadSetting(int(raw), THREAD_ENV)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value:
            return ThreadSetting(torch.get_num_threads(), name)
    return ThreadSetting(cores if cores is not None else usable_cores(), "usable cores")


def configure_threads(env: dict[str, str] | None = None) -> ThreadSetting:
    """Set torch's intra-op threads as ``thread_setting`` says (nothing changed when OMP/MKL_NUM_THREADS is set)."""
    setting = thread_setting(env)
    if setting.source in (THREAD_ENV, "usable cores") and torch.get_num_threads() != setting.threads:
        torch.set_num_threads(setting.threads)
    return setting


# --------------------------------------------------------------------------------------------- peak
@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s estimate for one precision (None where it cannot be estimated) and how it was computed."""

    gflops: float | None
    how: str


def fp32_lanes(cpu: CpuInfo) -> tuple[int, str]:
    """(fp32 FMA lanes of one FMA unit's datapath, why)."""
    f = cpu.flags
    if "avx512f" in f:
        if cpu.vendor == "AuthenticAMD" and (cpu.family or 0) < 26:
            return 8, "AVX-512 on 256-bit datapaths, AMD Zen 4"
        return 16, "AVX-512"
    if "fma" in f and "avx2" in f:
        return 8, "AVX2/FMA"
    return 4, "SSE, no FMA"


def peak_gflops(precision: str, cpu: CpuInfo | None = None, cores: int | None = None,
                bf16: Bf16Support | None = None) -> Peak:
    """Estimated peak GFLOP/s of ``cores`` usable CPUs (default: this process's) at ``precision`` ('fp32' or
    'bf16'), with the arithmetic spelled out; see the module docstring for the rule and its limits."""
    if precision not in ("fp32", "bf16"):
        raise AdvbgError(f"precision must be fp32 or bf16 (got {precision!r})")
    cpu = cpu or read_cpu()
    if not ({"sse2", "avx", "avx2", "avx512f"} & cpu.flags):
        return Peak(None, f"no estimate: not an x86 CPU with known vector units ({cpu.model})")
    if cpu.mhz is None:
        return Peak(None, "no estimate: the CPU reports no clock")
    logical = cores if cores is not None else usable_cores()
    phys = max(1, logical // cpu.threads_per_core)
    lanes, what = fp32_lanes(cpu)
    per_cycle, rule = 2 * 2 * lanes, f"2 FMA units x {lanes} fp32 lanes ({what}) x 2"
    if precision == "bf16":
        bf16 = bf16 or bf16_support(cpu)
        if bf16.amx:
            per_cycle, rule = AMX_BF16_FLOP_PER_CYCLE, "AMX: 16x16x32 bf16 multiply-adds per 16 cycles x 2"
        elif bf16.avx512_bf16:
            per_cycle, rule = 2 * per_cycle, f"AVX512-BF16: 2 bf16 products per fp32 lane; {rule} x 2"
        else:
            rule = f"no native bf16: computed in fp32; {rule}"
    gflops = phys * cpu.mhz / 1000 * per_cycle
    smt = f" ({logical} usable CPUs / {cpu.threads_per_core} threads per core)" if cpu.threads_per_core > 1 else ""
    return Peak(gflops, f"{phys} cores{smt} x {cpu.mhz / 1000:.2f} GHz ({cpu.mhz_source}) x {per_cycle} FLOP/cycle "
                        f"[{rule}] = {gflops:,.0f} GFLOP/s")
