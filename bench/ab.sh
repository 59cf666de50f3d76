#!/usr/bin/env bash
# Two builds side by side: the whole-mesh rows of BASE (a commit) and of the work tree,
# loaded AT THE SAME TIME at RATE orders/s each (32 paced clients, gRPC via Envoy), so
# both share the machine's noise and get the same work: compare their CPU per order.
#
#   bench/ab.sh BASE [RATE]       # e.g. bench/ab.sh main 100   (≈ 5 min)
#
# BASE runs from a copy (git archive) with this work tree's bench/ harness; reports in
# $AB_DIR (default /tmp/polyglot-ab): BASE.md / worktree.md, logs beside them.
set -euo pipefail
base=$1
rate=${2:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
python="$root/.venv/bin/python"
dir=${AB_DIR:-/tmp/polyglot-ab}
copy="$dir/base-$base"
rm -rf "$copy" && mkdir -p "$copy"
git -C "$root" archive "$base" | tar -x -C "$copy"
cp "$root"/bench/*.py "$copy/bench/"
run() {  # where, report name
  (cd "$1" && "$python" -m bench.run --only mesh --mesh-clients 32 --mesh-rate "$rate" \
    --output "$dir/$2.md" >"$dir/$2.log" 2>&1)
}
echo "load average before: $(cat /proc/loadavg)"
run "$copy" "$base" &
run "$root" worktree &
wait
echo "load average after: $(cat /proc/loadavg)"
for report in "$base" worktree; do
  echo "== $report"
  sed -n '/CPU per order by process/,/^| target/p' "$dir/$report.md" | grep "scenario\|whole mesh"
done
