#!/bin/bash
# gdb-hold.py (server_keyholder's hold_answer) ends when it should: the
# held thread released when the go file appears, or after HOLD_TIMEOUT;
# and gdb gone once the process it holds is gone. A failed test's
# clean-up stopped the key holder (killed, its thread held) and removed
# the directory of the go file: gdb polled for that file for ever, left
# behind after the test. The held process is a shell loop, held in fork.
# Exit 77 (skipped) where gdb is missing or may not attach (ptrace).
set -euo pipefail
SRC=$1
command -v gdb >/dev/null || { echo "note: no gdb"; exit 77; }
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/gdbhold.XXXXXX")
t= g=
cleanup() {
  if [ -n "$g" ]; then # SIGTERM: gdb detaches; the old script could ignore it
    kill "$g" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$g" 2>/dev/null || true
  fi
  [ -z "$t" ] || kill -9 "$t" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/gdb.out" ] && cat "$work/gdb.out" >&2; exit 1; }
ok() { echo "ok: $*"; }
# hold [ENV=VALUE...]: a new shell loop held by gdb-hold.py in fork; 1 when
# gdb could not attach
hold() {
  rm -f "$work/go" "$work/gdb.out"
  bash -c 'while :; do sleep 0.05; done' &
  t=$!
  (ulimit -c 0; export "$@"; HOLD_PID=$t HOLD_BP=fork HOLD_GO=$work/go \
    exec gdb -batch -nx -q -x "$SRC/tests/integration/gdb-hold.py") > "$work/gdb.out" 2>&1 &
  g=$!
  for _ in $(seq 1 300); do grep -q HIT "$work/gdb.out" 2>/dev/null && return 0; kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
  grep -q ATTACHED "$work/gdb.out" 2>/dev/null || return 1
  fail "the breakpoint in fork was not hit"
}
# gdb ended within 30 s; its exit status in rc
ended() {
  for _ in $(seq 1 300); do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$g" 2>/dev/null && fail "$1"
  rc=0; wait "$g" || rc=$?
  g=
}
# the loop runs: it forks again (a new child), not held in a stop
runs() {
  local c0 c1
  c0=$(pgrep -P "$t" | head -n 1 || true)
  for _ in $(seq 1 300); do
    c1=$(pgrep -P "$t" | head -n 1 || true)
    [ -n "$c1" ] && [ "$c1" != "$c0" ] && return 0
    sleep 0.1
  done
  fail "$1"
}

hold HOLD_TIMEOUT=120 || { echo "note: gdb cannot attach here (ptrace refused)"; exit 77; }
touch "$work/go"
ended "gdb did not end once the go file appeared"
[ "$rc" = 0 ] || fail "gdb's exit status $rc after the go file"
runs "the held thread was not released after the go file"
kill -9 "$t"; wait "$t" 2>/dev/null || true; t=
ok "held in fork until the go file appears, then released"

hold HOLD_TIMEOUT=120
# Killed, the process is a zombie that its parent's wait cannot reap
# while gdb traces it: serve's waitpid for a key holder it killed at
# shutdown waited as long as gdb polled.
kill -9 "$t"
ended "gdb stays, polling for its go file, after the held process is gone"
wait "$t" 2>/dev/null || true; t=
grep -q GONE "$work/gdb.out" || fail "no GONE line"
ok "the held process gone: gdb ends"

hold HOLD_TIMEOUT=1
ended "gdb did not end at HOLD_TIMEOUT without the go file"
grep -q TIMEOUT "$work/gdb.out" || fail "no TIMEOUT line"
runs "the held thread was not released at HOLD_TIMEOUT"
ok "no go file: released after HOLD_TIMEOUT"
