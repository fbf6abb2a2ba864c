#!/usr/bin/env bash
# Run every fuzz target in tests/fuzz with N inputs per parser family (default 10000) and print
# how many inputs each target and each family ran, with the time spent generating them.
#
#   scripts/fuzz.sh            # 10,000 inputs per family (each of its tests runs its share)
#   scripts/fuzz.sh 200        # the CI budget
#   scripts/fuzz.sh 1000 -k cifar   # extra arguments go to pytest
#
# CI runs the same targets with the default KDKIT_FUZZ_EXAMPLES (see tests/fuzz/_fuzz.py).
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-10000}"
shift || true
python="${PYTHON:-.venv/bin/python}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

status=0
KDKIT_FUZZ_EXAMPLES="$examples" "$python" -m pytest -q -p no:cacheprovider -m fuzz tests/fuzz \
    --hypothesis-show-statistics "$@" | tee "$log" || status=$?

# hypothesis prints, per test, "N passing, M failing, and K invalid test cases" for each phase
awk '
    /^tests\/fuzz\/.*::.*:$/ { test = substr($0, 1, length($0) - 1); split(test, parts, "::"); family = parts[1]
                               if (!(test in seen)) { seen[test] = 1; order[++n] = test } }
    /during .* phase \(/     { s = $0; sub(/.*\(/, "", s); sub(/ seconds.*/, "", s); secs[test] += s; fsecs[family] += s }
    / passing, .* failing/   { ran = $2 + $4; inputs[test] += ran; finputs[family] += ran; failing[family] += $4 }
    END {
        printf "\n%-76s %9s %8s\n", "fuzz target", "inputs", "seconds"
        for (i = 1; i <= n; i++) printf "%-76s %9d %8.1f\n", order[i], inputs[order[i]], secs[order[i]]
        printf "\n%-42s %9s %8s %8s\n", "parser family", "inputs", "failing", "seconds"
        for (f in finputs) printf "%-42s %9d %8d %8.1f\n", f, finputs[f], failing[f], fsecs[f]
    }' "$log"
exit "$status"
