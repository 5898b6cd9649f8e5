#!/usr/bin/env bash
# Builds every fuzz target once, runs each for SECONDS (default 30) from its committed corpus,
# then replays fuzz/regressions/<target>/*. Exits non-zero on any crash, hang or broken
# property, printing the input. Prints the runs per target and the time taken.
#
#   fuzz/run.sh [SECONDS]
#   fuzz/run.sh --build-only     (builds the targets and stops; a later run finds them built)
#
# The targets are built with the flags `cargo fuzz build --sanitizer none` passes (libFuzzer's
# coverage instrumentation, `--cfg fuzzing`, debug assertions, release), by cargo itself: the
# stable toolchain serves and cargo-fuzz need not be installed (that took 46 s of every cold CI
# run). `cargo fuzz run TARGET` works as well for a developer who has it. No sanitizer: the code
# under test is safe Rust, where ASan finds little that the panics do not, and on two cores it
# built one target in 113 s against 74 s for all nine without it, then ran a fifth as many inputs
# per second.
# Environment: FUZZ_JOBS targets at once (default: the number of cores); CARGO_LOCK a file
# that every cargo command holds, so that builds sharing a machine take turns
# (default /tmp/cargo.lock, used when flock exists).
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
if [ "${1:-}" = --build-only ]; then
  build_only=true
  shift
fi
secs=${1:-30}
jobs=${FUZZ_JOBS:-$(nproc)}
export CARGO_TERM_COLOR=never
started=$(date +%s)

cargo_locked() {
  if command -v flock >/dev/null 2>&1; then
    flock "${CARGO_LOCK:-/tmp/cargo.lock}" cargo "$@"
  else
    cargo "$@"
  fi
}

triple=x86_64-unknown-linux-gnu
t=$(date +%s)
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo_locked build --manifest-path fuzz/Cargo.toml --release --locked --bins \
  --target "$triple" --target-dir fuzz/target
built=$(($(date +%s) - t))
echo "fuzz: targets built in ${built} s"
if $build_only; then
  exit 0
fi

bin=fuzz/target/$triple/release
# The targets are the [[bin]]s of fuzz/Cargo.toml.
targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } /^\[/ { bin = 0 } bin && $1 == "name" { gsub(/"/, "", $3); print $3 }' fuzz/Cargo.toml)
# New inputs go to a corpus kept under the build directory (a later run here goes on from it;
# deleting tens of thousands of small files at exit took 40 s on a loaded machine): the committed
# corpus stays the small seed set.
work=fuzz/target/run
rm -rf "$work/artifacts" "$work"/*.log "$work"/*.status
mkdir -p "$work"
fuzz_one() {
  local t=$1
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  if "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" "$work/corpus/$t" "fuzz/corpus/$t" \
    >"$work/$t.log" 2>&1; then
    echo ok >"$work/$t.status"
  else
    echo CRASH >"$work/$t.status"
  fi
}

t=$(date +%s)
running=0
for target in $targets; do
  fuzz_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
fuzzed=$(($(date +%s) - t))

failed=0
printf '\n%-20s %12s %10s  %s\n' target runs "runs/s" result
for target in $targets; do
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$target.log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$' || echo '?')
  status=$(cat "$work/$target.status")
  printf '%-20s %12s %10s  %s\n' "$target" "$runs" "$rate" "$status"
  if [ "$status" != ok ]; then
    failed=1
    echo "---- $target: end of its log (the crashing input is under 'Base64:')"
    tail -n 60 "$work/$target.log"
    for a in "$work/artifacts/$target"/*; do
      [ -e "$a" ] && { echo "input $(basename "$a"):"; base64 -w0 "$a"; echo; }
    done
  fi
done

# Each regression input runs once through its target.
replayed=0
for dir in fuzz/regressions/*/; do
  [ -d "$dir" ] || continue
  target=$(basename "$dir")
  inputs=("$dir"*)
  [ -e "${inputs[0]}" ] || continue
  if "$bin/$target" "${inputs[@]}" >"$work/replay-$target.log" 2>&1; then
    replayed=$((replayed + ${#inputs[@]}))
  else
    failed=1
    echo "---- regression of $target fails again:"
    tail -n 40 "$work/replay-$target.log"
  fi
done

echo
echo "fuzz: ${secs} s per target, ${jobs} at once; build ${built} s, fuzzing ${fuzzed} s," \
  "${replayed} regression inputs replayed, $(($(date +%s) - started)) s in all"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED"
  exit 1
fi
echo "fuzz: no crash"
