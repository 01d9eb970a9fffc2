# exploder-lib.sh: shared helpers of the exploder-*.sh integration tests
# (sourced, not run). Environment from tests/exploder.cmake: EXPLODER,
# GS_SRC, GS_TEST_WORK.
#
#   xp_setup NAME         temp dir $W, traps cleanup of everything started
#   xp_smtpd_start DIR [smtpd.py options]   sets SMTPD_PORT (reuses $SMTPD_PORT if set)
#   xp_smtpd_stop
#   xp_conf RELAY [extra INI lines...]      writes $W/exploder.conf
#   xp_cert NAME [CN]     $W/NAME.pem + $W/NAME.key (RSA-2048, self-signed)
#   xp_accepted DIR       accepted recipients, one a line
#   xp_spool_empty        asserts no message rows and no files in the spool
#   fail MSG

: "${EXPLODER:?EXPLODER not set}"
: "${GS_SRC:?GS_SRC not set}"
SMTPD_PY="$GS_SRC/tests/lib/smtpd.py"
PY=/usr/bin/python3
XP_PIDS=()

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

xp_cleanup() {
  local p
  for p in "${XP_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${XP_PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  if [ -n "${W:-}" ] && [ -z "${KEEP:-}" ]; then rm -rf "$W"; fi
  # the group server of server-lib.sh, when a test sourced it
  if declare -F cleanup >/dev/null; then cleanup; fi
}

xp_setup() {
  mkdir -p "${GS_TEST_WORK:-/tmp}"
  W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/exploder-$1.XXXXXX")
  trap xp_cleanup EXIT
  [ -x "$EXPLODER" ] || fail "exploder binary missing: $EXPLODER"
  $PY -c 'import aiosmtpd' 2>/dev/null || fail "python3-aiosmtpd missing for $PY"
  XPC="$W/exploder.conf"
}

xp_smtpd_start() {
  local dir=$1
  shift
  rm -f "$W/smtpd.port"
  $PY "$SMTPD_PY" --dir "$dir" --port "${SMTPD_PORT:-0}" --port-file "$W/smtpd.port" "$@" \
    2>>"$W/smtpd.log" &
  SMTPD_PID=$!
  XP_PIDS+=("$SMTPD_PID")
  for _ in $(seq 1 100); do
    [ -s "$W/smtpd.port" ] && break
    kill -0 "$SMTPD_PID" 2>/dev/null || fail "smtpd.py died: $(tail -5 "$W/smtpd.log")"
    sleep 0.1
  done
  [ -s "$W/smtpd.port" ] || fail "smtpd.py did not start"
  SMTPD_PORT=$(cat "$W/smtpd.port")
}

xp_smtpd_stop() {
  kill "$SMTPD_PID" 2>/dev/null || true
  wait "$SMTPD_PID" 2>/dev/null || true
}

xp_conf() {
  local relay=$1
  shift
  {
    echo "[spool]"
    echo "path = $W/spool"
    echo "[delivery]"
    echo "relay = $relay"
    echo "retry_min = 1"
    echo "retry_max = 2"
    echo "poll_interval = 1"
    for l in "$@"; do echo "$l"; done
  } >"$XPC"
}

xp_cert() {
  local name=$1 cn=${2:-$1}
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/$name.key" -out "$W/$name.pem" \
    -subj "/CN=$cn" -days 2 -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
}

xp() { "$EXPLODER" -c "$XPC" "$@"; }

xp_accepted() { $PY "$SMTPD_PY" --dir "$1" --list-accepted; }

xp_spool_empty() {
  local rows files
  rows=$(sqlite3 "$W/spool/exploder.db" "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM recipients)")
  files=$(find "$W/spool/msg" -type f | wc -l)
  [ "$rows" = 0 ] || fail "spool has $rows rows left: $(sqlite3 "$W/spool/exploder.db" 'select id,state,last_error from messages')"
  [ "$files" = 0 ] || fail "spool has files left: $(ls "$W/spool/msg")"
}

# Runs `exploder run --once` until the queue is empty (exit 0), at most N times.
xp_drain() {
  local n=${1:-20} rc
  for _ in $(seq 1 "$n"); do
    rc=0
    xp run --once 2>>"$W/run.log" || rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 75 ] || fail "run --once exited $rc: $(tail -5 "$W/run.log")"
    sleep 1
  done
  fail "queue not drained after $n runs: $(tail -5 "$W/run.log")"
}

# An S/MIME message encrypted to a certificate with openssl (a stock sender).
xp_encrypt() {
  local cert=$1 out=$2 subject=${3:-test}
  printf 'Content-Type: text/plain\n\nsecret body for %s\n' "$subject" >"$W/plain.$$"
  openssl cms -encrypt -aes-256-cbc -recip "$cert" -keyopt rsa_padding_mode:oaep \
    -from alice@example.org -to eng@lists.example.org -subject "$subject" \
    -in "$W/plain.$$" -out "$out"
  rm -f "$W/plain.$$"
}
