#!/usr/bin/env bash
# ceremony-out.sh BIN SRC: groupsrv's --out writers (token transport-key,
# group export, ca export, tls init) write --out as groupmail's --out is
# (common/outfile.h): standard output named by /dev/stdout, a link to it,
# a named pipe a reader has open, a character device are written to, never
# renamed over. They used to rename a temp file over the name: nothing
# reached standard output or the pipe's reader, and as root a regular
# file took the place of /dev/stdout (or /dev/null). Here the names are
# links and nodes in $work, never /dev's own: a build without the fix,
# run as root, must not replace this machine's /dev/stdout.
# With --out standard output, the lines a command prints go to standard
# error, so that `--out /dev/stdout > eng.gsk` is the file alone.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/ceremony-lib.sh"

cat_pid=
trap 'if [ -n "$cat_pid" ]; then kill "$cat_pid" 2>/dev/null || true; fi; cleanup' EXIT

mkserver alpha
gs_alpha ca init --key rsa:2048 --replicable >/dev/null
gs_alpha group create eng --address eng@example.org --key rsa:2048 --replicable >/dev/null
ln -s /proc/self/fd/1 "$work/stdout"

# token transport-key --out /dev/stdout: the PEM alone on standard output
rc=0; gs_alpha token transport-key --out "$work/stdout" > "$work/t.pem" 2> "$work/t.err" || rc=$?
[ "$rc" = 0 ] || fail "token transport-key --out /dev/stdout: exit $rc: $(cat "$work/t.err")"
[ -L "$work/stdout" ] || fail "token transport-key --out /dev/stdout: the name was renamed over"
fp=$(fingerprint "$work/t.pem") || fail "token transport-key --out /dev/stdout: no key on standard output"
! grep -q '^sha256 ' "$work/t.pem" || fail "token transport-key --out /dev/stdout: its lines are in the key file"
grep -q "^sha256 $(echo "$fp" | sed 's/..../& /g; s/ $//')" "$work/t.err" ||
  fail "token transport-key --out /dev/stdout: no fingerprint on standard error: $(cat "$work/t.err")"
ok "token transport-key --out /dev/stdout: the key on standard output, its lines on standard error"

# ... and with standard output closed: exit 1, one line, the new key taken
# off the token again (the unfixed build renamed over the link, exit 0)
before=$(snapshot alpha)
rc=0; gs_alpha token transport-key --out "$work/stdout" >&- 2> "$work/err" || rc=$?
[ "$rc" = 1 ] || fail "token transport-key --out /dev/stdout >&-: exit $rc, wanted 1: $(cat "$work/err")"
[ "$(wc -l < "$work/err")" = 1 ] && grep -q "^groupsrv: cannot write $work/stdout" "$work/err" ||
  fail "token transport-key --out /dev/stdout >&-: $(cat "$work/err")"
[ -L "$work/stdout" ] || fail "token transport-key --out /dev/stdout >&-: the name was renamed over"
[ "$(snapshot alpha)" = "$before" ] || fail "token transport-key --out /dev/stdout >&-: a transport key was left"
ok "token transport-key --out /dev/stdout with standard output closed: exit 1, no key left"

# ... also in a PID namespace whose /proc is the host's (a container
# without its own /proc mount: getpid() is not the PID /proc/self names),
# where /proc/self/fd/1 was not taken for standard output and its
# /dev/null stand-in was opened anew: the key written nowhere, exit 0.
if unshare --pid --fork true 2>/dev/null; then
  rc=0; SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf unshare --pid --fork "$BIN/groupsrv" -c "$work/alpha.conf" \
    token transport-key --out /proc/self/fd/1 >&- 2> "$work/err" || rc=$?
  [ "$rc" = 1 ] || fail "token transport-key --out /proc/self/fd/1 >&- in a PID namespace: exit $rc: $(cat "$work/err")"
  [ "$(snapshot alpha)" = "$before" ] || fail "token transport-key in a PID namespace: a transport key was left"
  ok "token transport-key --out /proc/self/fd/1 >&- in a PID namespace: exit 1, no key left"
fi

# ... and a pipe whose reader has gone (`| head -c0`, a tool that quit):
# exit 1, the new key taken off the token again and the failure audited.
# SIGPIPE used to end groupsrv between making the key and recording it:
# the key left on the token, only a "started" record.
epipe='import os, subprocess, sys
r, w = os.pipe()
os.close(r)
p = subprocess.run(sys.argv[1:], stdout=w, stderr=subprocess.PIPE)
print(p.returncode, p.stderr.decode().strip())'
got=$(SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf python3 -c "$epipe" "$BIN/groupsrv" -c "$work/alpha.conf" \
  token transport-key --out "$work/stdout")
case $got in "1 groupsrv: cannot write $work/stdout: "*) ;; *) fail "token transport-key --out a broken pipe: $got" ;; esac
[ "$(snapshot alpha)" = "$before" ] || fail "token transport-key --out a broken pipe: a transport key was left"
tail -n 1 "$work/alpha/audit.jsonl" | grep '"action":"transport-key"' | grep -qv '"outcome":"\(ok\|started\)"' ||
  fail "token transport-key --out a broken pipe: no failure record: $(tail -n 1 "$work/alpha/audit.jsonl")"
