"""One vocabulary for the precision forward passes run in (``--amp``), used by search, eval and finetune, and
``--amp auto`` on a CPU: bf16 only where the CPU has native bf16 matrix work and a calibration shows it faster."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from advbg.errors import AdvbgError
from advbg.hardware import Bf16Support, bf16_support
from advbg.models.classifier import Classifier, LabelMap

AMPS = ("auto", "off", "bf16", "fp16")   # auto = bf16 on CUDA; on a CPU what choose_precision measures


def check_amp(amp: str) -> str:
    """``amp`` itself, or an AdvbgError naming the choices."""
    if amp not in AMPS:
        raise AdvbgError(f"amp must be one of {', '.join(AMPS)} (got {amp!r})")
    return amp


def resolve_amp(device: torch.device, amp: str) -> str:
    """'auto' -> 'bf16' on CUDA, 'off' elsewhere; else as given. The static answer: on a CPU, ``choose_precision``
    decides 'auto' by measuring (bf16 is faster on some CPUs, slower on others)."""
    check_amp(amp)
    if amp == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "off"
    return amp


def autocast(device: torch.device, amp: str):
    """The autocast context for a resolved ``amp`` ('off': a null context)."""
    amp = resolve_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# --------------------------------------------------------------------------------------------- --amp auto on CPU
SAFETY_FACTOR = 4.0      # --verify-close = this x the largest bf16-vs-fp32 margin error measured in calibration
MIN_TOLERANCE = 1e-3     # so that a bound measured as 0 still re-checks exact ties
MIN_SPEEDUP = 1.05       # bf16 must be at least this much faster than fp32 (timing noise must not pick it)
FORCE_ENV = "ADVBG_CALIBRATION"   # "bf16-slower" / "bf16-faster": overrides the timing verdict (tests)
FORCES = ("bf16-slower", "bf16-faster")


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``--amp auto`` chose for one model and batch shape on one device, and why.

    ``amp`` is 'bf16' or 'off'; ``tolerance`` is the ``--verify-close`` to run it with (0 for fp32): decisions whose
    margin (criterion any) or top-2 gap (bg-class) is within it are recomputed in fp32. ``error_bound`` is the largest
    bf16-vs-fp32 difference of margins and top-2 gaps measured on the calibration batch (None when not measured);
    ``timings`` the seconds per batch of each precision, in the order measured."""

    amp: str
    reason: str
    tolerance: float
    error_bound: float | None
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    bf16_support: str = ""

    @property
    def speedup(self) -> float | None:
        """Median fp32 time / median bf16 time, or None when not timed."""
        if not (self.timings.get("fp32") and self.timings.get("bf16")):
            return None
        return statistics.median(self.timings["fp32"]) / statistics.median(self.timings["bf16"])

    def to_record(self) -> dict:
        """The fields the run record keeps."""
        return dict(amp=self.amp, reason=self.reason, verify_close=self.tolerance, bf16_error_bound=self.error_bound,
                    safety_factor=SAFETY_FACTOR, speedup=self.speedup, bf16_support=self.bf16_support,
                    timings={k: list(v) for k, v in self.timings.items()})


def tolerance_from_bound(bound: float) -> float:
    """The ``--verify-close`` tolerance for a measured bf16-vs-fp32 error bound (SAFETY_FACTOR x, at least
    MIN_TOLERANCE): inputs beyond the calibration batch may stray further than the ones measured."""
    return max(SAFETY_FACTOR * float(bound), MIN_TOLERANCE)


def margin_error_bound(label_map: LabelMap, ref: torch.Tensor, low: torch.Tensor) -> float:
    """max |difference| between the margins of ``ref`` and ``low`` logits (N, outputs), every class taken in turn as
    the true one, and between their top-2 gaps of the class scores: what a re-check tolerance must cover."""
    a, b = label_map.reduce(ref.float()), label_map.reduce(low.float())
    n_true = label_map.num_classes

    def margins_and_gap(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = s.topk(2, dim=1)
        first, second, arg = top.values[:, :1], top.values[:, 1:], top.indices[:, :1]
        cls = torch.arange(s.shape[1], device=s.device).view(1, -1)
        best_other = torch.where(cls == arg, second, first)
        return (s - best_other)[:, :n_true], (first - second).squeeze(1)

    (ma, ga), (mb, gb) = margins_and_gap(a), margins_and_gap(b)
    return float(torch.maximum((ma - mb).abs().amax(), (ga - gb).abs().amax()))


@contextlib.contextmanager
def _memory_format(classifier: Classifier, channels_last: bool):
    """The classifier's weights in the search's memory format for the block, as they were afterwards."""
    was_cl = all(p.is_contiguous(memory_format=torch.channels_last) for p in classifier.parameters() if p.dim() == 4)
    classifier.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    try:
        yield
    finally:
        classifier.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)


