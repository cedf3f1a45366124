#!/usr/bin/env bash
# A fuzzing campaign: every target (or the TARGETs given) for SECONDS each (default 600),
# then each target's corpus minimized (cargo fuzz cmin) and kept in the repository as
# fuzz/kept/<target>.tar.gz (one archive per target rather than thousands of files;
# reproducible: sorted names, no timestamps), which scripts/fuzz.sh unpacks and replays
# first on every run (CI included).
#
#   scripts/fuzz-campaign.sh [SECONDS_PER_TARGET] [TARGET...]
#
# A crash fails the campaign like scripts/fuzz.sh; the fix lands with the crashing input
# added to fuzz/kept/<target>.tar.gz (and a unit test where the parser has one), so every
# later run replays it. Commit fuzz/kept/ after a campaign.
set -euo pipefail
secs=${1:-600}
shift || true
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/fuzz.sh" "$secs" "$@"

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
sanitizer=${FUZZ_SANITIZER:-address}
cd "$root/fuzz"
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
for t in "${targets[@]}"; do
    before=$(find "corpus/$t" -type f | wc -l)
    cargo fuzz cmin -a -s "$sanitizer" "$t" "corpus/$t" -- -max_len="${FUZZ_MAX_LEN:-8192}" >"$CARGO_TARGET_DIR/fuzz-logs/$t.cmin.log" 2>&1 || {
        echo "!! cmin of $t failed (log: $CARGO_TARGET_DIR/fuzz-logs/$t.cmin.log)" >&2
        exit 1
    }
    mkdir -p kept
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "corpus/$t" -cf - . | gzip -n -9 >"kept/$t.tar.gz"
    echo "== $t: $before inputs minimized to $(find "corpus/$t" -type f | wc -l) ($(du -sb "corpus/$t" | cut -f1) bytes) in fuzz/kept/$t.tar.gz ($(stat -c %s "kept/$t.tar.gz") bytes)"
done
