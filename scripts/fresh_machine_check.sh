#!/usr/bin/env bash
# Clone this repository into a temporary directory and run the README's two commands there with an
# empty pip cache, reporting the wall time of each. The real sample corpus is linked beside the
# clone when it exists beside this checkout (as CI has it).
#   scripts/fresh_machine_check.sh [--keep]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/jam-fresh.XXXXXX)
trap '[ "${1:-}" = "--keep" ] || rm -rf "$work"' EXIT
git clone -q "$repo" "$work/main"
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
export PIP_CACHE_DIR="$work/pip-cache"   # empty cache: every package is downloaded
cd "$work/main"
t0=$(date +%s)
set +e
make demo > "$work/demo.log" 2>&1; demo_rc=$?
t1=$(date +%s)
grep -E '^\[|^==|report|outputs under|error' "$work/demo.log"
[ $demo_rc = 0 ] || { echo "make demo FAILED (log: $work/demo.log)"; exit 1; }
make test > "$work/test.log" 2>&1; test_rc=$?
t2=$(date +%s)
set -e
tail -3 "$work/test.log"
[ $test_rc = 0 ] || { echo "make test FAILED (log: $work/test.log)"; exit 1; }
echo "fresh clone: make demo (set-up included) $((t1 - t0)) s; make test $((t2 - t1)) s"
