#!/usr/bin/env bash
# run.sh FUZZER SEEDS WORKDIR SECONDS: one time-boxed libFuzzer run of a
# fuzz target (ctest fuzz_NAME_run, FUZZ=ON builds; tests/fuzz/README.md).
#
# Starts from the seed corpus SEEDS (read only: new inputs go to
# WORKDIR/corpus, which is thrown away) with SEEDS.dict if there is one.
# Passes when SECONDS ran out without a crash, leak, timeout or out-of-memory;
# otherwise prints the end of libFuzzer's log, where the input that broke
# it is and (up to 64 KiB) the input itself in base64. Prints one summary
# line either way: executions, coverage.
set -uo pipefail
bin=$1 seeds=$2 work=$3 secs=$4
name=$(basename "$bin")

rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts" || exit 1
args=(
  -max_total_time="$secs"
  -timeout=10            # one input: a slow path is a finding too
  -rss_limit_mb=1024     # two fuzzers run side by side on small machines
  -malloc_limit_mb=512
  -print_final_stats=1
  -artifact_prefix="$work/artifacts/"
  -close_fd_mask=2       # the code's own diagnostics; crash reports still show
)
[ -f "$seeds.dict" ] && args+=(-dict="$seeds.dict")
export TMPDIR="$work"  # env_message_read spools content to temp files
rc=0
"$bin" "${args[@]}" "$work/corpus" "$seeds" >"$work/log" 2>&1 || rc=$?

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/log" | tail -1)
corp=$(grep -oE 'corp: [0-9]+/[0-9]+[KM]?b' "$work/log" | tail -1)
echo "$name: ${secs}s, ${execs:-?} executions, ${cov:-cov: ?}, ${corp:-corp: ?}, exit $rc"
if [ "$rc" != 0 ]; then
  tail -60 "$work/log"
  for a in "$work"/artifacts/*; do
    [ -e "$a" ] || continue
    echo "input that broke $name: $a"
    echo "reproduce: $bin $a"
    echo "after the fix, keep it as a regression input: cp $a $seeds/regress-<what>"
    # a CI machine and its work directory are gone once the log is read:
    # the input itself, to rebuild it anywhere with base64 -d
    if [ "$(stat -c %s "$a")" -le 65536 ]; then
      echo "the input, base64:"
      base64 -w 76 "$a"
    fi
  done
  exit 1
fi
