#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation (stable
# codegen flags, see README.md) and runs each for SECONDS (default 60) from
# its corpus in fuzz/corpus/<target>. Exits non-zero on the first crash,
# leaving the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
target=x86_64-unknown-linux-gnu
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares"
cargo build --release --locked --target "$target" --bins
for fuzzer in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^unionsync-fuzz$'); do
  mkdir -p "corpus/$fuzzer" "artifacts/$fuzzer"
  echo "fuzzing $fuzzer for ${seconds}s"
  "target/$target/release/$fuzzer" "corpus/$fuzzer" \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="artifacts/$fuzzer/" 2>&1 | tail -n 12
  # tail hides the fuzzer's own status: check it.
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz target $fuzzer failed" >&2; exit 1; }
done