ok "token transport-key --out a pipe whose reader has gone: exit 1, no key left, the failure audited"

# group export --out /dev/stdout > FILE: the .gsk alone (DER), 0600 aside
rc=0; gs_alpha group export eng --all --to "$work/t.pem" --out "$work/stdout" > "$work/eng.gsk" 2> "$work/x.err" || rc=$?
[ "$rc" = 0 ] || fail "group export --out /dev/stdout: exit $rc: $(cat "$work/x.err")"
[ -L "$work/stdout" ] || fail "group export --out /dev/stdout: the name was renamed over"
openssl asn1parse -inform DER -in "$work/eng.gsk" > "$work/asn1" 2>&1 &&
  grep -q "UTF8STRING *:groupsrv-key-shipment-1" "$work/asn1" ||
  fail "group export --out /dev/stdout: standard output is not the .gsk: $(head -c 300 "$work/eng.gsk" | od -c | head -3)"
grep -q "^transport key sha256 " "$work/x.err" && grep -q "^group eng exported to" "$work/x.err" ||
  fail "group export --out /dev/stdout: its lines not on standard error: $(cat "$work/x.err")"
ok "group export --out /dev/stdout: the .gsk on standard output (openssl asn1parse), its lines on standard error"

# ca export --out a named pipe that a reader has open: the reader gets the
# file, the pipe stays (the unfixed build renamed over it: the reader
# waited for ever and the file was left in the pipe's place)
mkfifo "$work/pipe"
cat "$work/pipe" > "$work/ca.gsk" &
cat_pid=$!
rc=0; gs_alpha ca export --to "$work/t.pem" --out "$work/pipe" > "$work/out" 2> "$work/err" || rc=$?
[ -p "$work/pipe" ] || fail "ca export --out a named pipe: the pipe was replaced by a $(stat -c %F "$work/pipe")"
[ "$rc" = 0 ] || fail "ca export --out a named pipe: exit $rc: $(cat "$work/err")"
wait "$cat_pid"
cat_pid=
openssl asn1parse -inform DER -in "$work/ca.gsk" 2>&1 | grep -q "UTF8STRING *:groupsrv-key-shipment-1" ||
  fail "ca export --out a named pipe: the reader did not get the .gsk"
grep -q "exported to $work/pipe" "$work/out" || fail "ca export --out a named pipe: $(cat "$work/out")"
ok "ca export --out a named pipe: written to its reader, the pipe kept"

# A character device (a /dev/null of our own, where mknod is allowed): written, kept
if mknod "$work/null" c 1 3 2>/dev/null; then
  expect 0 "group export --out a character device" -- \
    gs_alpha group export eng --to "$work/t.pem" --out "$work/null"
  [ -c "$work/null" ] || fail "group export --out a character device: replaced by a $(stat -c %F "$work/null")"
fi

# tls init --out /dev/stdout: the certificate alone on standard output
rc=0; gs_alpha tls init --dns gs.example.org --out "$work/stdout" > "$work/tls.pem" 2> "$work/tls.err" || rc=$?
[ "$rc" = 0 ] || fail "tls init --out /dev/stdout: exit $rc: $(cat "$work/tls.err")"
[ -L "$work/stdout" ] || fail "tls init --out /dev/stdout: the name was renamed over"
openssl x509 -in "$work/tls.pem" -noout -ext subjectAltName 2>&1 | grep -q "DNS:gs.example.org" ||
  fail "tls init --out /dev/stdout: no certificate on standard output: $(head -c 300 "$work/tls.pem")"
[ "$(grep -c . "$work/tls.pem")" = "$(sed -n '/BEGIN/,/END/p' "$work/tls.pem" | grep -c .)" ] ||
  fail "tls init --out /dev/stdout: more than the certificate on standard output: $(cat "$work/tls.pem")"
grep -q '^\[tls\]' "$work/tls.err" || fail "tls init --out /dev/stdout: its lines not on standard error"
ok "tls init --out /dev/stdout: the certificate on standard output, its [tls] lines on standard error"

# waits_in_pipe_open PID: waits until process PID sleeps in a named
# pipe's open (for its reader); fails (status 1) after 30 s.
waits_in_pipe_open() {
  for _ in $(seq 300); do
    case "$(cat "/proc/$1/wchan" 2>/dev/null)" in wait_for_partner | fifo_open) return 0 ;; esac
    sleep 0.1
  done
  return 1
}
alpha_env="SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf"

