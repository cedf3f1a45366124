#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 20; TARGETs default to every target in fuzz/Cargo.toml.
# Seeds from fuzz/seeds/<target>/ (written by make_seeds.py) and the minimized corpus of the
# last campaign, fuzz/kept/<target>.tar.gz (scripts/fuzz-campaign.sh; crashes found earlier
# among them), are copied into fuzz/corpus/<target>/ (git-ignored, kept between runs so coverage
# accumulates); libFuzzer runs every one of them before it mutates. A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit 1 after the other targets ran.
#
# Toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address and friends). Only
# stable Rust is installed here, so RUSTC_BOOTSTRAP=1 lets stable accept them; AddressSanitizer
# works that way on x86_64 Linux. If the sanitizer build still fails, the script retries
# without a sanitizer (-s none): panics, overflow checks and debug assertions still fire.
# FUZZ_SANITIZER=none (or address, ...) forces a choice.
#
# Environment: CARGO_TARGET_DIR (default fuzz/target), FUZZ_SANITIZER, FUZZ_MAX_LEN
# (default 8192), FUZZ_RSS_LIMIT_MB (default 2048).
set -euo pipefail

secs=${1:-20}
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -eq 0 ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift || true

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$root/fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$fuzz_dir/target}
max_len=${FUZZ_MAX_LEN:-8192}
rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$fuzz_dir"
explicit=("$@")
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Same flags for build and run, so `cargo fuzz run` finds the build up to date.
# -a: debug assertions and overflow checks (cargo-fuzz's default, spelled out).
build_with() {
    local sanitizer=$1
    echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
    local start=$SECONDS
    if [[ ${#explicit[@]} -eq 0 ]]; then
        cargo fuzz build -a -s "$sanitizer" || return 1
    else
        for t in "${targets[@]}"; do
            cargo fuzz build -a -s "$sanitizer" "$t" || return 1
        done
    fi
    echo "== build took $((SECONDS - start)) s"
}

sanitizer=${FUZZ_SANITIZER:-address}
if ! build_with "$sanitizer"; then
    if [[ -n ${FUZZ_SANITIZER:-} || $sanitizer == none ]]; then
        echo "== build failed" >&2
        exit 1
    fi
    echo "== build with -s $sanitizer failed; retrying without a sanitizer" >&2
    sanitizer=none
    build_with none || { echo "== build failed" >&2; exit 1; }
fi

log_dir=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$log_dir"
marker=$log_dir/.started
touch "$marker"
failed=()
for t in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$t
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$t"
    if [[ -d $fuzz_dir/seeds/$t ]]; then
        cp -n "$fuzz_dir/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    if [[ -f $fuzz_dir/kept/$t.tar.gz ]]; then
        tar -xzf "$fuzz_dir/kept/$t.tar.gz" -C "$corpus" --skip-old-files
    fi
    log=$log_dir/$t.log
    echo "== fuzzing $t for ${secs}s ($(find "$corpus" -type f | wc -l) corpus files; log $log)"
    if cargo fuzz run -a -s "$sanitizer" "$t" "$corpus" -- \
        -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb="$rss_limit" \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | tr '\n' ' '
        echo
        grep -E '^#[0-9]+.*(DONE|pulse)' "$log" | tail -1 || true
    else
        echo "!! $t FAILED (full log: $log):"
        # From the first error report to cargo-fuzz's reproduction hint (or 60 lines).
        sed -n '/panicked at\|ERROR: libFuzzer\|ERROR: AddressSanitizer\|^error/,/^Minimize test case/p' "$log" |
            grep -v '^INFO:\|^#[0-9]' | head -n 80
        failed+=("$t")
    fi
done

echo "== artifacts (crashing inputs), if any:"
find "$fuzz_dir/artifacts" -type f -newer "$marker" 2>/dev/null | sed 's/^/   /' || true
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${secs}s each without a crash"
