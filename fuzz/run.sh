#!/usr/bin/env bash
# Run every fuzz target for a bounded time and fail if any of them crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 20; 0 only replays the committed seeds). New
# inputs libFuzzer finds go to fuzz/corpus/<target>/ (not committed); a crash
# leaves its input in fuzz/artifacts/<target>/ and makes this script fail.
#
# cargo-fuzz needs nightly compiler flags (-Z sanitizer, -C passes=sancov…);
# the stable toolchain accepts them with RUSTC_BOOTSTRAP=1, which is all this
# script sets. Builds go to fuzz/target/ (about 2 GB).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(framer sasl scram jid bosh websocket config)
fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# Largest input per target: the framer repeats part of its input (up to
# 1 MiB), the configs are whole files.
max_len() {
    case "$1" in
        config) echo 16384 ;;
        framer | bosh | websocket) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

# All targets share one build of Palaver's crates.
nice -n 10 cargo fuzz build

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ "$secs" = 0 ]; then
        run_opts=(-runs=0)
    else
        run_opts=(-max_total_time="$secs")
    fi
    echo "== fuzz $t (${secs}s) =="
    if ! nice -n 10 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        "${run_opts[@]}" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>"corpus/$t.log"; then
        tail -n 40 "corpus/$t.log"
        failed+=("$t")
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "corpus/$t.log" || true
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