# token transport-key --out a named pipe nobody reads, stopped (kill, or Ctrl-C)
# while it waits for the reader: no new key is left on the token. The
# key used to be made first, then the open waited.
mkfifo "$work/tkpipe"
before=$(snapshot alpha)
env "$alpha_env" "$BIN/groupsrv" -c "$work/alpha.conf" token transport-key --out "$work/tkpipe" > /dev/null 2>&1 &
tk_pid=$!
waits_in_pipe_open "$tk_pid" || fail "token transport-key --out a named pipe: never waited in its open"
kill -TERM "$tk_pid"
wait "$tk_pid" && fail "token transport-key --out a named pipe: not stopped by SIGTERM"
[ "$(snapshot alpha)" = "$before" ] || fail "token transport-key stopped as it waited for its pipe's reader: a key left on the token"
ok "token transport-key --out a named pipe: stopped as it waits for the reader, nothing made"

# tls init --out a named pipe nobody reads yet: its open waits for the
# reader, and it used to wait holding the keys lock, which every member
# change (REST too) and key ceremony then waited for (up to 120 s, then
# refused). Now the pipe is opened before the lock: a group create while
# tls init waits goes through.
mkfifo "$work/tlspipe"
env "$alpha_env" "$BIN/groupsrv" -c "$work/alpha.conf" tls init --dns gs.example.org --label tls2 \
  --out "$work/tlspipe" > "$work/tls2.out" 2> "$work/tls2.err" &
tls_pid=$!
waits_in_pipe_open "$tls_pid" || fail "tls init --out a named pipe: never waited in its open"
rc=0; env "$alpha_env" timeout 30 "$BIN/groupsrv" -c "$work/alpha.conf" \
  group create eng2 --address eng2@example.org --key rsa:2048 > /dev/null 2> "$work/err" || rc=$?
cat "$work/tlspipe" > "$work/tls2.pem"
wait "$tls_pid" || fail "tls init --out a named pipe: exit $?: $(cat "$work/tls2.err")"
[ "$rc" = 0 ] || fail "group create while tls init waits for its pipe's reader: exit $rc: $(cat "$work/err")"
openssl x509 -in "$work/tls2.pem" -noout 2>/dev/null || fail "tls init --out a named pipe: no certificate to the reader"
ok "tls init --out a named pipe: waits for its reader without the keys lock"

# A regular file is still replaced atomically, 0600 for the .gsk
expect 0 "group export --out FILE" -- gs_alpha group export eng --to "$work/t.pem" --out "$work/f.gsk"
[ -f "$work/f.gsk" ] && [ "$(stat -c %a "$work/f.gsk")" = 600 ] || fail "group export --out FILE: not a 0600 file"

# A file option naming a directory says so: "cannot read DIR: I/O error"
# did not (group import --in, group export --to, member add --cert).
mkdir -p "$work/adir"
refused alpha 1 "group import --in a directory" -- gs_alpha group import --in "$work/adir"
expect_msg "^groupsrv: cannot read $work/adir: Is a directory\$"
refused alpha 1 "group export --to a directory" -- gs_alpha group export eng --to "$work/adir" --out "$work/d.gsk"
expect_msg "cannot read $work/adir: Is a directory\$"
expect 1 "member add --cert a directory" -- gs_alpha member add eng d@example.org --cert "$work/adir"
expect_msg "cannot read $work/adir: Is a directory\$"

# The SO PIN prompt (no so_pin_source) left the terminal without echo when
# the operator pressed Ctrl-C at it (or the command was killed there): the
# next commands typed went unseen. The echo is back when groupsrv ends,
# and a TERM there ends it too. python3 gives the command a terminal of
# its own and looks at that terminal's flags after it has gone.
sed '/^so_pin_source/d' "$work/alpha.conf" > "$work/alpha-tty.conf"
tty_py='import fcntl, os, select, signal, subprocess, sys, termios, time
how = sys.argv[1]
m, s = os.openpty()
p = subprocess.Popen(sys.argv[2:], stdin=s, stdout=s, stderr=s, start_new_session=True,
                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
out, end = b"", time.monotonic() + 60
while b"PIN of token" not in out and time.monotonic() < end and p.poll() is None:
    if select.select([m], [], [], 0.5)[0]:
        out += os.read(m, 4096)
if b"PIN of token" not in out:
    print("no prompt:", out.decode(errors="replace"))
    sys.exit(1)
if how == "ctrl-c":
    os.write(m, b"\x03")
else:
    p.send_signal(signal.SIGTERM)
rc = p.wait(timeout=60)
print(rc, "echo" if termios.tcgetattr(s)[3] & termios.ECHO else "no-echo")'
for how in ctrl-c term; do
  got=$(env "$alpha_env" python3 -c "$tty_py" "$how" "$BIN/groupsrv" -c "$work/alpha-tty.conf" group export eng \
    --to "$work/t.pem" --out "$work/tty.gsk") || fail "SO PIN prompt, $how: $got"
  want=$([ "$how" = ctrl-c ] && echo -2 || echo -15)
  [ "$got" = "$want echo" ] || fail "SO PIN prompt, $how: '$got', wanted '$want echo' (ended by the signal, echo on)"
  [ ! -e "$work/tty.gsk" ] || fail "SO PIN prompt, $how: a file was written"
done
ok "Ctrl-C or a TERM at the SO PIN prompt ends groupsrv with the terminal's echo on again"
