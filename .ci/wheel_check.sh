#!/usr/bin/env bash
# A non-editable install works anywhere: build the wheel, install it into a fresh virtual environment (its
# dependencies from the registry, torch pinned to the CPU build), then run `advbg --help` and `advbg search`
# (the bundled demo store) from a folder outside the checkout, and check the code ran from the venv, not the checkout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c "$repo/constraints-cpu.txt" "$(ls "$work"/dist/advbg-*.whl)"
mkdir "$work/elsewhere" && cd "$work/elsewhere"
export HF_HUB_OFFLINE=1
where="$("$work/venv/bin/python" -c 'import advbg, os; print(os.path.dirname(advbg.__file__))')"
case "$where" in "$work/venv/"*) ;; *) echo "wheel check: advbg imported from $where, not the venv" >&2; exit 1;; esac
"$work/venv/bin/advbg" --help > help.txt
grep -q "search" help.txt
"$work/venv/bin/advbg" search -q --results-file r.json
test -s r.json && test -f runs/demo.h5
echo "wheel check: passed (advbg from $where; advbg --help and advbg search ran outside the checkout)"
