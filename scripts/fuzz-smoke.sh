#!/usr/bin/env bash
# CI smoke run of the fuzz targets in fuzz/: builds them (optimised, with debug assertions and
# AddressSanitizer) and runs each one for 15 seconds over its committed corpus. Any crash, leak,
# timeout or failed assertion fails the script. The long runs (10 minutes a target) and their
# results are in docs/security.md, "Fuzzing".
#
#   scripts/fuzz-smoke.sh             # every target, 15 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh ws_text sse   # some targets, longer
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
# The instrumented build lives outside the clone, so CI's fresh clones reuse it (a clean build
# takes about 15 minutes on 2 cores; an incremental one, a few).
target_dir="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teachback/fuzz-target}"
log() { printf '\n== fuzz: %s\n' "$*"; }

# cargo-fuzz needs a nightly compiler (sanitizers and -Z flags).
toolchain=(+nightly)
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  if ! rustup toolchain install nightly --profile minimal; then
    # Machines that cannot download a toolchain still have the stable one; let it accept the
    # nightly-only flags cargo-fuzz passes.
    log "no nightly toolchain could be installed; using stable with RUSTC_BOOTSTRAP=1"
    toolchain=()
    export RUSTC_BOOTSTRAP=1
  fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
log "building (cargo fuzz build -O -a) in $target_dir"
start=$(date +%s)
cargo "${toolchain[@]}" fuzz build -O -a --target-dir "$target_dir"
log "built in $(($(date +%s) - start)) s"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
failed=()
for target in "${targets[@]}"; do
  log "$target: ${seconds} s over corpus/$target"
  mkdir -p "corpus/$target"
  # Findings go to artifacts/ (ignored by git); the committed corpus is only read: new inputs
  # are written to a scratch directory listed first.
  scratch=$(mktemp -d)
  if ! cargo "${toolchain[@]}" fuzz run -O -a --target-dir "$target_dir" "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$target")
  fi
  rm -rf "$scratch"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
log "all ${#targets[@]} targets ran ${seconds} s without a crash"