def _time_forwards(classifier: Classifier, x: torch.Tensor, rounds: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Seconds per forward of fp32 and bf16 autocast, alternating (order swapped each round) after one warm-up of
    each, and the warm-up logits of both."""
    model, dev = classifier.model, x.device.type
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def forward(amp: str) -> torch.Tensor:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp == "bf16"):
            return model(x).float()

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        ref, low = forward("fp32"), forward("bf16")
        for r in range(rounds):
            for amp in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                sync()
                t0 = time.perf_counter()
                forward(amp)
                sync()
                times[amp].append(time.perf_counter() - t0)
    return {k: tuple(v) for k, v in times.items()}, ref, low


def choose_precision(classifier: Classifier, example: torch.Tensor, *, channels_last: bool = True, rounds: int = 3,
                     force: str | None = None, bf16: Bf16Support | None = None) -> PrecisionChoice:
    """``--amp auto`` for ``classifier`` on its device, calibrated on ``example`` ((N, 3, H, W) in [0, 1], one batch
    of the real shape): on a CPU, bf16 only where the CPU has native bf16 matrix support (``bf16``, default: this
    CPU's) and the timing of both precisions on this batch shows bf16 at least MIN_SPEEDUP faster; fp32 otherwise.
    On CUDA bf16 (as ``resolve_amp``), other devices fp32. Wherever both forwards ran, the measured error bound and
    the tolerance derived from it come with the choice. ``force`` (default: the ADVBG_CALIBRATION variable) replaces
    the timing verdict with 'bf16-slower' or 'bf16-faster', for tests; the reason then says so."""
    device = classifier.device
    if not (isinstance(example, torch.Tensor) and example.dim() == 4 and example.shape[1] == 3
            and example.shape[0] > 0 and example.is_floating_point()):
        raise AdvbgError(f"the calibration batch must be a float (N, 3, H, W) tensor in [0, 1] (got "
                         f"{tuple(getattr(example, 'shape', ())) or type(example).__name__})")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise AdvbgError(f"calibration rounds must be a whole number >= 1 (got {rounds!r})")
    force = force if force is not None else (os.environ.get(FORCE_ENV) or None)
    if force is not None and force not in FORCES:
        raise AdvbgError(f"{FORCE_ENV} must be one of {', '.join(FORCES)} (got {force!r})")
    shape = f"batch {example.shape[0]} at {example.shape[2]}x{example.shape[3]}"
    if device.type != "cpu":
        amp = resolve_amp(device, "auto")
        if amp == "off":
            return PrecisionChoice("off", f"fp32: --amp auto is fp32 on {device.type}", 0.0, None)
        rounds = 0
    else:
        bf16 = bf16 or bf16_support()
        if not bf16.native:
            return PrecisionChoice("off", f"fp32: this CPU has no native bf16 matrix support (AMX or AVX512-BF16; "
                                          f"{bf16.describe()})", 0.0, None, bf16_support=bf16.describe())
    support = bf16.describe() if bf16 else ""
    with torch.no_grad(), _memory_format(classifier, channels_last):
        x = classifier.preprocess(example.to(device).float())
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        try:
            timings, ref, low = _time_forwards(classifier, x, rounds)
        except RuntimeError as e:           # an operator without a bf16 kernel on this build
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            return PrecisionChoice("off", f"fp32: the bf16 forward failed on this model ({first})", 0.0, None,
                                   bf16_support=support)
    bound = margin_error_bound(classifier.label_map, ref, low)
    tol = tolerance_from_bound(bound)
    check = (f"decisions within {tol:.3g} logits re-checked in fp32 ({SAFETY_FACTOR:g} x the measured bf16 error "
             f"{bound:.3g})")
    if device.type != "cpu":
        return PrecisionChoice("bf16", f"bf16: --amp auto is bf16 on {device.type}; {check}", tol, bound, timings)
    choice = PrecisionChoice("bf16", "", tol, bound, timings, support)
    speed = choice.speedup
    med = {k: statistics.median(v) for k, v in timings.items()}
    measured = (f"calibration on this model, {shape}, measured bf16 {speed:.3f}x the speed of fp32 (median of "
                f"{rounds}: fp32 {med['fp32']:.3g} s, bf16 {med['bf16']:.3g} s)")
    if force is not None:
        faster = force == "bf16-faster"
        verdict = f"{FORCE_ENV}={force} overrides the calibration ({measured})"
    else:
        faster = speed >= MIN_SPEEDUP
        verdict = measured + ("" if faster else f", below the {MIN_SPEEDUP:g}x it needs")
    if not faster:
        return PrecisionChoice("off", f"fp32: the CPU has native bf16 ({support}) but {verdict}", 0.0, bound, timings,
                               support)
    return dataclasses.replace(choice, reason=f"bf16: the CPU has native bf16 ({support}) and {verdict}; {check}")
