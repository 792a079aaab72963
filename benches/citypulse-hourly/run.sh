#!/usr/bin/env bash
# The citypulse-hourly benchmark: `aqyl replay` against a plain Python script on the CityPulse
# Aarhus traffic files, whole process, alternating, with identical output checked.
#
#   benches/citypulse-hourly/run.sh [DATA_DIR] [ROUNDS]
#
# DATA_DIR (or $CITYPULSE_TRAFFIC) holds the AarhusTrafficData<REPORT_ID>.csv files; without
# it the benchmark says so and exits 0. ROUNDS (default 3, or $ROUNDS) pairs are run, Python
# then Aqyl each round; the medians and their ratio are printed. $AQYL_WORKERS sets --workers.
# $AQYL_BASELINE names another aqyl binary (an earlier build) to run in the same rounds too,
# after Python and before this one, and to compare against.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
data="${1:-${CITYPULSE_TRAFFIC:-}}"
rounds="${2:-${ROUNDS:-3}}"

if [[ -z "$data" || ! -d "$data" ]] || ! compgen -G "$data/AarhusTrafficData*.csv" >/dev/null; then
    echo "citypulse-hourly: skipped: no AarhusTrafficData*.csv files (pass the directory of the CityPulse Aarhus traffic dataset, or set CITYPULSE_TRAFFIC)"
    exit 0
fi
command -v python3 >/dev/null || { echo "citypulse-hourly: skipped: python3 is not installed"; exit 0; }
[[ -x /usr/bin/time ]] || { echo "citypulse-hourly: /usr/bin/time (GNU time) is needed"; exit 1; }

target="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release --locked -p aqyl --quiet)
aqyl="$target/release/aqyl"
workers=()
[[ -n "${AQYL_WORKERS:-}" ]] && workers=(--workers "$AQYL_WORKERS")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rows=$(( $(cat "$data"/AarhusTrafficData*.csv | wc -l) - $(ls "$data"/AarhusTrafficData*.csv | wc -l) ))

# Runs a command under GNU time; appends "seconds peak_kib" to the file named first.
timed() {
    local into="$1"
    shift
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || {
        cat "$work/stderr" >&2
        exit 1
    }
    cat "$work/time" >>"$into"
}

baseline="${AQYL_BASELINE:-}"
for ((i = 1; i <= rounds; i++)); do
    timed "$work/python" python3 "$here/reference.py" "$data" "$work/reference.txt"
    line="round $i: python $(tail -1 "$work/python" | cut -d' ' -f1) s"
    if [[ -n "$baseline" ]]; then
        timed "$work/baseline" "$baseline" replay --config "$here/config/aqyl.toml" --out "$work/base" "${workers[@]}" "$data"
        line="$line, baseline $(tail -1 "$work/baseline" | cut -d' ' -f1) s"
    fi
    timed "$work/aqyl" "$aqyl" replay --config "$here/config/aqyl.toml" --out "$work/out" "${workers[@]}" "$data"
    echo "$line, aqyl $(tail -1 "$work/aqyl" | cut -d' ' -f1) s"
done
python3 "$here/compare.py" "$work/out/aggregate.lp" "$work/reference.txt"
[[ -n "$baseline" ]] && python3 "$here/compare.py" "$work/base/aggregate.lp" "$work/reference.txt" >/dev/null

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
py=$(cut -d' ' -f1 "$work/python" | median)
aq=$(cut -d' ' -f1 "$work/aqyl" | median)
py_mem=$(cut -d' ' -f2 "$work/python" | median)
aq_mem=$(cut -d' ' -f2 "$work/aqyl" | median)
awk -v rows="$rows" -v py="$py" -v aq="$aq" -v pm="$py_mem" -v am="$aq_mem" -v n="$rounds" 'BEGIN {
    printf "%d rows, median of %d, whole process:\n", rows, n
    printf "  python reference  %6.2f s  %8.0f rows/s  %4.0f MiB peak\n", py, rows / py, pm / 1024
    printf "  aqyl replay       %6.2f s  %8.0f rows/s  %4.0f MiB peak\n", aq, rows / aq, am / 1024
    printf "  aqyl / python     %6.1fx\n", py / aq
}'
if [[ -n "$baseline" ]]; then
    bl=$(cut -d' ' -f1 "$work/baseline" | median)
    bl_mem=$(cut -d' ' -f2 "$work/baseline" | median)
    awk -v rows="$rows" -v py="$py" -v aq="$aq" -v bl="$bl" -v bm="$bl_mem" 'BEGIN {
        printf "  baseline aqyl     %6.2f s  %8.0f rows/s  %4.0f MiB peak  (%.1fx python)\n", bl, rows / bl, bm / 1024, py / bl
        printf "  aqyl / baseline   %6.1fx\n", bl / aq
    }'
fi
